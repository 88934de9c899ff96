"""Detector-like region features: a fixed random MLP over jittered object and clutter boxes."""
from typing import Dict, Tuple

import numpy as np

from xmr_jax.data.synthetic.spec import CATEGORIES, COLOURS, SIZES, Difficulty

FEATURE_SEED = 271828          # seeds the fixed "detector" MLP; never the scene seed
NUM_REGIONS = 36
FEATURE_DIM = 128
_HIDDEN = 256
_NUISANCE_DIM = 8
# Input blocks of the detector MLP and the scale of their first-layer weights: category and
# colour dominate, geometry is weaker, appearance nuisance weaker still.
_BLOCKS = (("cat", len(CATEGORIES), 1.0), ("colour", len(COLOURS), 1.0),
           ("size", len(SIZES), 0.7), ("geometry", 8, 0.5), ("flags", 2, 0.5),
           ("nuisance", _NUISANCE_DIM, 0.3))
_OUT_SCALE = 1.32              # brings the MLP output to roughly unit std per dimension


def detector_weights() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The fixed random two-layer MLP (W1, b1, W2), seeded by ``FEATURE_SEED`` only."""
  rng = np.random.default_rng(FEATURE_SEED)
  scale = np.concatenate([np.full(dim, s) for _, dim, s in _BLOCKS])
  w1 = rng.standard_normal((scale.size, _HIDDEN)) * scale[:, None]
  b1 = rng.normal(0.0, 0.3, _HIDDEN)
  w2 = rng.standard_normal((_HIDDEN, FEATURE_DIM)) * (_OUT_SCALE / np.sqrt(_HIDDEN))
  return w1.astype(np.float32), b1.astype(np.float32), w2.astype(np.float32)


def _onehot(idx: np.ndarray, n: int) -> np.ndarray:
  return (idx[..., None] == np.arange(n)).astype(np.float32)


def _region_boxes(rng, obj_box, is_obj, d: Difficulty):
  """Jittered (sometimes partial) boxes on objects, random boxes elsewhere; visibility."""
  shape = is_obj.shape
  wh = np.concatenate([obj_box[..., 2:] - obj_box[..., :2]] * 2, -1)
  jit = obj_box + rng.normal(0.0, d.box_jitter, shape + (4,)) * wh
  # A partial region keeps a fraction v of the object along one side (left/top/right/bottom).
  partial = rng.random(shape) < d.partial_frac
  v = np.where(partial, rng.uniform(0.35, 0.8, shape), 1.0)
  side = rng.integers(0, 4, shape)
  x0, y0, x1, y1 = np.moveaxis(jit, -1, 0)
  w, h = x1 - x0, y1 - y0
  x1 = np.where(side == 0, x0 + v * w, x1)
  y1 = np.where(side == 1, y0 + v * h, y1)
  x0 = np.where(side == 2, x1 - v * w, x0)
  y0 = np.where(side == 3, y1 - v * h, y0)
  centre = rng.uniform(0.0, 1.0, shape + (2,))
  half = rng.uniform(0.03, 0.2, shape + (2,))
  clutter = np.concatenate([centre - half, centre + half], -1)
  box = np.where(is_obj[..., None], np.stack([x0, y0, x1, y1], -1), clutter)
  box = np.clip(box, 0.0, 1.0)
  # Keep boxes non-degenerate after clipping (at least 1/64 of the image per side).
  box[..., 2:] = np.maximum(box[..., 2:], np.minimum(box[..., :2] + 1 / 64, 1.0))
  box[..., :2] = np.minimum(box[..., :2], box[..., 2:] - 1 / 64)
  return box.astype(np.float32), np.where(is_obj, v, 0.0).astype(np.float32)


def region_features(rng: np.random.Generator, scenes: Dict[str, np.ndarray], d: Difficulty,
                    weights=None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(features (N, 36, 128) f32, boxes (N, 36, 4) f32, region object slot (N, 36) int8)."""
  w1, b1, w2 = detector_weights() if weights is None else weights
  n = scenes["n_obj"].shape[0]
  shape = (n, NUM_REGIONS)
  n_obj_regions = int(round(NUM_REGIONS * d.object_region_frac))
  slot = np.arange(NUM_REGIONS)[None]
  is_obj = np.broadcast_to(slot < n_obj_regions, shape)
  obj = np.where(is_obj, slot % scenes["n_obj"][:, None], -1)       # round-robin on objects
  safe = np.maximum(obj, 0)
  pick = lambda a: np.take_along_axis(a, safe, axis=1)
  obj_box = np.take_along_axis(scenes["boxes"], safe[..., None], axis=1)
  box, vis = _region_boxes(rng, obj_box, is_obj, d)
  rand_cat = rng.integers(0, len(CATEGORIES), shape)
  rand_col = rng.integers(0, len(COLOURS), shape)
  cat_in = np.where(is_obj[..., None], _onehot(pick(scenes["cats"]), len(CATEGORIES))
                    * vis[..., None], _onehot(rand_cat, len(CATEGORIES)) * d.clutter_strength)
  # Ambiguous colour: the true colour's evidence is blended with a random one.
  confused = (rng.random(shape) < d.colour_confusion)[..., None]
  true_col = _onehot(pick(scenes["cols"]), len(COLOURS))
  col_obj = np.where(confused, 0.5 * true_col + 0.5 * _onehot(rand_col, len(COLOURS)), true_col)
  col_in = np.where(is_obj[..., None], col_obj, 0.5 * _onehot(rand_col, len(COLOURS)))
  size_in = _onehot(pick(scenes["sizes"]), len(SIZES)) * vis[..., None]
  geom = np.concatenate([box, (box[..., :2] + box[..., 2:]) / 2, box[..., 2:] - box[..., :2]],
                        -1) * 2 - 1
  flags = np.stack([vis, (~is_obj).astype(np.float32)], -1)
  nuis = rng.standard_normal(shape + (_NUISANCE_DIM,), dtype=np.float32) * d.nuisance
  x = np.concatenate([cat_in, col_in, size_in, geom, flags, nuis], -1).astype(np.float32)
  feats = np.tanh(x @ w1 + b1) @ w2
  feats += rng.standard_normal(feats.shape, dtype=np.float32) * np.float32(d.feature_noise)
  # Detectors return regions in no particular object order.
  perm = np.argsort(rng.random(shape), axis=1)
  feats = np.take_along_axis(feats, perm[..., None], axis=1)
  box = np.take_along_axis(box, perm[..., None], axis=1)
  obj = np.take_along_axis(obj, perm, axis=1)
  return feats.astype(np.float32), box, obj.astype(np.int8)

