"""SGRAF (Diao, Zhang, Ma, Lu, "Similarity Reasoning and Filtration for Image-Text Matching",
AAAI 2021); official code Paranioar/SGRAF, branch ``python3.6``, ``model.py``.

* Image: ``RegionEncoder`` (official ``EncoderImage``: FC + l2norm per region).
* Text: ``GRUTextEncoder`` (official ``EncoderText``: embedding, dropout 0.4, bi-GRU with the
  two directions averaged, l2norm per word).
* Head ``SGRAFHead`` (official ``EncoderSimilarity``): global image / caption vectors by
  self-attention pooling (``VisualSA`` / ``TextSA``), text-to-visual attention (lambda = 9),
  local and global similarity *vectors* l2norm(W (a - b)^2), then either SGR (``variant='sgr'``:
  3 graph reasoning steps, score from the global node) or SAF (``'saf'``: gated attention
  filtration), and sigmoid(Linear) as the final score. Kernels: ``xmr_jax.kernels.sgraf``.
* Loss: hardest-negative bidirectional triplet loss on the B x B sigmoid scores, summed
  (official ``ContrastiveLoss(max_violation=True)``), margin from ``hparams['margin']``.

Where the official code has quirks we follow it, because they change reproduced numbers:

1. ``VisualSA``'s first BatchNorm1d is applied to a (B, R, D) tensor, so its *channels are the
   R region slots* (statistics over images x feature dims, one per region index); the second
   is an ordinary BatchNorm1d over the D features of the mean region. Reproduced exactly
   (``num_regions`` must therefore equal the data's R; the official code hard-codes 36).
2. SAF's BatchNorm1d(1) runs inside the official per-caption loop: in training each caption's
   gate logits are normalised with statistics over *all images of the batch x that caption's
   nodes*, and the running statistics are updated once per caption (momentum 0.1, B times a
   step). ``saf_bn_stats='per_caption'`` (default) reproduces both, vectorised (the B
   sequential updates have the closed form 0.9^B r + sum_t 0.1 * 0.9^(B-1-t) m_t);
   ``'pooled'`` uses one set of statistics over all real nodes of the B x B grid and one update.
3. BatchNorm follows torch: batch statistics use the biased variance, running variance is
   updated with the unbiased one, eps = 1e-5, momentum 0.1. Dropout (0.4) after the tanh of
   both self-attention embeddings and on the word embeddings, as official (``sa_dropout``,
   ``word_dropout``).
4. Padding: the official code truncates each caption to its length; we mask padded words /
   regions / graph nodes everywhere instead (identical numbers, see the parity tests).
5. Batches: the official loader iterates captions, so a batch can hold the same image twice
   and the loss then counts it as a negative of its own caption. Our batches hold B distinct
   images (one caption each), so this rare case (about 0.22 duplicate pairs per batch of 128
   on F30K, 0.06 on COCO) does not occur; the loss masks only the diagonal, as official.
6. The loss is summed over the batch, not averaged (official), which matters with grad clip 2.
   An optional sum-over-negatives warm-up (``hardneg_warmup_epochs``, 0 = official) exists
   for the short synthetic runs.

Efficiency: the whole tile is one computation (no loop over captions); the SGR query/key
weights are folded into one matrix (``fold_query_key``, exact up to rounding) and the last SGR
step only updates the global node, which is all the score reads. In training, SGR's B x B
scores are computed without storing per-pair intermediates and the backward pass
differentiates only the pairs that get a gradient (``sparse_backward``: under the
hardest-negative loss the positives and one hardest negative per row and per column, ~3 B of
the B^2 pairs; exact, with a dense fallback for losses that touch more pairs).
"""
import dataclasses
from typing import Any, Dict, FrozenSet, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmr_jax.common.errors import ConfigError
from xmr_jax.kernels import sgraf as K
from xmr_jax.kernels.common import compute_dtype, masked_mean, matmul
from xmr_jax.losses import triplet_objective
from xmr_jax.models.image_tower import photo_regions
from xmr_jax.models.base import RetrievalModel
from xmr_jax.models.encoders import GRUTextEncoder, RegionEncoder
from xmr_jax.models.precision import read_dtype
from xmr_jax.models.registry import Method
from xmr_jax.models import text_tower as tt
from xmr_jax.models.text_tower import TowerWords
from xmr_jax.types import DataInfo

