"""What the hardware offers for mixed precision: benchmark records and ``model.dtype=auto``."""
import os
import platform
from typing import Dict, Optional, Tuple

from xmr_jax.common.errors import ConfigError

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx_vnni")


def cpu_bf16_flags(path: str = "/proc/cpuinfo") -> Dict[str, object]:
  """``{"model": CPU model name, flag: bool for each of BF16_FLAGS}`` from ``path``'s first
  processor entry (Linux). ``avx512_bf16``: AVX-512 bfloat16 dot products; ``amx_bf16``: AMX
  tiles (Sapphire Rapids and later). On a machine without ``path`` every flag is None."""
  out: Dict[str, object] = {"model": platform.processor() or platform.machine()}
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return dict(out, **{flag: None for flag in BF16_FLAGS})
  flags = set()
  for line in text.splitlines():
    key, _, value = line.partition(":")
    if key.strip() == "model name":
      out["model"] = value.strip()
    if key.strip() == "flags":
      flags = set(value.split())
      break
  return dict(out, **{flag: flag in flags for flag in BF16_FLAGS})


# ``model.dtype=auto`` resolved by hand (tests pin it; a cluster can too): "float32" | "bfloat16".
AUTO_DTYPE_ENV = "XMR_JAX_AUTO_DTYPE"


def auto_dtype(backend: Optional[str] = None, device=None,
               cpu_flags: Optional[Dict[str, object]] = None) -> Tuple[str, str]:
  """What ``model.dtype=auto`` means here: ``(dtype, reason)``.

  "bfloat16" only where the hardware multiplies bfloat16 natively: a TPU, an NVIDIA GPU of
  compute capability 8.0 or later (Ampere and newer), or a CPU with ``avx512_bf16`` or
  ``amx_bf16``; "float32" everywhere else, since emulated bfloat16 is slower (on an AVX2-only
  CPU SGRAF's scoring ran at 0.44-0.93x the float32 speed, docs/performance.md). The
  environment variable ``XMR_JAX_AUTO_DTYPE`` (float32 | bfloat16) overrides the check.
  ``backend`` / ``device`` / ``cpu_flags`` default to JAX's first device and /proc/cpuinfo.

  Raises:
    ConfigError: ``XMR_JAX_AUTO_DTYPE`` holds anything but "float32" or "bfloat16" (the CLI
      prints it as one message, exit 2).
  """
  forced = os.environ.get(AUTO_DTYPE_ENV)
  if forced:
    if forced not in ("float32", "bfloat16"):
      raise ConfigError(f"environment variable {AUTO_DTYPE_ENV}={forced!r} (what "
                        f"model.dtype=auto means): set it to float32 or bfloat16, or unset it")
    return forced, f"{AUTO_DTYPE_ENV}={forced}"
  if backend is None or device is None:
    import jax
    device = jax.devices()[0] if device is None else device
    backend = device.platform if backend is None else backend
  if backend == "tpu":
    return "bfloat16", "TPU (bfloat16 matrix units)"
  if backend in ("gpu", "cuda", "rocm"):
    capability = str(getattr(device, "compute_capability", "") or "")
    try:
      major = int(capability.split(".")[0])
    except ValueError:
      return "float32", f"GPU {getattr(device, 'device_kind', '')} of unknown compute capability"
    if major >= 8:
      return "bfloat16", f"GPU compute capability {capability} (bfloat16 tensor cores)"
    return "float32", f"GPU compute capability {capability} (no bfloat16 tensor cores)"
  flags = cpu_bf16_flags() if cpu_flags is None else cpu_flags
  units = [f for f in ("avx512_bf16", "amx_bf16") if flags.get(f)]
  if units:
    return "bfloat16", f"CPU with {' and '.join(units)}"
  return "float32", "CPU without avx512_bf16 or amx_bf16: bfloat16 would be emulated"
