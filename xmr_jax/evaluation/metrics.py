"""Retrieval metrics on a precomputed score matrix (plain numpy).

Conventions shared by every function here:

* ``scores`` has shape ``(n_img, n_txt)``, higher means more similar, and
  caption ``c`` belongs to image ``c // k`` (the SCAN precomp layout).
* Ranks are 1-based. Ties are broken by a stable sort on descending score:
  among equal scores the item with the lower gallery index comes first, so

      rank(t) = 1 + #{j : s_j > s_t} + #{j : s_j == s_t and j < t}.

  This is what ``np.argsort(-s, kind="stable")`` gives. The official
  SCAN / VSE++ ``evaluation.py`` uses ``np.argsort(s)[::-1]`` which, for a
  stable ascending sort, puts the *higher* index first among ties (and numpy's
  default quicksort does not even promise that). With continuous scores ties
  do not happen and both rules agree.
* Recalls are percentages in 0-100. ``medr`` and ``meanr`` follow SCAN:
  with 0-based ranks ``r0`` the official code reports
  ``floor(median(r0)) + 1`` and ``mean(r0) + 1``. For 1-based ranks
  ``r = r0 + 1`` the median shifts by exactly one, so
  ``floor(median(r)) == floor(median(r0)) + 1`` and we report
  ``floor(median(r))`` and ``mean(r)``: the same numbers.

Every pass over the matrix runs on chunks of query rows so that a
5000 x 25000 COCO 5K matrix is handled in bounded extra memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

PROTOCOLS = ("default", "coco1k", "coco5k")
RECALL_KS = (1, 5, 10)
# Upper bound on elements of one temporary (chunk of queries x gallery).
_CHUNK_ELEMENTS = 1 << 22


def _chunks(n_rows: int, n_cols: int) -> Iterator[slice]:
  """Row slices such that one chunk holds about _CHUNK_ELEMENTS entries."""
  step = max(1, _CHUNK_ELEMENTS // max(n_cols, 1))
  for start in range(0, n_rows, step):
    yield slice(start, min(start + step, n_rows))


def _check_finite(rows: np.ndarray) -> None:
  # A NaN compares false with everything and would silently get rank 1.
  if np.issubdtype(rows.dtype, np.floating) and np.isnan(rows).any():
    raise ValueError("scores contain NaN; ranks would be meaningless. "
                     "Check the model outputs before evaluating.")


def _check_scores(scores: Any, k: int) -> np.ndarray:
  """Validates a (n_img, k * n_img) score matrix and returns it as ndarray."""
  scores = np.asarray(scores)
  if scores.ndim != 2:
    raise ValueError(f"scores must be 2-D (n_img, n_txt); got shape "
                     f"{scores.shape}.")
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k (captions per image) must be a positive int; got "
                     f"{k!r}.")
  n_img, n_txt = scores.shape
  if n_img == 0 or n_txt != k * n_img:
    raise ValueError(
        f"scores has shape {scores.shape} but k={k} captions per image "
        f"needs n_txt == k * n_img (= {k * n_img}); caption c must belong "
        f"to image c // k. Pass the right k or the full caption set.")
  return scores


def _target_ranks(rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """1-based rank of column targets[q] in row q under the stable tie rule."""
  _check_finite(rows)
  q = np.arange(rows.shape[0])
  true_score = rows[q, targets][:, None]
  ahead = rows > true_score
  # Equal scores at a lower gallery index come first (stable sort order).
  ahead |= (rows == true_score) & (
      np.arange(rows.shape[1])[None, :] < targets[:, None])
  return 1 + ahead.sum(axis=1)


def _summarize(ranks: np.ndarray, return_ranks: bool) -> dict[str, Any]:
  """R@1/5/10 (percent), medr and meanr from 1-based ranks (SCAN rules)."""
  out: dict[str, Any] = {
      f"r{kk}": float(100.0 * np.mean(ranks <= kk)) for kk in RECALL_KS}
  # floor(median(rank1)) == floor(median(rank0)) + 1, see module docstring.
  out["medr"] = float(np.floor(np.median(ranks)))
  out["meanr"] = float(np.mean(ranks))
  if return_ranks:
    out["ranks"] = ranks
  return out


def i2t_ranks(scores: Any, k: int = 5) -> np.ndarray:
  """Per image, the 1-based rank of its best-ranked caption among all."""
  scores = _check_scores(scores, k)
  n_img, n_txt = scores.shape
  ranks = np.empty(n_img, dtype=np.int64)
  for sl in _chunks(n_img, n_txt):
    rows = scores[sl]
    own = k * np.arange(sl.start, sl.stop)[:, None] + np.arange(k)[None, :]
    # The best-ranked own caption is the highest-scoring one, the lowest
    # index among equal scores (argmax returns the first maximum), so one
    # rank computation per image suffices (SCAN takes the min over k ranks).
    best = np.take_along_axis(rows, own, axis=1).argmax(axis=1)
    ranks[sl] = _target_ranks(rows, own[np.arange(len(own)), best])
  return ranks


def t2i_ranks(scores: Any, k: int = 5) -> np.ndarray:
  """Per caption, the 1-based rank of its image among all images."""
  scores = _check_scores(scores, k)
  n_img, n_txt = scores.shape
  ranks = np.empty(n_txt, dtype=np.int64)
  for sl in _chunks(n_txt, n_img):
    rows = np.ascontiguousarray(scores[:, sl].T)
    ranks[sl] = _target_ranks(rows, np.arange(sl.start, sl.stop) // k)
  return ranks


def i2t(scores: Any, k: int = 5,
        return_ranks: bool = False) -> dict[str, Any]:
  """Image-to-text retrieval: r1, r5, r10 (%), medr, meanr [, ranks]."""
  return _summarize(i2t_ranks(scores, k), return_ranks)


def t2i(scores: Any, k: int = 5,
        return_ranks: bool = False) -> dict[str, Any]:
  """Text-to-image retrieval: r1, r5, r10 (%), medr, meanr [, ranks]."""
  return _summarize(t2i_ranks(scores, k), return_ranks)


def rsum(i2t_metrics: dict[str, float], t2i_metrics: dict[str, float]) -> float:
  """Sum of the six recalls R@1/5/10 in both directions."""
  return float(sum(m[f"r{kk}"] for m in (i2t_metrics, t2i_metrics)
                   for kk in RECALL_KS))


def _recall_metrics(scores: np.ndarray, k: int,
                    return_ranks: bool) -> dict[str, Any]:
  i2t_m = i2t(scores, k, return_ranks)
  t2i_m = t2i(scores, k, return_ranks)
  return {"i2t": i2t_m, "t2i": t2i_m, "rsum": rsum(i2t_m, t2i_m)}


def average_folds(folds: list[dict[str, Any]]) -> dict[str, Any]:
  """Per-metric mean over folds; rsum recomputed from the mean recalls.

  Averaging recalls then summing equals the mean of the per-fold rsums (the
  intent of SCAN's 5-fold evaluation; its final print of ``mean(ar) * 6``
  is a known bug that reports the i2t mean recall times six).
  """
  out: dict[str, Any] = {}
  for direction in ("i2t", "t2i"):
    keys = [kk for kk in folds[0][direction] if kk != "ranks"]
    out[direction] = {kk: float(np.mean([f[direction][kk] for f in folds]))
                      for kk in keys}
    if "ranks" in folds[0][direction]:
      out[direction]["ranks"] = np.concatenate(
          [f[direction]["ranks"] for f in folds])
  out["rsum"] = rsum(out["i2t"], out["t2i"])
  if "pmrp" in folds[0]:
    out["pmrp"] = {d: float(np.mean([f["pmrp"][d] for f in folds]))
                   for d in ("i2t", "t2i")}
  return out


def evaluate(scores: Any, k: int = 5, protocol: str = "default", *,
             fold_size: int = 1000, num_folds: int = 5,
             img_labels: Any = None, cap_labels: Any = None,
             zetas: Sequence[int] = (0, 1, 2),
             return_ranks: bool = False) -> dict[str, Any]:
  """Recall metrics (and PMRP if labels are given) under a protocol.

  Args:
    scores: (n_img, k * n_img) similarities, higher is better.
    k: captions per image.
    protocol: ``"default"`` scores the whole matrix; ``"coco1k"`` splits it
      into ``num_folds`` sequential folds of ``fold_size`` images (and their
      ``k * fold_size`` captions), evaluates each fold alone and averages
      every metric over folds (SCAN's ``fold5``; rsum is recomputed from the
      averaged recalls); ``"coco5k"`` is ``"default"`` after checking that
      the matrix holds exactly ``num_folds * fold_size`` images.
    fold_size, num_folds: COCO test split geometry (1000 x 5); tests shrink it.
    img_labels, cap_labels: optional multi-hot labels for PMRP (see `pmrp`).
    zetas: PMRP Hamming thresholds.
    return_ranks: also return the raw 1-based ranks (fold-local for coco1k).

  Returns:
    ``{"i2t": {r1, r5, r10, medr, meanr}, "t2i": {...}, "rsum": float}`` and
    ``"pmrp": {"i2t": float, "t2i": float}`` when img_labels is given.
  """
  scores = _check_scores(scores, k)
  if protocol == "coco1k":
    folds = []
    for im, tx in protocol_folds(scores.shape[0], k, protocol, fold_size=fold_size,
                                 num_folds=num_folds):
      folds.append(evaluate(
          scores[im, tx], k, "default",
          img_labels=None if img_labels is None else np.asarray(img_labels)[im],
          cap_labels=None if cap_labels is None else np.asarray(cap_labels)[tx],
          zetas=zetas, return_ranks=return_ranks))
    return average_folds(folds)
  protocol_folds(scores.shape[0], k, protocol, fold_size=fold_size, num_folds=num_folds)
  out = _recall_metrics(scores, k, return_ranks)
  if img_labels is not None:
    out["pmrp"] = pmrp(scores, img_labels, cap_labels, zetas, k=k)
  return out


def protocol_folds(n_img: int, k: int, protocol: str, *, fold_size: int = 1000,
                   num_folds: int = 5) -> list[tuple[slice, slice]]:
  """(image rows, caption columns) of each part a protocol evaluates alone.

  ``"default"`` and ``"coco5k"``: one part, everything; ``"coco1k"``: ``num_folds``
  sequential folds of ``fold_size`` images and their ``k * fold_size`` captions. Raises
  ValueError for an unknown protocol, or a COCO protocol on a split that is not
  ``num_folds * fold_size`` images.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown protocol {protocol!r}; expected one of "
                     f"{PROTOCOLS}.")
  if protocol in ("coco1k", "coco5k") and n_img != num_folds * fold_size:
    raise ValueError(
        f"protocol {protocol!r} needs exactly {num_folds} x {fold_size} = "
        f"{num_folds * fold_size} images (the COCO 5K test split) but scores "
        f"has {n_img}; use protocol='default' for other splits.")
  if protocol != "coco1k":
    return [(slice(0, n_img), slice(0, k * n_img))]
  return [(slice(f * fold_size, (f + 1) * fold_size),
           slice(k * f * fold_size, k * (f + 1) * fold_size)) for f in range(num_folds)]


