"""Exact top-k of dot products over a memory-mapped (N, D) matrix, chunk by chunk.

One jitted step scores a chunk of rows against every query (one matrix product, float32
accumulation), takes the chunk's top k with ``jax.lax.top_k`` and merges it into the running
top k. Only one chunk of the matrix is in memory at a time besides the page cache of the
memory map, so an index of 100,000 photos is never held twice. Ties go to the lower row
(``lax.top_k`` keeps the lower index first, and the running top k, of lower rows, comes first
in every merge), so the result equals a stable descending sort of the full score matrix.
"""
import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_CHUNK = 16384


@functools.partial(jax.jit, static_argnames=("k",))
def _step(best_scores, best_rows, chunk, queries, offset, first_new, *, k: int):
  """Merges the top ``k`` of ``queries @ chunk.T`` (rows ``offset`` + i) into the running
  (Q, k) ``best_scores`` / ``best_rows``; rows before ``first_new`` were scored by the
  previous step (the last chunk overlaps it) and never win twice."""
  # bfloat16 rows are widened here, inside the program: a CPU without AVX512-BF16 multiplies
  # bfloat16 operands many times slower than float32, and the widening fuses into the read.
  scores = jnp.matmul(queries, chunk.astype(jnp.float32).T,
                      precision=jax.lax.Precision.HIGHEST)                    # (Q, C)
  rows = offset + jnp.arange(chunk.shape[0], dtype=jnp.int32)
  scores = jnp.where(rows[None, :] >= first_new, scores, -jnp.inf)
  top, where = jax.lax.top_k(scores, min(k, chunk.shape[0]))
  merged = jnp.concatenate([best_scores, top], 1)
  merged_rows = jnp.concatenate([best_rows, rows[where]], 1)
  top, where = jax.lax.top_k(merged, k)
  return top, jnp.take_along_axis(merged_rows, where, 1)


def as_device_dtype(rows: np.ndarray) -> np.ndarray:
  """Stored rows as the dtype they are read in: uint16 bfloat16 bits -> bfloat16 (a view,
  no copy); float32 unchanged."""
  return rows.view(jnp.bfloat16) if rows.dtype == np.uint16 else rows


def top_k(matrix: np.ndarray, queries: np.ndarray, k: int,
          chunk: int = DEFAULT_CHUNK) -> Tuple[np.ndarray, np.ndarray]:
  """The ``k`` best rows of ``matrix`` for each query by dot product, best first.

  Args:
    matrix: (N, D) float32, or uint16 holding bfloat16 bits (an index's ``--dtype
      bfloat16``: each value widened to float32 exactly); typically a read-only memmap.
    queries: (Q, D) float32.
    k: how many rows per query (at most N are returned).
    chunk: rows scored per step (one compiled shape: the last chunk is the last ``chunk``
      rows, overlapping the one before, whose rows it skips; no padded copy is made).

  Returns:
    (scores (Q, k') float32, rows (Q, k') int64), k' = min(k, N), sorted by descending
    score, ties by ascending row; scores are float32 dot products (float32 accumulation).
  """
  n, q = matrix.shape[0], queries.shape[0]
  k = min(k, n)
  if k <= 0 or q == 0:
    return np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64)
  chunk = min(chunk, n)
  best = (jnp.full((q, k), -jnp.inf, jnp.float32), jnp.full((q, k), -1, jnp.int32))
  queries = jnp.asarray(queries, jnp.float32)
  for first_new in range(0, n, chunk):
    offset = min(first_new, n - chunk)
    # A view of the memory map: on the CPU the program reads it without a copy.
    rows = as_device_dtype(np.asarray(matrix[offset:offset + chunk]))
    best = _step(*best, rows, queries, offset, first_new, k=k)
  return np.asarray(best[0]), np.asarray(best[1]).astype(np.int64)
