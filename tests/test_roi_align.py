"""RoIAlign against a direct bilinear-sampling reference written with loops in numpy."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from xmr_jax.kernels import roi_align as R


def _bilinear(fm, y, x):
  """torchvision's bilinear_interpolate for one point, written out."""
  h, w, c = fm.shape
  if y < -1.0 or y > h or x < -1.0 or x > w:
    return np.zeros(c)
  y, x = max(y, 0.0), max(x, 0.0)
  y_low, x_low = int(math.floor(y)), int(math.floor(x))
  if y_low >= h - 1:
    y_low = y_high = h - 1
    y = float(y_low)
  else:
    y_high = y_low + 1
  if x_low >= w - 1:
    x_low = x_high = w - 1
    x = float(x_low)
  else:
    x_high = x_low + 1
  ly, lx = y - y_low, x - x_low
  hy, hx = 1 - ly, 1 - lx
  return (hy * hx * fm[y_low, x_low] + hy * lx * fm[y_low, x_high]
          + ly * hx * fm[y_high, x_low] + ly * lx * fm[y_high, x_high])


def _reference(fm, box, out=2, ratio=2, aligned=True):
  off = 0.5 if aligned else 0.0
  x0, y0, x1, y1 = (b - off for b in box)
  bw, bh = x1 - x0, y1 - y0
  if not aligned:
    bw, bh = max(bw, 1.0), max(bh, 1.0)
  res = np.zeros((out, out, fm.shape[-1]))
  for py in range(out):
    for px in range(out):
      acc = np.zeros(fm.shape[-1])
      for iy in range(ratio):
        for ix in range(ratio):
          y = y0 + py * bh / out + (iy + 0.5) * bh / out / ratio
          x = x0 + px * bw / out + (ix + 0.5) * bw / out / ratio
          acc += _bilinear(fm, y, x)
      res[py, px] = acc / ratio ** 2
  return res


BOXES = np.array([[0, 0, 6, 6],            # the whole 6 x 6 map
                  [1.2, 0.3, 4.7, 2.9],    # inside
                  [-0.8, 4.5, 2.0, 7.5],   # over the top-left / bottom borders
                  [5.6, 5.6, 6.0, 6.0],    # a sliver at the corner
                  [3.0, 2.0, 3.0, 2.0],    # empty (zero size)
                  [-3.0, -3.0, -1.5, -1.2]],  # fully outside: zeros
                 np.float32)


@pytest.mark.parametrize("aligned,out,ratio", [(True, 2, 2), (True, 3, 1), (False, 2, 2)])
def test_roi_align_equals_the_loop_reference(aligned, out, ratio):
  fm = np.random.default_rng(0).normal(size=(6, 6, 5)).astype(np.float32)
  got = np.asarray(R.roi_align(jnp.asarray(fm), jnp.asarray(BOXES), output_size=out,
                               sampling_ratio=ratio, aligned=aligned))
  want = np.stack([_reference(fm.astype(np.float64), b, out, ratio, aligned) for b in BOXES])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(want[1], 0) and np.allclose(want[-1], 0)


def test_box_features_average_the_bins_and_boxes_map_to_cells():
  fm = np.random.default_rng(1).normal(size=(6, 6, 3)).astype(np.float32)
  got = np.asarray(R.box_features(jnp.asarray(fm), jnp.asarray(BOXES[:2])))
  want = np.stack([_reference(fm, b).mean(axis=(0, 1)) for b in BOXES[:2]])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # A 400 x 200 photo resized to 192 x 192 with stride 32: x by 192/400/32, y by 192/200/32.
  mapped = np.asarray(R.photo_boxes_to_map(jnp.asarray([[0, 0, 400, 200], [100, 50, 200, 150]],
                                                       jnp.float32), (400, 200), 192))
  np.testing.assert_allclose(mapped, [[0, 0, 6, 6], [1.5, 1.5, 3, 4.5]], rtol=1e-6)
