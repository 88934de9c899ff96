"""MMCA (Wei, Zhang, Li, Zhang, Wu, "Multi-Modality Cross Attention Network for Image and
Sentence Matching", CVPR 2020). No official code was released; this is the first public
implementation, so every choice the paper leaves open is listed here.

Architecture (paper §3, our reading):

* **Fragments.** Regions (B, R, F) -> FC -> R (B, R, D) (``RegionEncoder`` without l2 norm,
  padded regions zeroed). Words: the paper uses pretrained BERT (frozen). With
  ``model.text_encoder=minilm`` (models/text_tower.py; the ``data=images`` presets) X = FC of
  the pretrained all-MiniLM-L6-v2's token vectors (384-d), the nearest packaged stand-in for
  BERT-base (or of multilingual-e5-small's with ``e5_small``); ``model.text_frozen`` keeps it fixed as the paper does. Otherwise a trainable
  stand-in, token embedding (``word_dim``) -> FC to D -> + learned positions -> LayerNorm ->
  ``num_text_layers`` Transformer units, giving X (B, L, D). ``DataInfo.word_vectors``
  initialises the embedding and ``replace_text_params`` loads a whole pretrained text-encoder
  subtree (e.g. converted BERT layers, once such weights exist locally).
* **Self-attention module** (§3.1). Image: R -> ``num_image_layers`` Transformer units ->
  masked average -> i0. Text: BERT *is* the text self-attention in the paper, so X goes
  straight to the n-gram CNN (windows 1, 2, 3, ReLU, max over real words) -> concat -> FC -> c0.
* **Cross-attention module** (§3.2). For each image × caption pair, one Transformer unit over
  Y = [R ‖ X] (R + L tokens, softmax(QKᵀ/√d)V across both modalities, padding masked); the
  output is split, the region part averaged (i1), the word part through an n-gram CNN (c1).
* **Score** (§3.3): S(I, T) = ⟨i0, c0⟩ + α⟨i1, c1⟩; **loss**: hardest-negative bidirectional
  triplet loss (eq. 15, ``triplet_loss_with_warmup``), summed over the batch.

Choices the paper leaves open (all documented defaults, most behind a config field):

1. *Cross-module inputs* (``cross_input``): the paper stacks "the region features and word
   features" R and X, the same fragments that enter the self-attention module (its Fig. 2
   feeds both modules in parallel), so the default is ``'fragments'``: FC'd regions and the
   text-encoder word features. ``'self_attended'`` instead uses the image Transformer's
   output for R (the text side is the same either way: X is already the text self-attention
   output).
2. *Weight sharing* (``share_weights``): the paper describes two modules, each with "a
   Transformer unit" and its own pooling; nothing says they share parameters, so by default
   the cross unit and the cross n-gram CNN are separate. ``share_weights=True`` reuses the
   first image self-attention unit and the c0 CNN.
3. *Normalisation*: ⟨·,·⟩ is an inner product in the paper; we l2-normalise i0, c0, i1, c1
   (``normalize=True``) so each term is a cosine and the 0.2 margin has the VSE++ scale.
4. *Transformer unit*: post-LN (Vaswani et al.), ReLU FFN of width ``ffn_dim`` (not stated;
   2·D by default), ``num_heads`` heads (not stated), no dropout (not stated), one unit per
   module (``num_image_layers`` may stack more on the image side; the cross module is one
   unit, which is what lets its per-pair cost be factored, see the kernel docstring).
5. *n-gram CNN*: ``conv_dim`` channels per window (not stated; D by default); windows past
   the last real word see zeros (zero padding on the unpadded sentence), so padding never
   changes a score; a window starts at every real word.
6. *Regions* carry no position signal (as in the paper), so region order never matters.
7. α = 0 (a static ``config.model.alpha``) skips the cross module entirely: no cross
   parameters are created, reprs hold only i0/c0, and S = ⟨i0, c0⟩.
"""
from typing import Any, Dict, FrozenSet, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmr_jax.common.errors import ConfigError
from xmr_jax.kernels import cross_attention as ca
from xmr_jax.kernels.common import compute_dtype, l2norm, masked_mean, matmul
from xmr_jax.losses import triplet_objective
from xmr_jax.models.image_tower import photo_regions
from xmr_jax.models.base import RetrievalModel
from xmr_jax.models.encoders import RegionEncoder, word_embedding_init
from xmr_jax.models.precision import dense_kwargs, read_dtype
from xmr_jax.models.registry import Method
from xmr_jax.models import text_tower as tt
from xmr_jax.models.text_tower import TowerWords
from xmr_jax.types import DataInfo