_XAVIER = nn.initializers.xavier_uniform()   # official init_weights: U(+-sqrt(6/(in+out)))


class Linear(nn.Module):
  """Holds a (kernel, bias) pair named like ``nn.Dense``; returns them so kernels get arrays."""
  in_features: int
  out_features: int

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", _XAVIER, (self.in_features, self.out_features))
    bias = self.param("bias", nn.initializers.zeros, (self.out_features,))
    return kernel, bias


class TorchBatchNorm(nn.Module):
  """torch ``BatchNorm1d`` over the last axis (channels last).

  Train: normalise with the biased batch variance over every other axis; running stats get
  momentum 0.1 with the unbiased variance (torch semantics). ``update`` applies G sequential
  updates at once (SAF's per-caption loop, quirk 2). ``axis_name``: under a data-parallel
  ``shard_map`` the batch statistics are reduced over that mesh axis (equal shards, so the
  mean of per-device moments is the global moment), so the result does not depend on the
  device count.
  """
  num_features: int
  momentum: float = 0.1
  eps: float = 1e-5
  axis_name: Optional[str] = None

  def setup(self):
    c = self.num_features
    self.scale = self.param("scale", nn.initializers.ones, (c,))
    self.bias = self.param("bias", nn.initializers.zeros, (c,))
    self.mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    self.var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))

  def __call__(self, x, *, train: bool):
    if not train:
      return K.batch_norm(x, self.mean.value, self.var.value, self.scale, self.bias, self.eps)
    axes = tuple(range(x.ndim - 1))
    n = x.size // self.num_features
    if self.axis_name is None:
      mean, var = jnp.mean(x, axis=axes), jnp.var(x, axis=axes)
    else:
      # Global moments from per-device means of x and of the squared deviation from the
      # global mean (exact for equal shards; no E[x^2] - mean^2 cancellation).
      mean = jax.lax.pmean(jnp.mean(x, axis=axes), self.axis_name)
      var = jax.lax.pmean(jnp.mean(jnp.square(x - mean), axis=axes), self.axis_name)
      n = n * jax.lax.psum(1, self.axis_name)
    self.update(mean[None], (var * n / max(n - 1, 1))[None])
    return K.batch_norm(x, mean, var, self.scale, self.bias, self.eps)

  def affine(self):
    """(scale, bias, running mean, running var)."""
    return self.scale, self.bias, self.mean.value, self.var.value

  def update(self, means: jax.Array, unbiased_vars: jax.Array) -> None:
    """G sequential running-average updates r <- (1-m) r + m x_g (g = 0..G-1), closed form."""
    if self.is_initializing():
      return
    mom, g = self.momentum, means.shape[0]
    w = mom * (1.0 - mom) ** jnp.arange(g - 1, -1, -1, dtype=jnp.float32)
    self.mean.value = (1.0 - mom) ** g * self.mean.value + jnp.einsum("g,gc->c", w, means)
    self.var.value = (1.0 - mom) ** g * self.var.value + jnp.einsum("g,gc->c", w, unbiased_vars)


