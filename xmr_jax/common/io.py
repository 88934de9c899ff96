"""Atomic writes and the cache directory (used by data, training and evaluation alike)."""
import json
import os
from typing import Any


def cache_root() -> str:
  """``$XMR_DATA_DIR`` or ``~/.cache/xmr_jax``: generated datasets, tokenizers, converted weights."""
  return os.path.expanduser(os.environ.get("XMR_DATA_DIR", "~/.cache/xmr_jax"))


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` through a temporary file in the same directory + rename.

  Readers (and a run killed half-way) never see a partial file: ``os.replace`` is atomic on
  one filesystem. Creates the parent directory.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def atomic_write_json(path: str, obj: Any) -> None:
  """``obj`` as indented, key-sorted JSON at ``path``, written atomically (see above)."""
  atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())
