"""Scene sampling: objects, hard-negative sibling groups, boxes and spatial relations.

Image coordinates have y pointing down, so "above" means a smaller y.
"""
from typing import Dict

import numpy as np

from xmr_jax.data.synthetic.spec import (CATEGORIES, COLOURS, MAX_OBJECTS, MIN_OBJECTS, SIZES,
                                         Difficulty)

_HALF_EXTENT = np.array([[0.06, 0.09], [0.10, 0.14], [0.15, 0.21]])   # per size: lo, hi
_NEAR = 0.1                    # centre distance under which two objects are just "near"


def _permute_slots(rng: np.random.Generator, n_obj: np.ndarray, force: bool) -> np.ndarray:
  """Random permutation of the first n_obj slots of each row (padding stays in place).

  With ``force`` the permutation is never the identity (slots 0 and 1 are swapped when it
  would be), which guarantees a sibling's colour binding differs.
  """
  rows = n_obj.shape[0]
  keys = rng.random((rows, MAX_OBJECTS))
  keys[np.arange(MAX_OBJECTS)[None] >= n_obj[:, None]] = np.inf
  perm = np.argsort(keys, axis=1, kind="stable")
  if force:
    ident = np.all(perm == np.arange(MAX_OBJECTS)[None], axis=1)
    perm[ident, 0], perm[ident, 1] = 1, 0
  return perm


def _base_scenes(rng: np.random.Generator, n: int) -> Dict[str, np.ndarray]:
  """n independent scenes: distinct categories and colours, sizes with replacement."""
  n_obj = rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1, size=n)
  cats = np.argsort(rng.random((n, len(CATEGORIES))), axis=1)[:, :MAX_OBJECTS]
  cols = np.argsort(rng.random((n, len(COLOURS))), axis=1)[:, :MAX_OBJECTS]
  sizes = rng.integers(0, len(SIZES), size=(n, MAX_OBJECTS))
  centres = rng.uniform(0.15, 0.85, size=(n, MAX_OBJECTS, 2))
  return dict(n_obj=n_obj, cats=cats, cols=cols, sizes=sizes, centres=centres)


def _take(a: np.ndarray, perm: np.ndarray) -> np.ndarray:
  idx = perm.reshape(perm.shape + (1,) * (a.ndim - 2))
  return np.take_along_axis(a, idx, axis=1)


def sample_scenes(rng: np.random.Generator, n: int, d: Difficulty) -> Dict[str, np.ndarray]:
  """Samples n scenes; a share come in groups of siblings with permuted attribute bindings.

  Returns arrays n_obj (n,), cats/cols/sizes (n, 5) (garbage beyond n_obj), boxes (n, 5, 4),
  valid (n, 5) bool and group (n,) — in shuffled image order.
  """
  g = max(int(d.group_size), 1)
  n_groups = int(n * d.hard_negative_frac) // g if g > 1 else 0
  n_single = n - n_groups * g
  base = _base_scenes(rng, n_groups + n_single)
  member = np.concatenate([np.tile(np.arange(g), n_groups), np.zeros(n_single, int)])
  src = np.concatenate([np.repeat(np.arange(n_groups), g),
                        n_groups + np.arange(n_single)])
  s = {k: v[src] for k, v in base.items()}
  sib = member > 0
  # Siblings: same categories, colours permuted (never identity), sizes and positions permuted.
  for key, force in (("cols", True), ("sizes", False), ("centres", False)):
    perm = _permute_slots(rng, s["n_obj"][sib], force)
    s[key][sib] = _take(s[key][sib], perm)
  wobble = rng.normal(0, 0.02, s["centres"].shape) * sib[:, None, None]
  s["centres"] = np.clip(s["centres"] + wobble, 0.1, 0.9)
  half = rng.uniform(_HALF_EXTENT[s["sizes"], 0:1].repeat(2, -1),
                     _HALF_EXTENT[s["sizes"], 1:2].repeat(2, -1))
  boxes = np.clip(np.concatenate([s["centres"] - half, s["centres"] + half], -1), 0.0, 1.0)
  valid = np.arange(MAX_OBJECTS)[None] < s["n_obj"][:, None]
  order = rng.permutation(n)
  out = dict(n_obj=s["n_obj"], cats=s["cats"], cols=s["cols"], sizes=s["sizes"],
             boxes=boxes * valid[..., None], valid=valid, group=src)
  return {k: v[order] for k, v in out.items()}


def relation_matrix(boxes: np.ndarray) -> np.ndarray:
  """(N, 5, 5) int relation index r[i, a, b]: object a is RELATIONS[r] object b.

  Dominant axis of the centre displacement decides left/right vs above/below (y points down);
  centres closer than ``_NEAR`` on both axes are "near".
  """
  c = (boxes[..., :2] + boxes[..., 2:]) / 2
  d = c[:, None, :, :] - c[:, :, None, :]          # centre of b minus centre of a
  dx, dy = d[..., 0], d[..., 1]
  horiz = np.abs(dx) >= np.abs(dy)
  rel = np.where(horiz, np.where(dx > 0, 0, 1), np.where(dy > 0, 2, 3))
  return np.where(np.maximum(np.abs(dx), np.abs(dy)) < _NEAR, 4, rel)