class VisualSA(nn.Module):
  """Global image by self-attention (official ``VisualSA``; BatchNorm over regions, quirk 1)."""
  embed_dim: int
  num_regions: int
  dropout: float = 0.4
  axis_name: Optional[str] = None    # data-parallel BatchNorm statistics (TorchBatchNorm)
  dtype: str = "float32"             # model.dtype: matmul operands (models/precision.py)

  def setup(self):
    d = self.embed_dim
    self.embedding_local_0 = Linear(d, d)
    self.embedding_local_1 = TorchBatchNorm(self.num_regions, axis_name=self.axis_name)
    self.embedding_global_0 = Linear(d, d)
    self.embedding_global_1 = TorchBatchNorm(d, axis_name=self.axis_name)
    self.embedding_common_0 = Linear(d, 1)
    self.drop = nn.Dropout(self.dropout)

  def __call__(self, local, mask, *, train: bool):
    if local.shape[1] != self.num_regions:
      raise ConfigError(f"SGRAF VisualSA has a BatchNorm over {self.num_regions} region slots "
                       f"but got {local.shape[1]} regions (num_regions comes from DataInfo)")
    dt = compute_dtype(self.dtype)
    k, b = self.embedding_local_0()
    l_emb = matmul(local, k, dt) + b                                 # (B, R, D)
    # Region index is the BN channel: move it last, normalise, move back.
    l_emb = jnp.swapaxes(self.embedding_local_1(jnp.swapaxes(l_emb, 1, 2), train=train), 1, 2)
    l_emb = self.drop(jnp.tanh(l_emb), deterministic=not train)
    k, b = self.embedding_global_0()
    g_emb = self.embedding_global_1(matmul(masked_mean(local, mask), k, dt) + b, train=train)
    g_emb = self.drop(jnp.tanh(g_emb), deterministic=not train)
    return K.attention_pool(local, mask, l_emb, g_emb, *self.embedding_common_0(), dt)


class TextSA(nn.Module):
  """Global caption by self-attention (official ``TextSA``: no BatchNorm)."""
  embed_dim: int
  dropout: float = 0.4
  dtype: str = "float32"             # model.dtype: matmul operands (models/precision.py)

  def setup(self):
    d = self.embed_dim
    self.embedding_local_0 = Linear(d, d)
    self.embedding_global_0 = Linear(d, d)
    self.embedding_common_0 = Linear(d, 1)
    self.drop = nn.Dropout(self.dropout)

  def __call__(self, local, mask, *, train: bool):
    dt = compute_dtype(self.dtype)
    k, b = self.embedding_local_0()
    l_emb = self.drop(jnp.tanh(matmul(local, k, dt) + b), deterministic=not train)
    k, b = self.embedding_global_0()
    g_emb = self.drop(jnp.tanh(matmul(masked_mean(local, mask), k, dt) + b),
                      deterministic=not train)
    return K.attention_pool(local, mask, l_emb, g_emb, *self.embedding_common_0(), dt)


class GraphReasoning(nn.Module):
  """Weights of one SGR step (official ``GraphReasoning``); returns them as a dict."""
  sim_dim: int

  def setup(self):
    s = self.sim_dim
    self.graph_query_w = Linear(s, s)
    self.graph_key_w = Linear(s, s)
    self.sim_graph_w = Linear(s, s)

  def __call__(self) -> Dict[str, jax.Array]:
    (qk, qb), (kk, kb), (gk, gb) = (self.graph_query_w(), self.graph_key_w(),
                                    self.sim_graph_w())
    return dict(query_kernel=qk, query_bias=qb, key_kernel=kk, key_bias=kb,
                graph_kernel=gk, graph_bias=gb)


class AttentionFiltration(nn.Module):
  """Weights of SAF (official ``AttentionFiltration``): gate Linear(S, 1) -> BatchNorm1d(1)."""
  sim_dim: int

  def setup(self):
    self.attn_sim_w = Linear(self.sim_dim, 1)
    self.bn = TorchBatchNorm(1)

  def __call__(self) -> Dict[str, jax.Array]:
    kernel, bias = self.attn_sim_w()
    scale, bn_bias, mean, var = self.bn.affine()
    return dict(kernel=kernel, bias=bias, scale=scale, bn_bias=bn_bias, mean=mean, var=var)


