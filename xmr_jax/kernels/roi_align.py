"""RoIAlign (He et al., "Mask R-CNN", ICCV 2017, section 3): box features from a feature map.

The semantics are torchvision's ``roi_align`` / Detectron2's ``ROIAlign`` with
``aligned=True``: a box (x0, y0, x1, y1) in feature-map units is shifted by half a cell
(pixel centres sit at +0.5), cut into ``output_size`` x ``output_size`` bins, and each bin is
the mean of ``sampling_ratio`` x ``sampling_ratio`` bilinear samples at evenly spaced points
inside it. A sample more than one cell outside the map is 0; one within a cell of the border
is clamped onto it (torchvision ``bilinear_interpolate``).

Bilinear interpolation is separable, so every sample of every box is one pair of sparse
interpolation matrices, Wy (boxes, points, H) and Wx (boxes, points, W), and the whole
operation is one einsum over the map: no Python loop over boxes or samples.
"""
from typing import Tuple

import jax
import jax.numpy as jnp


def _points(start: jax.Array, length: jax.Array, bins: int, ratio: int) -> jax.Array:
  """(N, bins * ratio) sample coordinates: bin b, sample s at start + (b + (s + .5) / r) * len / bins."""
  step = (jnp.arange(bins)[:, None] + (jnp.arange(ratio)[None, :] + 0.5) / ratio).reshape(-1)
  return start[:, None] + step[None, :] * (length[:, None] / bins)


def _interp_matrix(coords: jax.Array, size: int) -> jax.Array:
  """(N, P, size) bilinear weights of each coordinate over ``size`` cells (torchvision rules)."""
  valid = (coords >= -1.0) & (coords <= size)
  c = jnp.maximum(coords, 0.0)
  low = jnp.floor(c).astype(jnp.int32)
  at_end = low >= size - 1
  low = jnp.where(at_end, size - 1, low)
  high = jnp.where(at_end, size - 1, low + 1)
  frac = jnp.where(at_end, 0.0, c - low)
  cells = jnp.arange(size)
  w = ((cells == low[..., None]) * (1.0 - frac)[..., None]
       + (cells == high[..., None]) * frac[..., None])
  return jnp.where(valid[..., None], w, 0.0)


def roi_align(features: jax.Array, boxes: jax.Array, *, output_size: int = 2,
              sampling_ratio: int = 2, aligned: bool = True) -> jax.Array:
  """RoIAlign of ``boxes`` on one feature map.

  Args:
    features: (H, W, C) float, one image's map (row = y, column = x).
    boxes: (N, 4) float (x0, y0, x1, y1) in feature-map units (a box covering the whole map
      is (0, 0, W, H)).
    output_size: bins per side.
    sampling_ratio: samples per bin side (torchvision ``sampling_ratio``; must be > 0 here).
    aligned: shift boxes by -0.5 cell (pixel-centre convention; ``aligned=True`` in
      torchvision/Detectron2). Without it, boxes are at least one cell wide (legacy rule).

  Returns:
    (N, output_size, output_size, C) float32.
  """
  h, w, _ = features.shape
  boxes = boxes.astype(jnp.float32)
  shift = 0.5 if aligned else 0.0
  x0, y0, x1, y1 = (boxes[:, i] - shift for i in range(4))
  bw, bh = x1 - x0, y1 - y0
  if not aligned:
    bw, bh = jnp.maximum(bw, 1.0), jnp.maximum(bh, 1.0)
  wy = _interp_matrix(_points(y0, bh, output_size, sampling_ratio), h)   # (N, P, H)
  wx = _interp_matrix(_points(x0, bw, output_size, sampling_ratio), w)   # (N, Q, W)
  samples = jnp.einsum("nph,nqw,hwc->npqc", wy, wx, features.astype(jnp.float32),
                       precision=jax.lax.Precision.HIGHEST)
  n, c, r = boxes.shape[0], features.shape[-1], sampling_ratio
  samples = samples.reshape(n, output_size, r, output_size, r, c)
  return samples.mean(axis=(2, 4))


def box_features(features: jax.Array, boxes: jax.Array, **kwargs) -> jax.Array:
  """(N, C): the mean of each box's RoIAlign bins, one vector per box (see :func:`roi_align`)."""
  return roi_align(features, boxes, **kwargs).mean(axis=(1, 2))


def photo_boxes_to_map(boxes: jax.Array, photo_size: Tuple[int, int], input_size: int,
                       stride: int = 32) -> jax.Array:
  """Boxes (N, 4) x0, y0, x1, y1 in photo pixels -> feature-map units.

  The photo (width, height) = ``photo_size`` is resized to ``input_size`` x ``input_size``
  (no crop, aspect ratio not kept) and the backbone's map has one cell per ``stride`` input
  pixels, so x scales by input_size / width / stride and y by input_size / height / stride.
  """
  width, height = photo_size
  scale = jnp.asarray([input_size / width, input_size / height] * 2, jnp.float32) / stride
  return boxes.astype(jnp.float32) * scale
