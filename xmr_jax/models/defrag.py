"""DeFrag (Karpathy, Joulin, Fei-Fei, "Deep Fragment Embeddings for Bidirectional Image Sentence
Mapping", NIPS 2014, arXiv 1406.5679). No official repository survives; details the paper leaves
out follow the MATLAB copy in bbugs/DeepFashion ``matlab_code/`` (DeFragCost.m, ForwardSent.m,
DriverSetParams.m, DeFragRun.m, initParams.m).

* Sentence fragments (sec. 3.1): each dependency triple (R, w1, w2) gives
  s = ReLU(W_R [W_e w1; W_e w2] + b_R). The paper has one W_R per relation type. The MATLAB
  ``ForwardSent.m`` reads the relation id but multiplies every triple by the single matrix
  ``Wsem`` (h x (2 word_dim + 1), initParams.m): ``shared_relation_matrix=True`` reproduces it.
  Ablations (paper table 3): ``fragments='bigram'`` (consecutive token pairs, one "bigram"
  relation) and ``'word'`` (single words, s = ReLU(W [W_e w] + b)), both from ``tokens``.
  The paper keeps W_e fixed (pretrained 200-d vectors); ``freeze_word_embeddings`` does that.
  With a pretrained ``model.text_encoder`` (``minilm``, ``e5_small``; bigram/word fragments)
  W_e w is the tower's contextual vector of each token (384-d; models/text_tower.py).
* Image fragments (sec. 3.2): v = W_m x + b_m, a linear map of each region feature (paper: the
  top 19 R-CNN detections) plus one whole-image fragment: the masked mean of the region
  features (``whole_image='mean'``), or the small PixelCNN over rendered pixels, mean-pooled
  (``'pixels'``), or none. Whole-image fragment is the last one (index ``num_regions``).
* Score (eq. 8): S_kl = sum_{i,j} max(0, v_i^T s_j) / (|g_k| (|g_l| + n)), see
  ``xmr_jax.kernels.fragments.fragment_similarity`` for the MATLAB variants.
* Loss (eq. 4): C_F + beta C_G; fragment objective C_0 (or MIL C_F) and the global ranking C_G
  on S_kl. The alpha ||theta||^2 term is left to the optimiser's weight decay
  (``config.train.weight_decay``; DriverSetParams.m ``regC = 2e-10``, negligible), since the loss
  never sees the parameters.
* Schedule: the trainer puts ``hparams['epoch']`` (float32) in the hparams; the MIL labels are
  used from ``model.mil_start_epoch`` on (paper: C_0 for the first 10 epochs; DeFragRun.m:
  ``milstart = 0.75 maxepochs``) and C_G from ``model.global_start_epoch`` on. Both switches are
  traced ``jnp.where``s, so nothing recompiles. Without ``epoch`` in hparams both are on.
"""
from typing import Any, Dict, FrozenSet, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmr_jax.common.errors import ConfigError
from xmr_jax.kernels import fragments as K
from xmr_jax.kernels.common import compute_dtype, einsum, masked_mean, matmul
from xmr_jax.losses.defrag import make_loss
from xmr_jax.models.image_tower import photo_regions
from xmr_jax.models.base import RetrievalModel
from xmr_jax.models.encoders import word_embedding_init
from xmr_jax.models.precision import dense_kwargs, read_dtype
from xmr_jax.models.registry import Method
from xmr_jax.models import text_tower as tt
from xmr_jax.models.text_tower import tower_states
from xmr_jax.types import DataInfo

FRAGMENTS = ("dependency", "bigram", "word")
WHOLE_IMAGE = ("mean", "pixels", "none")