class SGRAFHead(nn.Module):
  """The official ``EncoderSimilarity``; parameter names mirror its ``state_dict``.

  ``image_chunk`` x ``caption_chunk``: the block of pairs computed as one fused computation
  (``kernels.sgraf.chunked_pair_scores``). 0 = auto (at most 2 images, then the largest
  caption block whose attended-region tensor fits 8 MiB, at evaluation more images when that
  block holds every caption: ``kernels.sgraf.auto_blocks``);
  ``image_chunk=-1`` = every image of the tile in each block; ``caption_chunk=-1`` = the whole
  tile in one block. ``remat``
  recomputes each block in the backward pass (less memory, ~1/3 more FLOPs).
  ``sparse_backward`` (SGR only): the train-mode scores differentiate only the pairs whose
  score gets a gradient (``kernels.sgraf.sparse_grad_scores``: ~3 B of the B^2 pairs under the
  hardest-negative loss; exact, with a dense fallback for any other loss).
  """
  embed_dim: int = 1024
  sim_dim: int = 256
  num_regions: int = 36
  variant: str = "sgr"              # sgr | saf
  sgr_steps: int = 3
  smooth: float = 9.0
  sa_dropout: float = 0.4
  saf_bn_stats: str = "per_caption"
  fold_query_key: bool = True
  caption_chunk: int = 0
  remat: bool = False
  sparse_backward: bool = True
  image_chunk: int = 0
  axis_name: Optional[str] = None
  dtype: str = "float32"            # model.dtype: matmul operands (models/precision.py)

  def setup(self):
    if self.variant not in ("sgr", "saf"):
      raise ConfigError(f"SGRAF variant={self.variant!r}: use 'sgr' or 'saf'")
    if self.saf_bn_stats not in ("per_caption", "pooled"):
      raise ConfigError(f"saf_bn_stats={self.saf_bn_stats!r}: use 'per_caption' or 'pooled'")
    self.v_global_w = VisualSA(self.embed_dim, self.num_regions, self.sa_dropout,
                               axis_name=self.axis_name, dtype=self.dtype)
    self.t_global_w = TextSA(self.embed_dim, self.sa_dropout, dtype=self.dtype)
    self.sim_tranloc_w = Linear(self.embed_dim, self.sim_dim)
    self.sim_tranglo_w = Linear(self.embed_dim, self.sim_dim)
    self.sim_eval_w = Linear(self.sim_dim, 1)
    if self.variant == "sgr":
      self.SGR_module = [GraphReasoning(self.sim_dim) for _ in range(self.sgr_steps)]
    else:
      self.SAF_module = AttentionFiltration(self.sim_dim)

  def image_global(self, local, mask, *, train: bool):
    """Global image vectors (N, D) float32, l2-normalised, by ``VisualSA`` pooling of ``local``
    (N, R, D) / ``mask`` (N, R) (paper eq. 5-6). Raises ValueError if R != ``num_regions``."""
    return self.v_global_w(local, mask, train=train)

  def text_global(self, local, mask, *, train: bool):
    """Global caption vectors (M, D) float32, l2-normalised, by ``TextSA`` pooling of ``local``
    (M, L, D) / ``mask`` (M, L) (paper eq. 5-6)."""
    return self.t_global_w(local, mask, train=train)

  def _weights(self) -> Dict[str, Any]:
    w = dict(tranloc=self.sim_tranloc_w(), tranglo=self.sim_tranglo_w(), eval=self.sim_eval_w())
    if self.variant == "sgr":
      w["sgr"] = [m() for m in self.SGR_module]
    else:
      w["saf"] = self.SAF_module()
    return w

  def similarity(self, img: Dict[str, jax.Array], txt: Dict[str, jax.Array], *,
                 train: bool = False) -> jax.Array:
    """(n_i, n_t) scores from reprs {'local', 'mask', 'glo'}."""
    n_i, _, d = img["local"].shape
    n_t, n_w, _ = txt["local"].shape
    saf_mode = "running" if not train else self.saf_bn_stats
    # Train-mode SAF statistics pool over every image of a caption: no image blocks.
    all_images = self.image_chunk < 0 or (train and self.variant == "saf")
    ci, ct = K.auto_blocks(n_i, n_t, n_w, d,
                           max_images=n_i if all_images else (self.image_chunk or 2),
                           widen=not train and not self.image_chunk)
    if self.caption_chunk < 0 or (self.variant == "saf" and saf_mode == "pooled"):
      ci, ct = n_i, n_t
    elif self.caption_chunk > 0:
      ct = K.largest_divisor(n_t, self.caption_chunk)
    kw = dict(variant=self.variant, smooth=self.smooth, fold=self.fold_query_key,
              saf_mode=saf_mode, dtype=compute_dtype(self.dtype))
    if train and self.variant == "sgr" and self.sparse_backward:
      return K.sparse_grad_scores(img, txt, self._weights(), chunk=ct, image_chunk=ci, **kw)
    scores, (means, variances) = K.chunked_pair_scores(
        img, txt, self._weights(), chunk=ct, image_chunk=ci, remat=self.remat and train, **kw)
    if self.variant == "saf" and train:
      self.SAF_module.bn.update(means[:, None], variances[:, None])
    return scores

  def __call__(self, img_local, img_mask, txt_local, txt_mask, *, train: bool = False):
    """Official ``EncoderSimilarity.forward`` on region / word embeddings -> (n_i, n_t)."""
    img = dict(local=img_local, mask=img_mask,
               glo=self.image_global(img_local, img_mask, train=train))
    txt = dict(local=txt_local, mask=txt_mask,
               glo=self.text_global(txt_local, txt_mask, train=train))
    return self.similarity(img, txt, train=train)


