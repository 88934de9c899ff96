"""VSE++ (Faghri, Fleet, Kiros, Fidler, "VSE++: Improving Visual-Semantic Embeddings with Hard
Negatives", BMVC 2018); official code fartashf/vsepp ``model.py``.

* Image: one global vector. The official precomp encoder maps a single CNN feature vector with
  ``fc`` and l2-normalises it. Over region features we average the (masked) regions first;
  since ``fc`` is affine, mean-then-fc equals fc-then-mean. With ``image_input='pixels'`` the
  small ``PixelCNN`` grid is pooled the same way (stand-in for the fine-tuned CNN).
* Text: word embedding (uniform ±0.1 init) -> unidirectional GRU -> the output at the last real
  word (official ``EncoderText``: ``out[i, lengths[i] - 1]``) -> l2 norm.
* Text with a pretrained ``model.text_encoder`` (``minilm``, ``e5_small``;
  models/text_tower.py): the mean of the tower's token vectors (its own pooling) -> ``fc`` ->
  l2 norm.
* Score: cosine (dot product of l2-normalised vectors).
* Loss: bidirectional hinge triplet loss, hardest negative (``max_violation``, VSE++ eq. 5) or
  the sum over negatives (VSE0, eq. 3), summed over the batch as the official ``ContrastiveLoss``
  (``reduction='mean'`` divides by B instead; this only rescales the learning rate for Adam
  marginally but changes the effective gradient-clipping threshold).
"""
from typing import Any, Dict, FrozenSet

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmr_jax.kernels.common import compute_dtype, l2norm, masked_mean, matmul
from xmr_jax.losses import triplet_objective
from xmr_jax.models.image_tower import photo_regions
from xmr_jax.models.base import RetrievalModel
from xmr_jax.models.encoders import GRUTextEncoder, PixelCNN, last_valid
from xmr_jax.models.precision import dense_kwargs, read_dtype
from xmr_jax.models.registry import Method
from xmr_jax.models.text_tower import make_tower, pooled, tower_states
from xmr_jax.models import text_tower as tt
from xmr_jax.types import DataInfo


class VSEPP(RetrievalModel):
  """VSE++ (module doc): one ``embed_dim`` vector per image and per caption, cosine score.

  ``image_input`` 'regions' (mean of the masked regions, then ``fc``) or 'pixels'
  (``PixelCNN``); ``word_vectors`` an optional (vocab_size, word_dim) init of the embedding.
  """
  vocab_size: int
  word_dim: int = 300
  embed_dim: int = 1024
  num_layers: int = 1
  image_input: str = "regions"   # regions | pixels | photos (models/image_tower.py)
  word_vectors: Any = None
  dtype: str = "float32"            # model.dtype: matmul operands (models/precision.py)
  text_tower: Any = None            # pretrained tower (models/text_tower.py) instead of the GRU
  text_frozen: bool = False
  image_tower: Any = None           # backbone inside the model (models/image_tower.py)
  image_frozen: bool = False

  def setup(self):
    self.img_fc = nn.Dense(self.embed_dim, kernel_init=nn.initializers.xavier_uniform(),
                           **dense_kwargs(self.dtype))
    if self.image_input == "pixels":
      self.cnn = PixelCNN(self.embed_dim, dtype=self.dtype)
    if self.text_tower is not None:
      self.txt_fc = nn.Dense(self.embed_dim, kernel_init=nn.initializers.xavier_uniform(),
                             **dense_kwargs(self.dtype))
      return
    self.txt_enc = GRUTextEncoder(self.vocab_size, self.word_dim, self.embed_dim,
                                  num_layers=self.num_layers, bidirectional=False,
                                  normalize=False, word_vectors=self.word_vectors,
                                  dtype=self.dtype)

  def encode_images(self, images, *, train: bool) -> Dict[str, jax.Array]:
    """``{"emb": (N, embed_dim) float32, l2-normalised}`` from ``regions`` (N, R, F) and
    ``region_mask`` (N, R), or from ``pixels`` (N, H, W, 3) uint8 with ``image_input='pixels'``."""
    images = photo_regions(self.image_tower, images, frozen=self.image_frozen)
    if self.image_input == "pixels":
      grid = self.cnn(images["pixels"])
      pooled = jnp.mean(grid, axis=1)
    else:
      pooled = masked_mean(images["regions"].astype(jnp.float32), images["region_mask"])
    return {"emb": l2norm(self.img_fc(pooled))}

  def encode_texts(self, texts, *, train: bool) -> Dict[str, jax.Array]:
    """``{"emb": (M, embed_dim) float32, l2-normalised}``: the GRU output at the last real
    token of ``tokens`` (M, L) int32 / ``token_mask`` (M, L) bool (official ``EncoderText``);
    with a pretrained ``text_tower``, ``fc`` of the mean of its token vectors."""
    if self.text_tower is not None:
      hidden = tower_states(self.text_tower, texts, frozen=self.text_frozen, train=train)
      return {"emb": l2norm(self.txt_fc(pooled(hidden, texts["token_mask"])))}
    words = self.txt_enc(texts["tokens"], texts["token_mask"], train=train)
    return {"emb": l2norm(last_valid(words, texts["token_mask"]))}

  def score(self, img, txt, *, train: bool = False) -> jax.Array:
    """(N, M) float32 cosine similarities ``img["emb"] @ txt["emb"].T`` (bfloat16 operands,
    float32 accumulation under ``dtype='bfloat16'``)."""
    return matmul(img["emb"], txt["emb"].T, compute_dtype(self.dtype))


def inputs(model_config) -> FrozenSet[str]:
  """The pixel encoder reads rendered images; the region encoder needs nothing optional."""
  return frozenset({"pixels"} if model_config.image_input == "pixels" else ())


def unread(model_config) -> Dict[str, str]:
  """The GRU's keys under a pretrained text tower, the tower's keys under the GRU."""
  return tt.unread(model_config, {"word_dim": "the GRU's word embedding",
                                  "num_layers": "the GRU"})


def build_method(model_config, info: DataInfo) -> Method:
  """VSE++ from ``config.model`` (configs/vsepp.py)."""
  m = model_config
  model = VSEPP(vocab_size=info.vocab_size, word_dim=m.word_dim, embed_dim=m.embed_dim,
                num_layers=m.num_layers, image_input=m.image_input,
                word_vectors=info.word_vectors, dtype=read_dtype(m),
                text_tower=make_tower(m, info), text_frozen=m.get("text_frozen", False))
  # The hardest-negative loss (eq. 5) with an optional sum-over-negatives warm-up: from random
  # initialisation it can sit at its collapsed value 2 B margin for a long time (VSE∞'s
  # vse_mean_warmup_epochs); the official VSE++ has none (hardneg_warmup_epochs = 0).
  loss_fn = triplet_objective(max_violation=m.max_violation, reduction=m.loss_reduction)
  return Method("vsepp", model, loss_fn,
                hparam_names=("margin", "hardneg_warmup_epochs"), embedding="emb")