_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros
_ones = nn.initializers.ones


class TransformerUnitParams(nn.Module):
  """Declares one Transformer unit's parameters; returns them as a dict for the kernels."""
  dim: int
  num_heads: int
  ffn_dim: int

  @nn.compact
  def __call__(self) -> Dict[str, jax.Array]:
    d, h = self.dim, self.num_heads
    if d % h:
      raise ConfigError(f"MMCA: embed_dim={d} is not divisible by num_heads={h}")
    dh = d // h
    # Xavier over the full (D, D) matrix, reshaped per head.
    proj = lambda k, s, dt=jnp.float32: _xavier(k, (d, d), dt).reshape(s)
    p = {}
    for n in ("q", "k", "v"):
      p[f"w{n}"] = self.param(f"w{n}", proj, (d, h, dh))
      p[f"b{n}"] = self.param(f"b{n}", _zeros, (h, dh))
    p["wo"] = self.param("wo", proj, (h, dh, d))
    p["bo"] = self.param("bo", _zeros, (d,))
    p["w1"] = self.param("w1", _xavier, (d, self.ffn_dim))
    p["b1"] = self.param("b1", _zeros, (self.ffn_dim,))
    p["w2"] = self.param("w2", _xavier, (self.ffn_dim, d))
    p["b2"] = self.param("b2", _zeros, (d,))
    for i in (1, 2):
      p[f"ln{i}_scale"] = self.param(f"ln{i}_scale", _ones, (d,))
      p[f"ln{i}_bias"] = self.param(f"ln{i}_bias", _zeros, (d,))
    return p


class NgramCNNParams(nn.Module):
  """Declares the n-gram CNN (one conv per window size) + FC parameters."""
  dim: int
  conv_dim: int
  out_dim: int
  windows: Sequence[int] = (1, 2, 3)

  @nn.compact
  def __call__(self) -> Dict[str, jax.Array]:
    p = {}
    for l in self.windows:
      # Fan-in of a window is l·D: Xavier over the flattened (l·D, Dc) kernel.
      init = lambda k, s, dt=jnp.float32, l=l: _xavier(k, (l * self.dim, self.conv_dim), dt
                                                       ).reshape(s)
      p[f"conv{l}_w"] = self.param(f"conv{l}_w", init, (l, self.dim, self.conv_dim))
      p[f"conv{l}_b"] = self.param(f"conv{l}_b", _zeros, (self.conv_dim,))
    p["fc_w"] = self.param("fc_w", _xavier, (len(self.windows) * self.conv_dim, self.out_dim))
    p["fc_b"] = self.param("fc_b", _zeros, (self.out_dim,))
    return p


class TransformerTextEncoder(nn.Module):
  """The BERT stand-in: embedding -> FC -> + learned positions -> LN -> Transformer units."""
  vocab_size: int
  word_dim: int
  dim: int
  num_heads: int
  ffn_dim: int
  num_layers: int = 1
  max_len: int = 128
  word_vectors: Any = None
  dtype: str = "float32"             # model.dtype: matmul operands (models/precision.py)

  @nn.compact
  def __call__(self, tokens: jax.Array, token_mask: jax.Array) -> jax.Array:
    length = tokens.shape[-1]
    if length > self.max_len:
      raise ConfigError(f"MMCA: captions of {length} tokens exceed config.model.max_len="
                       f"{self.max_len}; raise it (positions are learned up to max_len)")
    emb = nn.Embed(self.vocab_size, self.word_dim, embedding_init=word_embedding_init(
        self.word_vectors, nn.initializers.normal(0.02)), name="embed")(tokens)
    x = nn.Dense(self.dim, kernel_init=_xavier, name="word_fc", **dense_kwargs(self.dtype))(emb)
    pos = self.param("pos", nn.initializers.normal(0.02), (self.max_len, self.dim))
    x = nn.LayerNorm(epsilon=ca.LN_EPS, name="emb_ln")(x + pos[:length])
    mask = token_mask.astype(bool)
    x = x * mask[..., None]
    for i in range(self.num_layers):
      x = ca.transformer_unit(
          TransformerUnitParams(self.dim, self.num_heads, self.ffn_dim, name=f"unit{i}")(),
          x, mask, compute_dtype(self.dtype))
    return x