# The settings SGRAF forwards to its head unchanged; SGRAF declares them too, so that a config
# (and the converter, tests, benchmarks) builds the whole model from one flat set of fields.
HEAD_FIELDS = tuple(f.name for f in dataclasses.fields(SGRAFHead)
                    if f.name not in ("parent", "name"))


class SGRAF(RetrievalModel):
  """SGRAF retrieval model: encoders + ``SGRAFHead`` (see the module docstring)."""
  vocab_size: int
  region_dim: int = 2048
  word_dim: int = 300
  embed_dim: int = 1024
  sim_dim: int = 256
  num_regions: int = 36
  num_layers: int = 1
  variant: str = "sgr"
  sgr_steps: int = 3
  smooth: float = 9.0
  word_dropout: float = 0.4
  sa_dropout: float = 0.4
  saf_bn_stats: str = "per_caption"
  fold_query_key: bool = True
  caption_chunk: int = 0
  remat: bool = False
  sparse_backward: bool = True
  image_chunk: int = 0
  word_vectors: Any = None
  dtype: str = "float32"            # model.dtype: matmul operands (models/precision.py)
  text_tower: Any = None            # pretrained tower (models/text_tower.py) instead of the GRU
  text_frozen: bool = False
  image_tower: Any = None           # backbone inside the model (models/image_tower.py)
  image_frozen: bool = False
  # Set through ``Method.for_mesh`` under a data mesh (the trainer's hook): VisualSA's train-mode BatchNorm then
  # reduces its statistics over all devices. SAF's per-caption statistics need nothing: each
  # device scores its captions against the gathered images of the whole batch.
  axis_name: Optional[str] = None

  def setup(self):
    self.img_enc = RegionEncoder(self.embed_dim, dtype=self.dtype)
    if self.text_tower is None:
      self.txt_enc = GRUTextEncoder(self.vocab_size, self.word_dim, self.embed_dim,
                                    num_layers=self.num_layers, bidirectional=True,
                                    word_vectors=self.word_vectors, dropout=self.word_dropout,
                                    dtype=self.dtype)
    else:   # the tower's token vectors -> fc -> l2 norm, as the GRU's outputs
      self.txt_enc = TowerWords(self.embed_dim, self.text_frozen, self.text_tower, self.dtype)
    # Every head setting is forwarded by name from SGRAF's flat fields (one list: the head's).
    self.sim_enc = SGRAFHead(**{k: getattr(self, k) for k in HEAD_FIELDS})

  def encode_images(self, images, *, train: bool) -> Dict[str, jax.Array]:
    """From ``regions`` (N, R, F) / ``region_mask`` (N, R): ``{"local": (N, R, D) float32,
    l2-normalised per region, "mask": (N, R) bool, "glo": (N, D) float32}`` (``image_global``).
    Raises ValueError if R != ``num_regions``."""
    images = photo_regions(self.image_tower, images, frozen=self.image_frozen)
    mask = images["region_mask"].astype(bool)
    local = self.img_enc(images["regions"], mask)
    # VisualSA depends on the image only: computed once per image (train-mode BatchNorm sees
    # the batch's B images, as the official forward_sim does).
    return dict(local=local, mask=mask, glo=self.sim_enc.image_global(local, mask, train=train))

  def encode_texts(self, texts, *, train: bool) -> Dict[str, jax.Array]:
    """From ``tokens`` (M, L) int32 / ``token_mask`` (M, L): ``{"local": (M, L, D) float32,
    l2-normalised per word, "mask": (M, L) bool, "glo": (M, D) float32}`` (``text_global``)."""
    mask = texts["token_mask"].astype(bool)
    if self.text_tower is None:
      local = self.txt_enc(texts["tokens"], mask, train=train)
    else:
      local = self.txt_enc(texts, train=train)
    return dict(local=local, mask=mask, glo=self.sim_enc.text_global(local, mask, train=train))

  def score(self, img, txt, *, train: bool = False) -> jax.Array:
    """(N, M) float32 sigmoid scores in (0, 1) of SGR or SAF (paper eq. 1-11; official
    ``EncoderSimilarity.forward``), via ``SGRAFHead.similarity``."""
    return self.sim_enc.similarity(img, txt, train=train)


