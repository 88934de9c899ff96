"""PCME: Probabilistic Cross-Modal Embedding (Chun et al., CVPR 2021).

Each image and caption becomes a Gaussian N(mu, diag(sigma^2)) in R^D (naver-ai/pcme
``models/``). Both sides follow PVSE's "local attention" design:

* image (``image_encoder.EncoderImage``): g = mean of the local features (regions, or the
  PixelCNN grid standing in for ResNet's 7x7 map);
  mu = l2norm(LayerNorm(W g + dropout(sigmoid(W_r attnpool(x)))))      (``PIENet``)
  logsigma = W_s attnpool'(x) + W_2 g                                  (``UncertaintyModuleImage``)
  with no sigmoid, LayerNorm or l2 on logsigma (``no_sigma_ln``).
* text (``caption_encoder.EncoderText``): one word embedding e shared by three branches;
  h = bi-GRU(e) at the last word (D/2 per direction, concatenated);
  mu = l2norm(LayerNorm(h + dropout(sigmoid(W_r attnpool(e)))));
  logsigma = W_s attnpool'(e) + h' with h' a second bi-GRU (``UncertaintyModuleText``).

* text with a pretrained ``model.text_encoder`` (``minilm``, ``e5_small``;
  models/text_tower.py): e = the tower's token vectors (384-d), the local features of both attention branches; the two bi-GRU
  terms h and h' become W_t mean(e) and W_t' mean(e), as the image side's W g and W_2 g.

The shared ``GRUTextEncoder`` is not used: it owns its embedding table and averages the two
directions, while PCME shares one embedding between the GRUs and both attention branches and
concatenates D/2-wide directions read at the last real word.

The reprs are ``{'mu': (N, D), 'logsigma': (N, D), 'samples': (N, J, D)}`` with the J samples
drawn in ``encode_*`` from the ``'sampling'`` rng, so ``score`` is deterministic.
"""
from typing import Any, Dict, FrozenSet, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xmr_jax.common.errors import ConfigError
from xmr_jax.kernels import pcme as K
from xmr_jax.kernels.common import compute_dtype, einsum, l2norm, masked_mean, masked_softmax
from xmr_jax.losses.pcme import make_loss_fn
from xmr_jax.models.image_tower import photo_regions
from xmr_jax.models.base import RetrievalModel
from xmr_jax.models.encoders import PixelCNN, last_valid, word_embedding_init
from xmr_jax.models.precision import dense_kwargs, gru_cell, read_dtype
from xmr_jax.models.registry import Method
from xmr_jax.models import text_tower as tt
from xmr_jax.models.text_tower import pooled, tower_states
from xmr_jax.types import DataInfo

Array = jax.Array
# Parameters of the official criterion (a = negative_scale, b = shift): optimised but never
# gradient-clipped there (engine/trainer.py clips model.parameters() only). A trainer that
# wants the official behaviour excludes these top-level params from its clip.
UNCLIPPED_PARAMS = ("negative_scale", "shift")
SCORES = ("mc", "mc_log_odds", "csd", "mean_cosine")

# torch.nn.Linear's default kernel init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), used by the
# official layers that are not re-initialised (EncoderImage.fc, UncertaintyModuleImage.fc2).
_torch_default = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_xavier = nn.initializers.xavier_uniform()


class AttentionPool(nn.Module):
  """Single-head structured self-attention (Lin et al. 2017; official ``MultiHeadSelfAttention``).

  w = softmax_n(W2 tanh(W1 x_n)) over valid positions; returns sum_n w_n x_n. No biases.
  """
  hidden: int
  dtype: str = "float32"             # model.dtype (models/precision.py)

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    kw = dense_kwargs(self.dtype)
    h = jnp.tanh(nn.Dense(self.hidden, use_bias=False, kernel_init=_xavier, name="w_1",
                          **kw)(x))
    logits = nn.Dense(1, use_bias=False, kernel_init=_xavier, name="w_2", **kw)(h)[..., 0]
    attn = masked_softmax(logits, mask)
    return einsum("bn,bnd->bd", attn, x, dtype=compute_dtype(self.dtype))