class MMCA(RetrievalModel):
  """MMCA model; see the module docstring for the architecture and every open choice."""
  vocab_size: int
  embed_dim: int = 1024
  word_dim: int = 768
  num_heads: int = 8
  ffn_dim: int = 2048
  conv_dim: int = 1024
  num_text_layers: int = 1
  num_image_layers: int = 1
  windows: Sequence[int] = (1, 2, 3)
  max_len: int = 128
  alpha: float = 1.0
  cross_input: str = "fragments"     # fragments | self_attended
  share_weights: bool = False
  normalize: bool = True
  score_chunk: int = 0               # images per lax.map step inside score; 0 = whole tile
  train_score_chunk: int = -1        # the same in training (B x B); -1 = score_chunk
  word_vectors: Any = None
  dtype: str = "float32"             # model.dtype: matmul operands (models/precision.py)
  text_tower: Any = None             # pretrained tower (models/text_tower.py): the paper's BERT
  text_frozen: bool = False
  image_tower: Any = None           # backbone inside the model (models/image_tower.py)
  image_frozen: bool = False

  def setup(self):
    if self.cross_input not in ("fragments", "self_attended"):
      raise ConfigError(f"MMCA: cross_input={self.cross_input!r}; use fragments|self_attended")
    d = self.embed_dim
    self.region_fc = RegionEncoder(d, normalize=False, dtype=self.dtype)
    if self.text_tower is None:
      self.text_encoder = TransformerTextEncoder(
          self.vocab_size, self.word_dim, d, self.num_heads, self.ffn_dim,
          num_layers=self.num_text_layers, max_len=self.max_len,
          word_vectors=self.word_vectors, dtype=self.dtype)
    else:   # X = FC(BERT token features), padding zero
      self.text_encoder = TowerWords(d, self.text_frozen, self.text_tower, self.dtype,
                                     normalize=False)
    self.image_units = [TransformerUnitParams(d, self.num_heads, self.ffn_dim)
                        for _ in range(self.num_image_layers)]
    self.text_cnn = NgramCNNParams(d, self.conv_dim, d, tuple(self.windows))
    if self.alpha != 0 and not self.share_weights:
      self.cross_unit = TransformerUnitParams(d, self.num_heads, self.ffn_dim)
      self.cross_cnn = NgramCNNParams(d, self.conv_dim, d, tuple(self.windows))

  def _norm(self, x):
    return l2norm(x) if self.normalize else x

  def encode_images(self, images: Mapping[str, jax.Array], *, train: bool) -> Dict[str, jax.Array]:
    """From ``regions`` (N, R, F) / ``region_mask`` (N, R) (paper §3.1): ``{"emb": (N, D)
    float32 i0 (l2-normalised if ``normalize``)}``, plus with alpha != 0 the cross-module
    inputs ``"frag"`` (N, R, D) float32 (per ``cross_input``) and ``"mask"`` (N, R) bool."""
    images = photo_regions(self.image_tower, images, frozen=self.image_frozen)
    mask = images["region_mask"].astype(bool)
    frag = self.region_fc(images["regions"], mask)
    x = frag
    for unit in self.image_units:
      x = ca.transformer_unit(unit(), x, mask, compute_dtype(self.dtype))
    out = {"emb": self._norm(masked_mean(x, mask))}            # i0
    if self.alpha != 0:
      out["frag"] = x if self.cross_input == "self_attended" else frag
      out["mask"] = mask
    return out

  def encode_texts(self, texts: Mapping[str, jax.Array], *, train: bool) -> Dict[str, jax.Array]:
    """From ``tokens`` (M, L) int32 / ``token_mask`` (M, L) (paper §3.1): ``{"emb": (M, D)
    float32 c0 (l2-normalised if ``normalize``)}``, plus with alpha != 0 the word features
    ``"frag"`` (M, L, D) float32 and ``"mask"`` (M, L) bool. Raises ValueError if L > max_len."""
    mask = texts["token_mask"].astype(bool)
    if self.text_tower is None:
      x = self.text_encoder(texts["tokens"], mask)
    else:
      x = self.text_encoder(texts, train=train)
    c0 = ca.ngram_embedding(self.text_cnn(), x, mask, self.windows, compute_dtype(self.dtype))
    out = {"emb": self._norm(c0)}
    if self.alpha != 0:
      out["frag"], out["mask"] = x, mask
    return out

  def score(self, img, txt, *, train: bool = False) -> jax.Array:
    """(N, M) float32 S(I, T) = <i0, c0> + alpha <i1, c1> (paper §3.3); the cross term runs
    the cross-attention unit on every pair, ``score_chunk`` (``train_score_chunk`` in training)
    images per ``lax.map`` step."""
    s = matmul(img["emb"], txt["emb"].T, compute_dtype(self.dtype))   # ⟨i0, c0⟩
    if self.alpha == 0:
      return s
    if self.share_weights:
      unit, cnn = self.image_units[0](), self.text_cnn()
    else:
      unit, cnn = self.cross_unit(), self.cross_cnn()
    cross = ca.cross_attention_scores(unit, cnn, img["frag"], img["mask"], txt["frag"],
                                      txt["mask"], windows=tuple(self.windows),
                                      normalize=self.normalize,
                                      chunk=self.train_score_chunk
                                      if train and self.train_score_chunk >= 0
                                      else self.score_chunk, dtype=compute_dtype(self.dtype))
    return s + self.alpha * cross


