"""What the host CPU offers for mixed precision, for benchmark records (``model.dtype``)."""
import platform
from typing import Dict

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
