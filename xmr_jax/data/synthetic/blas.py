"""Single-threaded OpenBLAS while generating (a speed matter only: results do not change)."""
import contextlib
import ctypes


def _openblas_thread_api():
  """(get, set) of the OpenBLAS numpy loaded, found like threadpoolctl does; else None."""
  try:
    with open("/proc/self/maps", encoding="utf-8") as f:
      libs = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
  except OSError:            # not Linux: leave BLAS threading alone
    return None
  for path in sorted(libs):
    try:
      lib = ctypes.CDLL(path)
    except OSError:
      continue
    for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""),
                           ("openblas", "64_"), ("openblas", "")):
      get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
      put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
      if get is not None and put is not None:
        return get, put
  return None


@contextlib.contextmanager
def single_threaded():
  """One BLAS thread while generating.

  The matmuls here are small per call; on a shared machine OpenBLAS's spinning worker threads
  cost ~4x the CPU time (measured: 25 s vs 6 s user time for the default size with pixels).
  Results do not depend on the thread count (OpenBLAS splits rows/columns, not the sum).
  """
  api = _openblas_thread_api()
  if api is None:
    yield
    return
  get, put = api
  before = get()
  put(1)
  try:
    yield
  finally:
    put(before)