class MeanHead(nn.Module):
  """PIENet with one embedding: l2norm(LayerNorm(out + dropout(sigmoid(fc(attnpool(x))))))."""
  embed_dim: int
  hidden: int
  dropout: float = 0.0
  dtype: str = "float32"             # model.dtype (models/precision.py)

  @nn.compact
  def __call__(self, out: Array, x: Array, mask: Array, *, train: bool) -> Array:
    residual = AttentionPool(self.hidden, self.dtype, name="attention")(x, mask)
    residual = nn.sigmoid(nn.Dense(self.embed_dim, kernel_init=_xavier, name="fc",
                                   **dense_kwargs(self.dtype))(residual))
    residual = nn.Dropout(self.dropout, deterministic=not train)(residual)
    # torch LayerNorm eps is 1e-5.
    return l2norm(nn.LayerNorm(epsilon=1e-5, name="layer_norm")(out + residual))


class SigmaHead(nn.Module):
  """Uncertainty module: logsigma = fc(attnpool(x)) + global_term (no sigmoid / LN / l2).

  ``bias_init`` sets fc's initial bias (official 0): a negative value starts training with
  small sigmas, which short synthetic runs need (at sigma ~ 1 every pair is far apart).
  """
  embed_dim: int
  hidden: int
  bias_init: float = 0.0
  dtype: str = "float32"             # model.dtype (models/precision.py)

  @nn.compact
  def __call__(self, global_term: Array, x: Array, mask: Array) -> Array:
    residual = AttentionPool(self.hidden, self.dtype, name="attention")(x, mask)
    fc = nn.Dense(self.embed_dim, kernel_init=_xavier,
                  bias_init=nn.initializers.constant(self.bias_init), name="fc",
                  **dense_kwargs(self.dtype))
    return fc(residual) + global_term


class BiGRULast(nn.Module):
  """Bi-GRU with ``hidden`` units per direction, concatenated, read at the last real word.

  As the official ``padded[0].gather(lengths - 1)``: the forward state after the whole
  caption and the backward output at the last word (which has seen only that word).
  """
  hidden: int
  dtype: str = "float32"             # model.dtype (models/precision.py)

  @nn.compact
  def __call__(self, emb: Array, mask: Array) -> Array:
    lengths = jnp.sum(mask.astype(jnp.int32), -1)
    fwd = nn.RNN(gru_cell(self.hidden, self.dtype), name="fwd")(emb, seq_lengths=lengths)
    bwd = nn.RNN(gru_cell(self.hidden, self.dtype), reverse=True, keep_order=True,
                 name="bwd")(emb, seq_lengths=lengths)
    return last_valid(jnp.concatenate([fwd, bwd], -1), mask)