class DeFrag(RetrievalModel):
  """Fragment embeddings; reprs are ``{'frags': (B, N, D), 'mask': (B, N)}`` per side."""
  vocab_size: int                 # token vocabulary (bigram / word fragments)
  word_vocab_size: int            # dependency word vocabulary
  num_relations: int
  word_dim: int = 200
  embed_dim: int = 1000
  fragments: str = "dependency"
  shared_relation_matrix: bool = False
  freeze_word_embeddings: bool = False
  whole_image: str = "mean"
  max_regions: int = 0            # keep the first k regions (0 = all)
  smoothing: float = 10.0         # n of eq. 8
  normalization: str = "paper"
  accumulation: str = "sum"
  threshold: bool = True
  word_vectors: Any = None
  dtype: str = "float32"          # model.dtype: matmul operands (models/precision.py)
  text_tower: Any = None          # pretrained tower (models/text_tower.py) instead of W_e
  text_frozen: bool = False
  image_tower: Any = None           # backbone inside the model (models/image_tower.py)
  image_frozen: bool = False

  def setup(self):
    if self.fragments not in FRAGMENTS:
      raise ConfigError(f"DeFrag: fragments={self.fragments!r}; choose one of {FRAGMENTS}")
    if self.whole_image not in WHOLE_IMAGE:
      raise ConfigError(f"DeFrag: whole_image={self.whole_image!r}; choose one of {WHOLE_IMAGE}")
    dep = self.fragments == "dependency"
    vocab = self.word_vocab_size if dep else self.vocab_size
    if self.text_tower is None:
      self.word_embed = nn.Embed(vocab, self.word_dim, embedding_init=word_embedding_init(
          self.word_vectors, nn.initializers.normal(0.1)))  # random W_e: N(0, 0.1)
    word_dim = self.text_tower.dim if self.text_tower is not None else self.word_dim
    n_rel = self.num_relations if dep and not self.shared_relation_matrix else 1
    fan_in = word_dim * (1 if self.fragments == "word" else 2)
    # One (fan_in, D) matrix per relation type, W_R of eq. 1, stacked.
    self.rel_kernel = self.param("rel_kernel", nn.initializers.lecun_normal(batch_axis=(0,)),
                                 (max(n_rel, 1), fan_in, self.embed_dim))
    self.rel_bias = self.param("rel_bias", nn.initializers.zeros, (max(n_rel, 1), self.embed_dim))
    self.img_fc = nn.Dense(self.embed_dim, name="img_fc",           # W_m, b_m of eq. 2
                           **dense_kwargs(self.dtype))
    if self.whole_image == "pixels":
      from xmr_jax.models.encoders import PixelCNN  # only this variant needs it
      self.pixel_cnn = PixelCNN(self.embed_dim, dtype=self.dtype)

  # ------------------------------------------------------------------ images
  def encode_images(self, images, *, train: bool) -> Dict[str, jax.Array]:
    """Image fragments v = W_m x + b_m (paper eq. 2) of ``regions`` (N, R, F) / ``region_mask``
    (N, R): ``{"frags": (N, K, D) float32, padding zeroed, "mask": (N, K) bool}``, K = the kept
    regions plus the whole-image fragment last (none with ``whole_image='none'``)."""
    images = photo_regions(self.image_tower, images, frozen=self.image_frozen)
    regions = images["regions"].astype(jnp.float32)
    mask = images["region_mask"].astype(bool)
    if self.max_regions:
      regions, mask = regions[:, :self.max_regions], mask[:, :self.max_regions]
    frags = self.img_fc(regions) * mask[..., None]
    if self.whole_image == "none":
      return {"frags": frags, "mask": mask}
    if self.whole_image == "mean":
      whole = self.img_fc(masked_mean(regions, mask))
    else:
      whole = jnp.mean(self.pixel_cnn(images["pixels"]), axis=1)
    frags = jnp.concatenate([frags, whole[:, None]], axis=1)
    mask = jnp.concatenate([mask, jnp.ones_like(mask[:, :1])], axis=1)
    return {"frags": frags, "mask": mask}

  # ------------------------------------------------------------------ sentences
  def _triples(self, texts) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """(relation ids, word-id stack (..., 1 or 2), mask) of the configured fragment type."""
    if self.fragments == "dependency":
      deps = texts["deps"]
      return deps[..., 0], deps[..., 1:3], texts["deps_mask"].astype(bool)
    tokens, tmask = texts["tokens"], texts["token_mask"].astype(bool)
    if self.fragments == "bigram":
      words = jnp.stack([tokens[:, :-1], tokens[:, 1:]], axis=-1)
      return jnp.zeros_like(tokens[:, 1:]), words, tmask[:, :-1] & tmask[:, 1:]
    return jnp.zeros_like(tokens), tokens[..., None], tmask

  def encode_texts(self, texts, *, train: bool) -> Dict[str, jax.Array]:
    """Sentence fragments s = ReLU(W_R [W_e w1; W_e w2] + b_R) (paper eq. 1): ``{"frags":
    (M, T, D) float32, padding zeroed, "mask": (M, T) bool}``; T is the ``deps`` (M, T, 3) int32
    length (dependency), L - 1 (bigram) or L (word) of ``tokens`` (M, L)."""
    rel, words, mask = self._triples(texts)
    if self.text_tower is not None:   # contextual token vectors in place of W_e w
      h = tower_states(self.text_tower, texts, frozen=self.text_frozen, train=train)
      emb = (jnp.stack([h[:, :-1], h[:, 1:]], axis=2) if self.fragments == "bigram"
             else h[:, :, None])                                    # (B, T, 1|2, 384)
    else:
      emb = self.word_embed(words)                                  # (B, T, 1|2, E)
    if self.freeze_word_embeddings and self.text_tower is None:
      emb = jax.lax.stop_gradient(emb)
    x = emb.reshape(emb.shape[:2] + (-1,))                          # [W_e w1; W_e w2]
    dt = compute_dtype(self.dtype)
    if self.rel_kernel.shape[0] == 1:
      h = matmul(x, self.rel_kernel[0], dt) + self.rel_bias[0]
    else:
      # Every relation's map, then pick W_R by the triple's relation: R small GEMMs in one
      # einsum instead of gathering a (B, T, fan_in, D) weight tensor.
      all_h = einsum("bte,red->btrd", x, self.rel_kernel, dtype=dt) + self.rel_bias
      r = jnp.clip(rel, 0, self.rel_kernel.shape[0] - 1)
      h = jnp.take_along_axis(all_h, r[..., None, None], axis=2)[:, :, 0]
    frags = nn.relu(h) * mask[..., None]
    return {"frags": frags, "mask": mask}

  # ------------------------------------------------------------------ scores
  def score(self, img, txt, *, train: bool = False) -> jax.Array:
    """(N, M) float32 S_kl = sum_ij max(0, v_i^T s_j) / (|g_k| (|g_l| + n)) (paper eq. 8;
    variants per ``normalization`` / ``accumulation`` / ``threshold``, ``fragment_similarity``)."""
    dots = K.fragment_scores(img["frags"], txt["frags"], compute_dtype(self.dtype))
    return K.fragment_similarity(dots, img["mask"], txt["mask"], smoothing=self.smoothing,
                                 normalization=self.normalization,
                                 accumulation=self.accumulation, threshold=self.threshold)

  def alignments(self, img, txt) -> Dict[str, jax.Array]:
    """Best image fragment per sentence fragment of pairs (img[b], txt[b]) (paper fig. 4).

    ``index`` (B, Ns): region index, ``num_regions`` (after ``max_regions``) for the whole
    image, -1 for padding; ``score`` (B, Ns) the fragment score v_i^T s_j.
    """
    index, score = K.pair_alignments(img["frags"], img["mask"], txt["frags"], txt["mask"],
                                     compute_dtype(self.dtype))
    return {"index": index, "score": score}


