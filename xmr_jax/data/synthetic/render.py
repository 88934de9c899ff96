"""Rendered pixels: each object is its category's sprite, stretched to its box, in its colour."""
from typing import Dict

import numpy as np

from xmr_jax.data.synthetic.spec import CATEGORIES, MAX_OBJECTS

IMAGE_SIZE = 64
COLOUR_RGB = np.array([[220, 30, 30], [40, 180, 50], [40, 70, 220], [235, 220, 40],
                       [245, 140, 20], [140, 50, 180], [245, 130, 190], [130, 80, 30],
                       [245, 245, 245], [15, 15, 15]], np.uint8)
SHAPES = ("rectangle", "ellipse", "triangle", "diamond", "cross", "ring")   # category % 6
PATTERNS = ("solid", "hstripes", "vstripes", "checker")                      # category // 6
STRIPE_SHADE = 0.6             # darker stripes of patterned shapes
BACKGROUND_GREY = 128
BACKGROUND_NOISE = 12


def _shape_mask(shape_id: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Inside-test of each SHAPES entry in box coordinates u, v in [0, 1] (broadcast)."""
  a, b = 2 * u - 1, 2 * v - 1
  r2 = a * a + b * b
  masks = (np.ones_like(r2, bool), r2 <= 1, v >= np.abs(a), np.abs(a) + np.abs(b) <= 1,
           (np.abs(a) <= 0.35) | (np.abs(b) <= 0.35), (r2 <= 1) & (r2 >= 0.45))
  return np.choose(shape_id, masks)


def _dark(pattern: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """True where a PATTERNS entry is drawn dark (stripes/checks); solid is never dark."""
  h = np.floor(v * 4) % 2 == 1
  w = np.floor(u * 4) % 2 == 1
  c = (np.floor(u * 3) + np.floor(v * 3)) % 2 == 1
  return np.choose(pattern, (np.zeros_like(h), h, w, c))


_SPRITE = 64                   # resolution of the per-category sprite in box coordinates


def category_sprites() -> np.ndarray:
  """(C, 64, 64) uint8 sprite per category in box coordinates: 0 out, 1 light, 2 dark."""
  t = (np.arange(_SPRITE) + 0.5) / _SPRITE
  u, v = t[None, None, :], t[None, :, None]
  cats = np.arange(len(CATEGORIES))[:, None, None]
  inside = _shape_mask(cats % len(SHAPES), u, v)
  dark = _dark(cats // len(SHAPES), u, v)
  return (inside * (1 + dark)).astype(np.uint8)


def render(rng: np.random.Generator, scenes: Dict[str, np.ndarray]) -> np.ndarray:
  """(N, 64, 64, 3) uint8: grey noisy background, objects painted large-to-small.

  Pixel (row i, col j) samples the point ((j + .5) / 64, (i + .5) / 64); an object covers a
  pixel only inside its box, so the boxes in ``object_boxes`` bound every painted pixel. Each
  object is its category's sprite (shape = category % 6, stripe pattern = category // 6)
  stretched to its box, in its colour (stripes darker by ``STRIPE_SHADE``).
  """
  n = scenes["n_obj"].shape[0]
  grid = (np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5) / IMAGE_SIZE
  sprites = category_sprites()
  # Painter's order: larger size first, so small objects stay visible; padding last (skipped).
  key = np.where(scenes["valid"], -scenes["sizes"] * MAX_OBJECTS + np.arange(MAX_OBJECTS), 99)
  draw = np.argsort(key, axis=1, kind="stable")
  rows = np.arange(n)[:, None, None]
  top = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.int8)   # 0 = background, else palette index
  for step in range(MAX_OBJECTS):
    o = draw[:, step][:, None, None]
    x0, y0, x1, y1 = (scenes["boxes"][rows[:, :, 0], o[:, :, 0], k][:, :, None]
                      .astype(np.float32) for k in range(4))
    u = (grid[None, None, :] - x0) / np.maximum(x1 - x0, 1e-6)
    v = (grid[None, :, None] - y0) / np.maximum(y1 - y0, 1e-6)
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1) & scenes["valid"][rows, o]
    iu = np.clip((u * _SPRITE).astype(np.int32), 0, _SPRITE - 1)
    iv = np.clip((v * _SPRITE).astype(np.int32), 0, _SPRITE - 1)
    val = sprites[scenes["cats"][rows, o], iv, iu]
    top = np.where(inside & (val > 0), 2 * step + val, top).astype(np.int8)
  rgb = COLOUR_RGB[np.take_along_axis(scenes["cols"], draw, axis=1)].astype(np.float32)
  shades = np.stack([rgb, np.floor(rgb * STRIPE_SHADE)], 2).reshape(n, 2 * MAX_OBJECTS, 3)
  grey = np.full((n, 1, 3), BACKGROUND_GREY, np.float32)
  palette = np.concatenate([grey, shades], 1).astype(np.uint8)            # (n, 11, 3)
  img = palette[rows, top]
  bg = (BACKGROUND_GREY + rng.integers(-BACKGROUND_NOISE, BACKGROUND_NOISE + 1,
                                       (n, IMAGE_SIZE, IMAGE_SIZE))).astype(np.uint8)
  return np.where((top == 0)[..., None], bg[..., None], img)

