"""``search query``: rank an index's photos for captions, or its captions for a photo.

A method with a dot-product score (``Method.embedding``) ranks with :func:`topk.top_k` over
the memory-mapped matrix; any other method scores every stored item against the query with
the evaluation engine (``engine.score_all``: exact, all pairs) and sorts, or, with a
:class:`Shortlist` (``--shortlist``), ranks only the K best items of a dot-product first stage
by its own score (``engine.score_pairs``; two-stage search).
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


@dataclasses.dataclass(frozen=True)
class Shortlist:
  """Two-stage search's first stage: each query's ``k`` best rows by the dot product of the
  ``key`` leaf of ``index``, the queries encoded by ``model``; the searched model then scores
  those rows alone. ``index`` is the searched index itself (``name`` ``"own"``: the method's
  global term, ``Method.global_embedding``) or an index of another workdir with a global
  embedding (VSE++, PCME) over the same photos and captions (``name``: its path)."""
  index: store.Index
  model: model_lib.SearchModel
  key: str
  k: int
  name: str


def open_shortlist(index: store.Index, name: str, photo: bool) -> Optional[store.Index]:
  """The ``--shortlist`` index (None for ``own``), checked against ``index`` before any model
  is restored.

  Raises:
    InputError: ``index`` is ranked by a dot product already (exact over every row).
    SearchIndexError: as ``store.open_index``, or the shortlist index holds other photos (or,
      for a photo query, other captions) than ``index``, or in another order.
  """
  if index.identity["embedding"]:
    raise InputError(f"--shortlist: {index.path} ranks by a dot product already, exactly over "
                     f"every photo; two-stage search is for an index of a method whose score "
                     f"is not one. Leave --shortlist out")
  if name == "own":
    return None
  other = store.open_index(name)
  where = lambda i: f"{len(i.files)} photos of {i.identity['images_dir']}"
  if other.files != index.files or other.identity["images_dir"] != index.identity["images_dir"]:
    raise store.SearchIndexError(
        f"--shortlist {name} does not hold the photos of {index.path} in the same order "
        f"({where(other)}; the index: {where(index)}); build it from the same folder with "
        f"python -m xmr_jax.search index --workdir W --images {index.identity['images_dir']} "
        f"--out {name}")
  if photo and other.captions != index.captions:
    raise store.SearchIndexError(f"--shortlist {name} does not hold the captions of "
                                 f"{index.path}; build it with the same --captions file")
  return other


def make_shortlist(model: model_lib.SearchModel, index: store.Index,
                   other: Optional[store.Index], name: str, k: int) -> Shortlist:
  """The :class:`Shortlist` of ``--shortlist name --rerank-k k`` (``other``:
  :func:`open_shortlist`'s index); its workdir is restored here.

  Raises InputError when the first stage has no global embedding stored in its index.
  """
  if other is None:
    shortlist = Shortlist(index, model, model.method.global_embedding, k, name)
  else:
    m = model_lib.load(model_workdir(other))
    shortlist = Shortlist(other, m, m.method.global_embedding, k, name)
  if shortlist.key not in (shortlist.index.identity.get("images") or {}).get("leaves", {}):
    raise InputError(f"--shortlist {name}: its method {shortlist.model.method.name} has no "
                     f"dot-product global term stored in {shortlist.index.path}; give "
                     f"--shortlist IDX2, an index of a VSE++ or PCME workdir over the same "
                     f"photos")
  return shortlist


def _two_stage(model: model_lib.SearchModel, index: store.Index, side: str,
               queries: Dict[str, Any], k: int, shortlist: Shortlist,
               vectors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """:func:`rank` by the exact score of the shortlist's rows alone; ties by the lower row."""
  _, candidates = topk.top_k(shortlist.index.leaves(side)[shortlist.key],
                             np.asarray(vectors, np.float32), shortlist.k)
  rows, inverse = np.unique(candidates, return_inverse=True)
  exact = engine.score_pairs(model.method, model.variables, queries, index.reprs(side, rows),
                             inverse.reshape(candidates.shape),
                             query_side="text" if side == "images" else "image",
                             tile_queries=model.config.eval.tile_images,
                             pairs_per_step=model.config.eval.tile_texts)
  order = np.lexsort((candidates, -exact), axis=-1)[:, :k]
  return np.take_along_axis(exact, order, 1), np.take_along_axis(candidates, order, 1)


def rank(model: model_lib.SearchModel, index: store.Index, side: str,
         queries: Dict[str, Any], k: int,
         first: Optional[Tuple[Shortlist, np.ndarray]] = None) -> Tuple[np.ndarray, np.ndarray]:
  """(scores (Q, k'), rows (Q, k')) of the ``k`` best ``side`` rows for each encoded query
  (texts against ``"images"``, photos against ``"captions"``), best first. ``first``: a
  shortlist and the queries' (Q, D) vectors of its first stage (two-stage search)."""
  n = index.identity[side]["count"]
  q = len(next(iter(store.flatten(queries).values())))
  if n == 0:
    return np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64)
  key = index.identity["embedding"]
  if key:
    return topk.top_k(index.matrix(side), np.asarray(queries[key], np.float32), k)
  if first is not None:
    return _two_stage(model, index, side, queries, k, *first)
  stored = index.reprs(side)
  img, txt = (stored, queries) if side == "images" else (queries, stored)
  scores = engine.score_all(model.method, model.variables, img, txt,
                            tile_images=model.config.eval.tile_images,
                            tile_texts=model.config.eval.tile_texts)
  return exact_top_k(scores.T if side == "images" else scores, k)


def _first(shortlist: Optional[Shortlist], model: model_lib.SearchModel, reprs: Dict[str, Any],
           encode) -> Optional[Tuple[Shortlist, np.ndarray]]:
  """(shortlist, the queries' first-stage vectors): ``reprs``' own, or ``encode(its model)``."""
  if shortlist is None:
    return None
  own = shortlist.model is model
  return shortlist, (reprs if own else encode(shortlist.model))[shortlist.key]


def search_texts(model: model_lib.SearchModel, index: store.Index, queries: Sequence[str],
                 k: int, shortlist: Optional[Shortlist] = None) -> List[Result]:
  """The ``k`` best photos of ``index`` for each query text (already :func:`clean_queries`);
  with ``shortlist``, among its ``shortlist.k`` best by the first stage."""
  reprs = model_lib.encode_texts(model, queries)
  first = _first(shortlist, model, reprs, lambda m: model_lib.encode_texts(m, queries))
  scores, rows = rank(model, index, "images", reprs, k, first)
  return [Result(t, r, s) for t, r, s in zip(queries, rows, scores)]


def search_photo(model: model_lib.SearchModel, index: store.Index, path: str,
                 k: int, shortlist: Optional[Shortlist] = None) -> Result:
  """The ``k`` best captions of ``index`` for the photo at ``path`` (with ``shortlist``, as
  :func:`search_texts`).

  Raises:
    SearchIndexError: the index holds no captions.
    DataError: the photo cannot be decoded.
  """
  check_captions(index)
  reprs = model_lib.encode_photo(model, path)
  first = _first(shortlist, model, reprs, lambda m: model_lib.encode_photo(m, path))
  scores, rows = rank(model, index, "captions", reprs, k, first)
  return Result(path, rows[0], scores[0])


def check_captions(index: store.Index) -> None:
  """SearchIndexError unless ``index`` holds captions (what a photo query ranks)."""
  if index.identity.get("captions") is None:
    raise store.SearchIndexError(
        f"{index.path} holds no captions, so a photo query has nothing to rank; build it with "
        f"--captions FILE (or --caption-lines FILE) to search captions by photo")