def inputs(model_config) -> FrozenSet[str]:
  """Dependency fragments read the parsed triples of every caption (``deps``)."""
  return frozenset({"deps"} if model_config.fragments == "dependency" else ())


def unread(model_config) -> Dict[str, str]:
  """Relation matrices exist for dependency fragments only; the MIL switch needs MIL."""
  m = model_config
  out = tt.unread(m, {"word_dim": "the word embedding W_e",
                      "freeze_word_embeddings": "W_e (use model.text_frozen)"})
  if m.fragments != "dependency":
    out["shared_relation_matrix"] = (f"model.fragments={m.fragments!r}; only 'dependency' "
                                     f"fragments have relation matrices")
  if not m.use_mil:
    out["mil_start_epoch"] = "model.use_mil=False; only the MIL objective reads it"
  return out


def build_method(model_config, info: DataInfo) -> Method:
  """DeFrag from ``config.model`` (configs/defrag.py).

  Raises ValueError when ``data.word_embeddings`` is combined with dependency fragments: the
  vectors index the caption tokenizer's vocabulary, the dependency fragments another one.
  """
  m = model_config
  if tt.uses_tower(m) and m.fragments == "dependency":
    raise ConfigError(f"model.text_encoder={tt.text_encoder(m)} gives contextual vectors of "
                      f"caption tokens, but dependency fragments embed words of the dependency "
                      f"vocabulary; use model.fragments=bigram or word")
  if info.word_vectors is not None and m.fragments == "dependency":
    raise ConfigError("data.word_embeddings initialises the caption tokenizer's words, but "
                     "DeFrag's dependency fragments embed the words of the dependency "
                     "vocabulary; unset data.word_embeddings or use model.fragments=bigram")
  model = DeFrag(vocab_size=info.vocab_size, word_vocab_size=max(info.word_vocab_size, 1),
                 num_relations=max(info.num_relations, 1), word_dim=m.word_dim,
                 embed_dim=m.embed_dim, fragments=m.fragments,
                 shared_relation_matrix=m.shared_relation_matrix,
                 freeze_word_embeddings=m.freeze_word_embeddings, whole_image=m.whole_image,
                 max_regions=m.max_regions, smoothing=m.smoothing,
                 normalization=m.normalization, accumulation=m.accumulation,
                 threshold=m.threshold, word_vectors=info.word_vectors, dtype=read_dtype(m),
                 text_tower=tt.make_tower(m, info), text_frozen=m.get("text_frozen", False))
  loss_fn = make_loss(m.objective, m.use_mil, m.mil_start_epoch, m.global_start_epoch)
  return Method("defrag", model, loss_fn,
                hparam_names=("margin", "global_weight", "fragment_margin"),
                alignments="alignments")