def summarize_ranks(i2t_ranks_: np.ndarray, t2i_ranks_: np.ndarray) -> dict[str, Any]:
  """``{"i2t": {r1, r5, r10, medr, meanr}, "t2i": {...}, "rsum"}`` of 1-based ranks."""
  i2t_m = _summarize(np.asarray(i2t_ranks_), False)
  t2i_m = _summarize(np.asarray(t2i_ranks_), False)
  return {"i2t": i2t_m, "t2i": t2i_m, "rsum": rsum(i2t_m, t2i_m)}


def two_stage_ranks(candidates: Any, exact: Any, targets: Any,
                    first_ranks: Any) -> np.ndarray:
  """Per query, the 1-based rank of its best-ranked target under two-stage ranking.

  The ranking of a query is its shortlist (``candidates``, the top K gallery items of a
  first-stage score) in the order of the ``exact`` score (ties: lower gallery index first,
  this module's rule), followed by every other item in first-stage order. A target in the
  shortlist therefore has rank ``1 + #{j in shortlist: exact_j > exact_t, or equal with
  j < t}`` (at most K); a target outside it keeps its first-stage rank (more than K, since
  the shortlist is the first stage's top K under the same tie rule).

  Args:
    candidates: (Q, K) int gallery indices of each query's shortlist.
    exact: (Q, K) the exact scores of those pairs.
    targets: (Q, T) int gallery indices of each query's true matches (T = captions per
      image for image queries, 1 for caption queries).
    first_ranks: (Q, T) their 1-based ranks under the first-stage score over the whole
      gallery (same tie rule).

  Returns (Q,) int64, the minimum over a query's targets (as ``i2t_ranks`` / ``t2i_ranks``).
  With K = the gallery size this equals the exact ranks. Raises ValueError on NaN exact
  scores, or a target outside the shortlist whose first-stage rank is K or less (the
  shortlist was not that score's top K).
  """
  cand, exact = np.asarray(candidates), np.asarray(exact)
  targets, first_ranks = np.asarray(targets), np.asarray(first_ranks)
  _check_finite(exact)
  hit = cand[:, None, :] == targets[:, :, None]                       # (Q, T, K)
  found = hit.any(-1)
  own = np.take_along_axis(exact, hit.argmax(-1), 1)[..., None]       # (Q, T, 1)
  ahead = (exact[:, None, :] > own) | ((exact[:, None, :] == own)
                                       & (cand[:, None, :] < targets[..., None]))
  if np.any(~found & (first_ranks <= cand.shape[1])):
    raise ValueError("two_stage_ranks: a target outside the shortlist has a first-stage "
                     "rank within K; candidates must be the first stage's top K")
  return np.where(found, 1 + ahead.sum(-1), first_ranks).min(1).astype(np.int64)


