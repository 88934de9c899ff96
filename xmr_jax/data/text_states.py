"""A frozen pretrained text tower's token vectors, computed once per caption and stored.

With ``model.text_encoder`` a pretrained tower and the tower frozen (``model.text_frozen``),
what the tower gives for a caption never changes during training, so running it every step
only repeats work: a 12-layer tower costs far more than the retrieval heads trained on top of
it. :func:`cached_states` runs it once over a split's ids
(:func:`token_states`) and stores the (T, D) float32 result as one
``.npy`` under ``<cache>/text_states/``, named by a hash of the tower, the compute dtype and
the ids; later runs, evaluations and sweeps over the same captions memory-map it. Batches
then carry these vectors as ``text_states`` (``pipeline.train_dataset``) and the models read
them instead of running the tower (``models/text_tower.py``).
"""
import hashlib
import os
import warnings
from typing import Tuple

import numpy as np
from tqdm.auto import tqdm

from xmr_jax.common.io import atomic_save_npy
from xmr_jax.data.tokenizers import pad_ragged

# Bump when token_states' output for the same tower, dtype and ids changes.
FORMAT = 1
# Captions per forward pass of token_states and the multiple their padded length rounds up to
# (a few compiled shapes, little padding: captions are taken in length order).
STATES_BATCH, STATES_PAD = 64, 8


def token_states(name: str, flat: np.ndarray, offsets: np.ndarray, *, dtype: str = "float32",
                 progress: bool = True) -> np.ndarray:
  """The frozen tower ``name``'s contextual vector of every token of ragged id rows.

  Args:
    name: a key of ``backbones.text_towers.TEXT_TOWERS``.
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
  from xmr_jax.backbones.text_towers import states_fn, text_tower
  fn = states_fn(name, dtype)
  offsets = np.asarray(offsets, np.int64)
  lengths = np.diff(offsets)
  out = np.zeros((len(flat), text_tower(name).entry.dim), np.float32)
  order = np.argsort(lengths, kind="stable")
  starts = range(0, len(order), STATES_BATCH)
  for start in tqdm(starts, desc=f"{name} token vectors", disable=not progress, leave=False):
    rows = order[start:start + STATES_BATCH]
    width = max(STATES_PAD, -(-int(lengths[rows].max()) // STATES_PAD) * STATES_PAD)
    ids, mask = pad_ragged(flat, offsets, rows, (width,))
    hidden = np.asarray(fn(ids.astype(np.int32), mask))
    # Token t of caption r is flat[offsets[r] + t]: scatter the real tokens back.
    where = offsets[rows, None] + np.arange(width)[None, :]
    out[where[mask]] = hidden[mask]
  return out


def states_path(cache_dir: str, name: str, dtype: str, flat: np.ndarray,
                offsets: np.ndarray) -> str:
  """``<cache_dir>/text_states/<hash>.npy`` for tower ``name`` in ``dtype`` over these ids."""
  from xmr_jax.backbones.text_towers import text_tower
  h = hashlib.sha256(f"{FORMAT}:{name}:{dtype}:{text_tower(name).entry}".encode())
  h.update(np.ascontiguousarray(flat, np.int64).tobytes())
  h.update(np.ascontiguousarray(offsets, np.int64).tobytes())
  return os.path.join(cache_dir, "text_states", h.hexdigest()[:24] + ".npy")


def cached_states(cache_dir: str, name: str, dtype: str,
                  tokens: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
  """(T, D) float32 token vectors of tower ``name`` for ``tokens`` = (flat (T,) ids, offsets
  (N + 1,)), read (memory-mapped) from ``cache_dir`` or computed and written there atomically
  first. A damaged or mismatched file is computed again; a read-only cache folder only costs
  computing them again next time (a warning)."""
  from xmr_jax.backbones.text_towers import text_tower
  flat, offsets = tokens
  path = states_path(cache_dir, name, dtype, flat, offsets)
  want = (len(flat), text_tower(name).entry.dim)
  if os.path.isfile(path):
    try:
      states = np.load(path, mmap_mode="r", allow_pickle=False)
      if states.shape == want and states.dtype == np.float32:
        return states
    except (OSError, ValueError):
      pass    # rebuilt below
  print(f"{name}: computing the frozen tower's vectors of {len(offsets) - 1:,} captions "
        f"once ({path})", flush=True)
  states = token_states(name, flat, offsets, dtype=dtype)
  try:
    atomic_save_npy(path, states)
  except OSError as e:
    warnings.warn(f"could not cache the text tower's vectors at {path}: {e}")
    return states
  return np.load(path, mmap_mode="r", allow_pickle=False)   # as later runs read it