# Hardest-negative triplet loss, summed (official ``ContrastiveLoss``, max_violation), with the
# optional sum-over-negatives warm-up (not official; presets 0): from random init the
# hardest-negative loss of sigmoid scores sits at 2 B margin for a long time.
sgraf_loss = triplet_objective(max_violation=True, reduction="sum", report_positive=True)


def inputs(model_config) -> FrozenSet[str]:
  """SGRAF reads region features and captions only."""
  del model_config
  return frozenset()


def unread(model_config) -> Dict[str, str]:
  """SGR-only settings under SAF and the other way round; the GRU's under a text tower."""
  m = model_config
  out = tt.unread(m, {"word_dim": "the GRU's word embedding", "num_layers": "the GRU",
                      "word_dropout": "the GRU's word-embedding dropout"})
  if m.variant == "saf":
    why = "model.variant='saf'; only SGR reads it"
    return {**out, "sgr_steps": why, "sparse_backward": why}
  return {**out, "saf_bn_stats": f"model.variant={m.variant!r}; only SAF reads it"}


def build_method(model_config, info: DataInfo) -> Method:
  """SGRAF (SGR or SAF, ``model.variant``) from ``config.model`` (configs/sgraf.py).

  Under a data mesh (``Method.for_mesh``) VisualSA's train-mode BatchNorm reduces its
  statistics over the mesh axis.
  """
  m = model_config
  model = SGRAF(vocab_size=info.vocab_size, region_dim=info.region_dim, word_dim=m.word_dim,
                embed_dim=m.embed_dim, sim_dim=m.sim_dim, num_regions=info.num_regions,
                num_layers=m.num_layers, variant=m.variant, sgr_steps=m.sgr_steps,
                smooth=m.smooth, word_dropout=m.word_dropout, sa_dropout=m.sa_dropout,
                saf_bn_stats=m.saf_bn_stats, fold_query_key=m.fold_query_key,
                caption_chunk=m.caption_chunk, remat=m.remat,
                sparse_backward=m.sparse_backward, image_chunk=m.image_chunk,
                word_vectors=info.word_vectors, dtype=read_dtype(m),
                text_tower=tt.make_tower(m, info), text_frozen=m.get("text_frozen", False))
  return Method("sgraf", model, sgraf_loss, hparam_names=("margin", "hardneg_warmup_epochs"),
                text_padding=("mask", ("local",)),
                for_mesh=lambda axis: model.clone(axis_name=axis))