# ---------------------------------------------------------------------------
# R-Precision and PCME's Plausible-Match R-Precision.


def _r_precision_rows(rows: np.ndarray, relevant: np.ndarray,
                      sorted_rows: np.ndarray | None = None) -> np.ndarray:
  """Per-query R-Precision (fraction in [0, 1]); NaN where R == 0.

  The top-R set uses the module's stable tie rule: items scoring above the
  R-th largest score, then the lowest-index items tied with it. Finding the
  R-th largest value needs one row sort (R differs per row, so a single
  np.partition cannot serve all rows); callers reuse `sorted_rows`.
  """
  n = rows.shape[1]
  if sorted_rows is None:
    _check_finite(rows)
    sorted_rows = np.sort(rows, axis=1)
  num_rel = relevant.sum(axis=1)
  kth = np.take_along_axis(
      sorted_rows, (n - np.maximum(num_rel, 1))[:, None], axis=1)
  above = rows > kth
  slots = num_rel - above.sum(axis=1)  # >= 1 whenever num_rel >= 1
  tied = rows == kth
  in_top = above | tied
  # Only rows with more ties at the threshold than free slots need the
  # index-ordered cut; the cumsum is costly, so run it on those rows alone.
  surplus = np.flatnonzero(tied.sum(axis=1) > slots)
  if surplus.size:
    tie_pos = np.cumsum(tied[surplus], axis=1)
    in_top[surplus] = above[surplus] | (
        tied[surplus] & (tie_pos <= slots[surplus, None]))
  hits = (relevant & in_top).sum(axis=1)
  return np.where(num_rel > 0, hits / np.maximum(num_rel, 1), np.nan)


