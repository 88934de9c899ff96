"""``search query``: rank an index's photos for captions, or its captions for a photo.

A method with a dot-product score (``Method.embedding``) ranks with :func:`topk.top_k` over
the memory-mapped matrix; any other method scores every stored item against the query with
the evaluation engine (``engine.score_all``: exact, all pairs) and sorts.
"""
import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from xmr_jax.common.errors import InputError
from xmr_jax.data.precomp import normalize_caption
from xmr_jax.evaluation import engine
from xmr_jax.search import model as model_lib, store, topk


@dataclasses.dataclass(frozen=True)
class Result:
  """The ranking of one query: ``rows`` (k,) into the ranked side of the index, best first,
  with their ``scores`` (k,) (higher = better, the method's own score)."""
  query: str
  rows: np.ndarray
  scores: np.ndarray


def model_workdir(index: store.Index, workdir: Optional[str] = None) -> str:
  """The workdir to answer ``index``'s queries: ``workdir`` or the one it was built with,
  checked to serve the same model (:data:`store.MODEL_KEYS`) before anything is restored.

  Raises:
    SearchIndexError: the workdir is gone (give ``workdir``), or it now serves another
      model than the index was built by (another checkpoint step, tokenizer or config).
    WorkdirError: as ``model.workdir_identity``.
  """
  ident = index.identity
  workdir = workdir or ident["workdir"]
  if not os.path.isdir(workdir):
    raise store.SearchIndexError(f"{index.path} was built with the workdir {workdir}, which "
                                 f"is not there; give its new place with --workdir")
  found = model_lib.workdir_identity(workdir)
  diff = [k for k in store.MODEL_KEYS if ident.get(k) != found.get(k)]
  if diff:
    now = ", ".join(f"{k} {_short(found.get(k))} (index: {_short(ident.get(k))})" for k in diff)
    raise store.SearchIndexError(
        f"{index.path} was built by another model than {workdir} serves now: {now}. Its "
        f"stored representations do not match this model's; build a new index with python -m "
        f"xmr_jax.search index --workdir {workdir} --images {ident['images_dir']} --out NEW")
  return workdir


def _short(value: Any) -> str:
  text = value.get("name", value) if isinstance(value, dict) else value
  return str(text)[:12] if isinstance(text, str) and len(str(text)) == 64 else str(text)


def clean_queries(texts: Sequence[str]) -> List[str]:
  """``texts`` through ``normalize_caption``; InputError for none, or an empty one."""
  out = [normalize_caption(t) for t in texts]
  if not out:
    raise InputError("no query given: give the text to search for, or --queries FILE with "
                     "one query a line")
  for text, clean in zip(texts, out):
    if not clean:
      raise InputError(f"empty query {text!r}: give words to search for")
  return out


def exact_top_k(scores: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
  """(scores (Q, k'), rows (Q, k')) of (Q, N) ``scores``: a stable descending sort per row
  (ties by ascending row), k' = min(k, N)."""
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, order, 1), order


def rank(model: model_lib.SearchModel, index: store.Index, side: str,
         queries: Dict[str, Any], k: int) -> Tuple[np.ndarray, np.ndarray]:
  """(scores (Q, k'), rows (Q, k')) of the ``k`` best ``side`` rows for each encoded query
  (texts against ``"images"``, photos against ``"captions"``), best first."""
  n = index.identity[side]["count"]
  q = len(next(iter(store.flatten(queries).values())))
  if n == 0:
    return np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64)
  key = index.identity["embedding"]
  if key:
    return topk.top_k(index.matrix(side), np.asarray(queries[key], np.float32), k)
  stored = index.reprs(side)
  img, txt = (stored, queries) if side == "images" else (queries, stored)
  scores = engine.score_all(model.method, model.variables, img, txt,
                            tile_images=model.config.eval.tile_images,
                            tile_texts=model.config.eval.tile_texts)
  return exact_top_k(scores.T if side == "images" else scores, k)


def search_texts(model: model_lib.SearchModel, index: store.Index, queries: Sequence[str],
                 k: int) -> List[Result]:
  """The ``k`` best photos of ``index`` for each query text (already :func:`clean_queries`)."""
  reprs = model_lib.encode_texts(model, queries)
  scores, rows = rank(model, index, "images", reprs, k)
  return [Result(t, r, s) for t, r, s in zip(queries, rows, scores)]


def search_photo(model: model_lib.SearchModel, index: store.Index, path: str,
                 k: int) -> Result:
  """The ``k`` best captions of ``index`` for the photo at ``path``.

  Raises:
    SearchIndexError: the index holds no captions.
    DataError: the photo cannot be decoded.
  """
  check_captions(index)
  scores, rows = rank(model, index, "captions", model_lib.encode_photo(model, path), k)
  return Result(path, rows[0], scores[0])


def check_captions(index: store.Index) -> None:
  """SearchIndexError unless ``index`` holds captions (what a photo query ranks)."""
  if index.identity.get("captions") is None:
    raise store.SearchIndexError(
        f"{index.path} holds no captions, so a photo query has nothing to rank; build it with "
        f"--captions FILE (or --caption-lines FILE) to search captions by photo")
