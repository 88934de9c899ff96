"""Atomic writes, .npy row files and the cache directory (used by every room alike)."""
import json
import os
import tempfile
from typing import Any, Callable

import numpy as np


def cache_root() -> str:
  """``$XMR_DATA_DIR`` or ``~/.cache/xmr_jax``: generated datasets, tokenizers, converted weights."""
  return os.path.expanduser(os.environ.get("XMR_DATA_DIR") or "~/.cache/xmr_jax")


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` through a temporary file in the same directory + rename.

  Readers (and a run killed half-way) never see a partial file: ``os.replace`` is atomic on
  one filesystem; the temporary file is removed on any error. Creates the parent directory.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; a result file is readable as usual
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write_with(path: str, write: Callable[[str], None], suffix: str = "") -> None:
  """``write(tmp)`` fills a temporary file in ``path``'s directory, which is then renamed to
  ``path`` (as :func:`atomic_write_bytes`, for writers that take a file name: numpy, FAISS);
  the temporary file is removed on any error. Creates the parent directory."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
  os.close(fd)
  try:
    write(tmp)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_save_npy(path: str, array: np.ndarray) -> None:
  """``np.save(path, array)`` atomically (:func:`atomic_write_with`), without holding a
  second copy of a large array in memory."""
  atomic_write_with(path, lambda tmp: np.save(tmp, array, allow_pickle=False), ".npy")


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def make_public_dir(path: str) -> None:
  """chmod a directory made by ``tempfile.mkdtemp`` (0700) to the usual 0777 & ~umask."""
  os.chmod(path, 0o777 & ~_umask())


def atomic_write_json(path: str, obj: Any) -> None:
  """``obj`` as indented, key-sorted JSON at ``path``, written atomically (see above)."""
  atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def shrink_npy_rows(path: str, keep: int, chunk: int = 4096) -> None:
  """Rewrites the .npy at ``path`` with only its first ``keep`` rows (copied ``chunk`` rows at
  a time through memory maps, so a large file never sits in memory), then renames it into
  place: a file written with room for more rows than were filled ends up exactly filled."""
  old = np.load(path, mmap_mode="r")
  tmp = path + ".part"
  new = np.lib.format.open_memmap(tmp, "w+", old.dtype, (keep,) + old.shape[1:])
  for start in range(0, keep, chunk):
    stop = min(start + chunk, keep)
    new[start:stop] = old[start:stop]
  new.flush()
  del new, old
  os.replace(tmp, path)


# Compiled programs kept across processes (bytes): XLA evicts the least recently used beyond.
COMPILATION_CACHE_BYTES = 2 << 30


def enable_compilation_cache() -> str:
  """Keeps XLA's compiled programs in ``$XMR_DATA_DIR/jax_cache`` (JAX's persistent
  compilation cache), so a rerun, a resume, an evaluation or a sweep of the same shapes skips
  recompiling (tens of seconds for a train step on a CPU). Programs that compiled in under a
  second are not kept; the folder is capped at :data:`COMPILATION_CACHE_BYTES`. Returns the
  folder used; ``JAX_COMPILATION_CACHE_DIR`` set by the user wins, ``XMR_COMPILATION_CACHE=0``
  turns it off (returns "")."""
  import jax   # common/ stays importable without initialising JAX
  if os.environ.get("XMR_COMPILATION_CACHE", "1") == "0":
    return ""
  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(cache_root(), "jax_cache")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)
  return path