def r_precision(scores: Any, positive_mask: Any) -> float:
  """Standard R-Precision in percent from a boolean relevance matrix.

  For each query row, R = number of relevant gallery items and the score is
  (# relevant among the top R retrieved) / R; the result is the mean over
  queries with R > 0 (queries with no relevant item are skipped), times 100.
  NaN if no query has a relevant item.
  """
  scores = np.asarray(scores)
  mask = np.asarray(positive_mask, dtype=bool)
  if scores.ndim != 2 or mask.shape != scores.shape:
    raise ValueError(f"positive_mask shape {mask.shape} must equal the 2-D "
                     f"scores shape {scores.shape}.")
  per_query = np.concatenate(
      [_r_precision_rows(scores[sl], mask[sl])
       for sl in _chunks(*scores.shape)])
  return _nanmean_percent(per_query)


def _nanmean_percent(values: np.ndarray) -> float:
  valid = values[~np.isnan(values)]
  return float(100.0 * valid.mean()) if valid.size else float("nan")


def _check_labels(labels: Any, n: int, name: str) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.shape[0] != n:
    raise ValueError(f"{name} must be multi-hot of shape ({n}, n_classes); "
                     f"got {labels.shape}.")
  if not np.isin(labels, (0, 1)).all():
    raise ValueError(f"{name} must contain only 0/1 (multi-hot) values.")
  return labels.astype(np.float32)


