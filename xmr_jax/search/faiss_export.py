"""``python -m xmr_jax.search export-faiss``: an index's embedding matrix as a FAISS index.

For collections that outgrow one machine's memory-mapped matrix product
(:mod:`xmr_jax.search.topk`), FAISS (``pip install -e '.[faiss]'``: faiss-cpu) serves the same
dot-product search from its own servers, shards and GPUs. The export is exact
(``IndexFlatIP``: inner product, the score of dot-product methods such as VSE++); FAISS's
approximate indexes can be trained from it (docs/search.md). Row ``i`` of the FAISS index is
line ``i`` of the xmr_jax index's ``images.txt`` (or ``captions.txt``).
"""
import numpy as np

from xmr_jax.common.errors import InputError
from xmr_jax.common.io import atomic_write_with
from xmr_jax.search import store

CHUNK = 65536    # rows widened to float32 and added at a time (bounded memory)


def export(index_path: str, out: str, side: str = "images") -> int:
  """Writes ``out``, a FAISS ``IndexFlatIP`` of ``side``'s embedding rows of the index at
  ``index_path`` (bfloat16 rows widened to float32), atomically; returns the row count.

  Raises:
    InputError: faiss is not installed; the index's method has no dot-product score (its
      ranking needs the model: use ``query``); the index has no ``side``; a broken index
      (:func:`store.open_index`'s errors).
  """
  try:
    import faiss
  except ImportError:
    raise InputError("export-faiss needs FAISS: pip install -e '.[faiss]' (faiss-cpu)") from None
  index = store.open_index(index_path)
  key = index.identity.get("embedding")
  if not key:
    raise InputError(f"{index_path}: {index.identity.get('method')}'s score is not a dot "
                     f"product of stored vectors, so FAISS cannot rank it; search it with "
                     f"python -m xmr_jax.search query")
  if index.identity.get(side) is None:
    raise InputError(f"{index_path} holds no {side}; build it with them "
                     f"({'--captions' if side == 'captions' else '--images'})")
  matrix = index.matrix(side)
  dtype = index.identity[side]["leaves"][key]["dtype"]
  flat = faiss.IndexFlatIP(int(matrix.shape[1]))
  for start in range(0, len(matrix), CHUNK):
    rows = store.decode(matrix[start:start + CHUNK], dtype)
    flat.add(np.ascontiguousarray(rows, np.float32))
  atomic_write_with(out, lambda tmp: faiss.write_index(flat, tmp), ".faiss")
  return int(flat.ntotal)
