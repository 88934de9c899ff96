"""A frozen pretrained text tower's token vectors, computed once per caption and stored.

With ``model.text_encoder`` a pretrained tower and the tower frozen (``model.text_frozen``),
what the tower gives for a caption never changes during training, so running it every step
only repeats work: a 12-layer tower costs far more than the retrieval heads trained on top of
it. :func:`cached_states` runs it once over a split's ids
(``xmr_jax.backbones.text_towers.token_states``) and stores the (T, D) float32 result as one
``.npy`` under ``<cache>/text_states/``, named by a hash of the tower, the compute dtype and
the ids; later runs, evaluations and sweeps over the same captions memory-map it. Batches
then carry these vectors as ``text_states`` (``pipeline.train_dataset``) and the models read
them instead of running the tower (``models/text_tower.py``).
"""
import hashlib
import os
from typing import Tuple

import numpy as np

from xmr_jax.common.io import atomic_save_npy

# Bump when token_states' output for the same tower, dtype and ids changes.
FORMAT = 1


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
  from xmr_jax.backbones.text_towers import text_tower, token_states
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
    import warnings
    warnings.warn(f"could not cache the text tower's vectors at {path}: {e}")
  return states