def _pmrp_direction(rows_of, num_queries: int, q_labels: np.ndarray,
                    g_labels: np.ndarray, q_owner: np.ndarray,
                    g_owner: np.ndarray, zetas: Sequence[int],
                    true_match_plausible: bool,
                    drop_unlabeled: bool) -> np.ndarray:
  """Per-query, per-zeta plausible R-Precision, shape (n_q, len(zetas))."""
  g_keep = g_labels.any(axis=1) if drop_unlabeled else np.ones(
      len(g_labels), bool)
  g_lab, g_own = g_labels[g_keep], g_owner[g_keep]
  g_count = g_lab.sum(axis=1)
  out = np.full((num_queries, len(zetas)), np.nan)
  for sl in _chunks(num_queries, len(g_lab)):
    rows = rows_of(sl)[:, g_keep]
    _check_finite(rows)
    sorted_rows = np.sort(rows, axis=1)  # shared by every zeta
    q_lab = q_labels[sl]
    # Hamming distance of binary codes: |q| + |g| - 2 q.g (exact in float32
    # for fewer than 2**24 classes); PCME's prepare_data sums |q - g|.
    dist = q_lab.sum(axis=1)[:, None] + g_count[None, :] - 2.0 * (
        q_lab @ g_lab.T)
    true = q_owner[sl][:, None] == g_own[None, :]
    for z, zeta in enumerate(zetas):
      plausible = dist <= zeta
      if true_match_plausible:
        plausible |= true
      out[sl, z] = _r_precision_rows(rows, plausible, sorted_rows)
  if drop_unlabeled:
    out[~q_labels.any(axis=1)] = np.nan
  return out