def replace_text_params(params: Mapping[str, Any], pretrained: Mapping[str, Any]) -> Dict[str, Any]:
  """Returns ``params`` with leaves of the ``text_encoder`` subtree replaced from ``pretrained``.

  The hook for pretrained text weights (the paper's BERT): ``pretrained`` is a nested dict
  with the same structure as (a part of) ``params['text_encoder']`` (``embed/embedding``,
  ``word_fc``, ``pos``, ``emb_ln``, ``unit{i}/wq`` ...). Shapes must match exactly.
  """
  def merge(dst, src, path):
    out = dict(dst)
    for k, v in src.items():
      if k not in dst:
        raise KeyError(f"replace_text_params: {'/'.join(path + (k,))} is not a text-encoder "
                       f"parameter; known: {sorted(dst)}")
      if isinstance(v, Mapping):
        out[k] = merge(dst[k], v, path + (k,))
      else:
        v = jnp.asarray(v, jnp.float32)
        if v.shape != dst[k].shape:
          raise ConfigError(f"replace_text_params: {'/'.join(path + (k,))} has shape {v.shape},"
                           f" the model expects {dst[k].shape}")
        out[k] = v
    return out
  out = dict(params)
  out["text_encoder"] = merge(params["text_encoder"], pretrained, ("text_encoder",))
  return out


# Eq. 15: hardest-negative bidirectional triplet loss on S, summed over the batch (with the
# optional sum-over-negatives warm-up of ``triplet_loss_with_warmup``; presets: none).
loss_fn = triplet_objective(max_violation=True, reduction="sum")


def inputs(model_config) -> FrozenSet[str]:
  """MMCA reads region features and captions only."""
  del model_config
  return frozenset()


def unread(model_config) -> Dict[str, str]:
  """The BERT stand-in's keys under a pretrained text tower, the tower's under the stand-in."""
  stand_in = "the trainable BERT stand-in"
  return tt.unread(model_config, {"word_dim": stand_in, "num_text_layers": stand_in,
                                  "max_len": stand_in + " (its learned positions)"})


def build_method(model_config, info: DataInfo) -> Method:
  """MMCA from ``config.model`` (configs/mmca.py).

  Raises ConfigError when a caption of the data, padded, is longer than ``model.max_len``
  (``info.max_text_len``): positions are learned up to max_len, and the longest caption may be
  in the test split, which is only encoded after training.
  """
  m = model_config
  if info.max_text_len > m.max_len and not tt.uses_tower(m):
    raise ConfigError(f"MMCA: the data has captions padded to {info.max_text_len} tokens but "
                      f"config.model.max_len={m.max_len}; set --config.model.max_len="
                      f"{info.max_text_len} (or more), or cut captions with "
                      f"data.max_caption_len (positions are learned up to max_len)")
  model = MMCA(vocab_size=info.vocab_size, embed_dim=m.embed_dim, word_dim=m.word_dim,
               num_heads=m.num_heads, ffn_dim=m.ffn_dim, conv_dim=m.conv_dim,
               num_text_layers=m.num_text_layers, num_image_layers=m.num_image_layers,
               windows=tuple(m.windows), max_len=m.max_len, alpha=float(m.alpha),
               cross_input=m.cross_input, share_weights=m.share_weights,
               normalize=m.normalize, score_chunk=m.score_chunk,
               train_score_chunk=m.train_score_chunk,
               word_vectors=info.word_vectors, dtype=read_dtype(m),
               text_tower=tt.make_tower(m, info), text_frozen=m.get("text_frozen", False))
  # The cross term's cost grows with the padded caption length and padding never changes a
  # score (tests/test_mmca.py), so evaluation trims it per length group.
  return Method("mmca", model, loss_fn, hparam_names=("margin", "hardneg_warmup_epochs"),
                text_padding=("mask", ("frag",)), global_embedding="emb")