class PCME(RetrievalModel):
  """PCME model; see the module docstring. ``score_method`` picks the evaluation scorer."""
  vocab_size: int
  region_dim: int = 2048             # F of the region features (sizes the attention MLP)
  word_dim: int = 300
  embed_dim: int = 1024
  num_samples: int = 7
  image_input: str = "regions"       # regions | pixels | photos (models/image_tower.py)
  pixel_dim: int = 128               # channels of the PixelCNN grid (the "cnn_dim")
  init_negative_scale: float = 15.0  # a
  init_shift: float = 15.0           # b
  score_method: str = "mc"           # mc | mc_log_odds | csd | mean_cosine
  official_sigmoid: bool = False
  official_kl: bool = False          # also makes CSD read logsigma as a log-variance
  dropout: float = 0.0
  sigma_bias_init: float = 0.0       # initial bias of the logsigma heads (official 0)
  dist_eps: float = 1e-6
  word_vectors: Optional[Any] = None
  dtype: str = "float32"             # model.dtype: matmul operands (models/precision.py)
  text_tower: Any = None             # pretrained tower (models/text_tower.py) instead of GRUs
  text_frozen: bool = False
  image_tower: Any = None           # backbone inside the model (models/image_tower.py)
  image_frozen: bool = False

  def setup(self):
    if self.embed_dim % 2:
      raise ConfigError(f"PCME: embed_dim={self.embed_dim} must be even (two GRU directions)")
    if self.score_method not in SCORES:
      raise ConfigError(f"PCME: unknown score {self.score_method!r}; choose one of {SCORES}")
    if self.image_input == "pixels":
      self.pixel_cnn = PixelCNN(self.pixel_dim, dtype=self.dtype)
    elif self.image_input not in ("regions", "photos"):   # photos: regions from image_tower
      raise ConfigError(f"PCME: image_input={self.image_input!r}; use 'regions', 'photos' "
                        f"or 'pixels'")
    feat_dim = self.pixel_dim if self.image_input == "pixels" else self.region_dim
    self.img_pie, self.img_uncertain = self._heads(feat_dim)
    tower = self.text_tower is not None
    self.txt_pie, self.txt_uncertain = self._heads(self.text_tower.dim if tower
                                                   else self.word_dim)
    self.img_fc = nn.Dense(self.embed_dim, kernel_init=_torch_default,
                           **dense_kwargs(self.dtype))
    self.img_fc2 = nn.Dense(self.embed_dim, kernel_init=_torch_default,
                            **dense_kwargs(self.dtype))
    if tower:   # the global terms from the pooled tower vectors, as img_fc / img_fc2
      self.txt_fc = nn.Dense(self.embed_dim, kernel_init=_torch_default,
                             **dense_kwargs(self.dtype))
      self.txt_fc2 = nn.Dense(self.embed_dim, kernel_init=_torch_default,
                              **dense_kwargs(self.dtype))
    else:
      self.embed = nn.Embed(self.vocab_size, self.word_dim,
                            embedding_init=word_embedding_init(
                                self.word_vectors, _xavier))  # official init without GloVe
      self.txt_rnn = BiGRULast(self.embed_dim // 2, self.dtype)
      self.txt_sigma_rnn = BiGRULast(self.embed_dim // 2, self.dtype)
    self.negative_scale = self.param("negative_scale",
                                     nn.initializers.constant(self.init_negative_scale), ())
    self.shift = self.param("shift", nn.initializers.constant(self.init_shift), ())

  def _heads(self, feat_dim: int) -> Tuple[nn.Module, nn.Module]:
    # Official hidden size of the attention MLP: half the local feature width.
    hidden = max(feat_dim // 2, 1)
    return (MeanHead(self.embed_dim, hidden, self.dropout, self.dtype),
            SigmaHead(self.embed_dim, hidden, self.sigma_bias_init, self.dtype))

  def _gaussian(self, mu: Array, logsigma: Array) -> Dict[str, Array]:
    samples = K.sample_gaussian(self.make_rng("sampling"), mu, logsigma, self.num_samples)
    return {"mu": mu, "logsigma": logsigma, "samples": samples}

  def encode_images(self, images: Mapping[str, Array], *, train: bool) -> Dict[str, Array]:
    """Image Gaussians from ``regions`` (N, R, F) / ``region_mask`` (N, R) or ``pixels``:
    ``{"mu": (N, D) l2-normalised, "logsigma": (N, D), "samples": (N, J, D)}`` float32, J =
    ``num_samples`` drawn from the ``'sampling'`` rng (paper eq. 2; official ``EncoderImage``)."""
    images = photo_regions(self.image_tower, images, frozen=self.image_frozen)
    if self.image_input == "pixels":
      x = self.pixel_cnn(images["pixels"])
      mask = jnp.ones(x.shape[:2], bool)
    else:
      x = images["regions"].astype(jnp.float32)
      mask = images["region_mask"].astype(bool)
    pooled = masked_mean(x, mask)          # avgpool of the 7x7 map in the official code
    mu = self.img_pie(self.img_fc(pooled), x, mask, train=train)
    logsigma = self.img_uncertain(self.img_fc2(pooled), x, mask)
    return self._gaussian(mu, logsigma)

  def encode_texts(self, texts: Mapping[str, Array], *, train: bool) -> Dict[str, Array]:
    """Caption Gaussians from ``tokens`` (M, L) int32 / ``token_mask`` (M, L): ``{"mu": (M, D)
    l2-normalised, "logsigma": (M, D), "samples": (M, J, D)}`` float32, samples from the
    ``'sampling'`` rng (paper eq. 2; official ``caption_encoder.EncoderText``)."""
    mask = texts["token_mask"].astype(bool)
    if self.text_tower is not None:   # local attention over the tower's token vectors
      emb = tower_states(self.text_tower, texts, frozen=self.text_frozen, train=train)
      mean = pooled(emb, mask)
      mu = self.txt_pie(self.txt_fc(mean), emb, mask, train=train)
      logsigma = self.txt_uncertain(self.txt_fc2(mean), emb, mask)
      return self._gaussian(mu, logsigma)
    emb = self.embed(texts["tokens"])
    mu = self.txt_pie(self.txt_rnn(emb, mask), emb, mask, train=train)
    logsigma = self.txt_uncertain(self.txt_sigma_rnn(emb, mask), emb, mask)
    return self._gaussian(mu, logsigma)

  def match_log_odds(self, img: Dict[str, Array], txt: Dict[str, Array], *,
                     train: bool = False) -> Array:
    """log p - log(1 - p) of the MC match probability, (n_img, n_txt): the training scores."""
    log_p, log_q = K.match_log_probs(img["samples"], txt["samples"], self.negative_scale,
                                     self.shift, official_sigmoid=self.official_sigmoid,
                                     eps=self.dist_eps, dtype=compute_dtype(self.dtype))
    return log_p - log_q

  def score(self, img: Dict[str, Array], txt: Dict[str, Array], *, train: bool = False) -> Array:
    """(n_img, n_txt) similarity by ``score_method`` (higher = better match)."""
    if self.score_method == "mc":
      return K.match_probability(img["samples"], txt["samples"], self.negative_scale,
                                 self.shift, official_sigmoid=self.official_sigmoid,
                                 eps=self.dist_eps, dtype=compute_dtype(self.dtype))
    if self.score_method == "mc_log_odds":   # same ranking as 'mc' without float32 ties at 1
      return self.match_log_odds(img, txt)
    if self.score_method == "csd":
      return -K.closed_form_sampled_distance(img["mu"], img["logsigma"], txt["mu"],
                                             txt["logsigma"], log_variance=self.official_kl,
                                             dtype=compute_dtype(self.dtype))
    if self.dtype == "float32":
      return jnp.dot(img["mu"], txt["mu"].T)   # mean_cosine: mu is l2-normalised
    return einsum("nd,md->nm", img["mu"], txt["mu"], dtype=compute_dtype(self.dtype))

  def __call__(self, images, texts, *, train: bool) -> Tuple[Any, Any, Array]:
    """Training forward: the B x B scores are the MC match log-odds the loss decodes."""
    img = self.encode_images(images, train=train)
    txt = self.encode_texts(texts, train=train)
    return img, txt, self.match_log_odds(img, txt)


def inputs(model_config) -> FrozenSet[str]:
  """The pixel encoder reads rendered images; the region encoder needs nothing optional."""
  return frozenset({"pixels"} if model_config.image_input == "pixels" else ())


def uncertainty_of(official_kl: bool):
  """Per-item uncertainty of encoded reprs: the mean of sigma^2 over dimensions (N,).

  As the paper's analysis (fig. 5): sigma^2 = exp(2 logsigma), or exp(logsigma) under the
  official log-variance reading (``official_kl``).
  """
  power = 1.0 if official_kl else 2.0
  return lambda repr_: np.mean(np.exp(power * np.asarray(repr_["logsigma"])), axis=-1)


def unread(model_config) -> Dict[str, str]:
  """``pixel_dim`` sizes the pixel encoder only; ``word_dim`` the GRUs' embedding only."""
  m = model_config
  out = tt.unread(m, {"word_dim": "the GRUs' word embedding"})
  if m.image_input != "pixels":
    out["pixel_dim"] = f"model.image_input={m.image_input!r}; only 'pixels' reads it"
  return out


def build_method(model_config, info: DataInfo) -> Method:
  """PCME from ``config.model`` (see configs/pcme.py). a and b are the top-level params
  ``negative_scale`` and ``shift``; the official code does not clip their gradients
  (``UNCLIPPED_PARAMS``)."""
  m = model_config
  model = PCME(vocab_size=info.vocab_size, region_dim=info.region_dim, word_dim=m.word_dim,
               embed_dim=m.embed_dim, num_samples=m.num_samples, image_input=m.image_input,
               pixel_dim=m.pixel_dim,
               init_negative_scale=m.init_negative_scale, init_shift=m.init_shift,
               score_method=m.score, official_sigmoid=m.official_sigmoid,
               official_kl=m.official_kl, dropout=m.dropout,
               sigma_bias_init=m.get("sigma_bias_init", 0.0), word_vectors=info.word_vectors,
               dtype=read_dtype(m), text_tower=tt.make_tower(m, info),
               text_frozen=m.get("text_frozen", False))
  loss_fn = make_loss_fn(official_kl=m.official_kl, reduction=m.reduction,
                         use_uniformity=m.use_uniformity)
  return Method(name="pcme", model=model, loss_fn=loss_fn,
                hparam_names=("vib_beta", "uniform_lambda"), unclipped_params=UNCLIPPED_PARAMS,
                train_score="match_log_odds", uncertainty=uncertainty_of(m.official_kl),
                samples_at_eval=True, global_embedding="mu")