def pmrp_per_zeta(scores: Any, img_labels: Any, cap_labels: Any = None,
                  zetas: Sequence[int] = (0, 1, 2), *, k: int = 5,
                  true_match_plausible: bool = True,
                  drop_unlabeled: bool = True) -> dict[str, dict[int, float]]:
  """PMRP (percent) for each zeta, both directions: {"i2t": {zeta: v}, ...}.

  See `pmrp` for the definition.
  """
  scores = _check_scores(scores, k)
  n_img, n_txt = scores.shape
  img_lab = _check_labels(img_labels, n_img, "img_labels")
  if cap_labels is None:  # PCME: a caption carries its image's classes
    cap_labels = np.repeat(img_lab, k, axis=0)
  cap_lab = _check_labels(cap_labels, n_txt, "cap_labels")
  if cap_lab.shape[1] != img_lab.shape[1]:
    raise ValueError(f"img_labels has {img_lab.shape[1]} classes but "
                     f"cap_labels has {cap_lab.shape[1]}.")
  zetas = tuple(int(z) for z in zetas)
  if not zetas or min(zetas) < 0:
    raise ValueError(f"zetas must be non-negative ints; got {zetas}.")
  img_owner, cap_owner = np.arange(n_img), np.arange(n_txt) // k
  opts = dict(zetas=zetas, true_match_plausible=true_match_plausible,
              drop_unlabeled=drop_unlabeled)
  per_query = {
      "i2t": _pmrp_direction(lambda sl: scores[sl], n_img, img_lab, cap_lab,
                             img_owner, cap_owner, **opts),
      "t2i": _pmrp_direction(lambda sl: scores[:, sl].T, n_txt, cap_lab,
                             img_lab, cap_owner, img_owner, **opts),
  }
  return {d: {z: _nanmean_percent(v[:, i]) for i, z in enumerate(zetas)}
          for d, v in per_query.items()}


def pmrp(scores: Any, img_labels: Any, cap_labels: Any = None,
         zetas: Sequence[int] = (0, 1, 2), *, k: int = 5,
         true_match_plausible: bool = True,
         drop_unlabeled: bool = True) -> dict[str, float]:
  """PCME's Plausible-Match R-Precision (percent), i2t and t2i.

  For a query, the plausible matches are the gallery items whose multi-hot
  label vector lies within Hamming distance ``zeta`` of the query's; with R
  their number in the gallery, the score is (# plausible in the top R) / R.
  It is averaged over queries, then over ``zetas`` (naver-ai/pcme
  ``evaluate_pmrp_coco.py``: thresholds 0, 1, 2 and a mean over all of them).

  Choices, following the official code where it is explicit:
    * cap_labels=None gives each caption its image's labels, as PCME does
      for COCO (captions inherit the instance classes of their image).
    * true_match_plausible: the ground-truth pair always counts as plausible.
      Officially this holds implicitly (a caption's code equals its image's,
      distance 0); with separate caption labels we keep that intent.
    * drop_unlabeled: items with an all-zero label vector are removed from
      the queries and from the gallery, as PCME keeps only images with at
      least one instance annotation.
    * Queries with R = 0 (possible only with true_match_plausible=False) are
      left out of the mean (officially they would give NaN); a direction
      with no valid query reports NaN.
    * The gallery is the whole matrix. (PCME's ranking dump with topk=-1
      slices ``[:topk]`` and so drops the last-ranked item; negligible.)
    * Ties follow the stable rule of this module; PCME's torch sort is
      unspecified on ties.
  """
  per_zeta = pmrp_per_zeta(scores, img_labels, cap_labels, zetas, k=k,
                           true_match_plausible=true_match_plausible,
                           drop_unlabeled=drop_unlabeled)
  return {d: float(np.mean(list(v.values()))) for d, v in per_zeta.items()}


def recall_by_bins(values: Any, ranks: Any, num_bins: int = 10, k: int = 1) -> dict[str, list]:
  """R@k of queries grouped into equal-count bins of ``values`` (e.g. PCME uncertainty).

  Queries are sorted by value (stable), split into ``num_bins`` near-equal consecutive groups
  (``np.array_split``); per bin returns the mean value and the percentage of ranks <= k.
  PCME fig. 5 reads recall against these uncertainty levels.
  """
  values, ranks = np.asarray(values, np.float64), np.asarray(ranks)
  if values.shape != ranks.shape or values.ndim != 1:
    raise ValueError(f"recall_by_bins: values {values.shape} and ranks {ranks.shape} must be "
                     "equal-length vectors")
  num_bins = max(1, min(num_bins, values.size))
  groups = np.array_split(np.argsort(values, kind="stable"), num_bins)
  return {"mean_value": [float(values[g].mean()) for g in groups],
          "recall": [float(100.0 * np.mean(ranks[g] <= k)) for g in groups],
          "count": [int(g.size) for g in groups]}
