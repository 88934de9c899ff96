"""Two-stage ranking: a dot-product shortlist, then the method's exact score on it alone.

The exact evaluation scores every image against every caption (``engine.score_all``): 5
million pairs on Flickr30K's test split, 125 million on COCO 5K. For a method whose score is
not a dot product that is the whole cost. With ``eval.rerank_k = K`` the ``retrieval``
evaluator instead

1. takes each query's top K gallery items by a first-stage dot product (one jitted matrix
   product and ``lax.top_k`` per block of queries): the method's own global term
   (``eval.shortlist=own``, ``Method.global_embedding``: MMCA's <i0, c0>, PCME's mean
   cosine) or the global embedding of another trained workdir evaluated on the same data
   (``eval.shortlist=W``, e.g. a VSE++ workdir);
2. scores those K pairs per query, and nothing else, with the method's own ``score``
   (``engine.score_pairs``), in both directions: n_img x K pairs for image queries plus
   n_txt x K for caption queries;
3. ranks each query's shortlist by the exact score, and puts every other item after it in
   first-stage order (``metrics.two_stage_ranks``). R@k for k <= K is what the method's
   exact score ranks within the shortlist; a true match outside the shortlist counts as a
   miss at every k <= K. Ranks beyond K (and so ``medr`` / ``meanr`` when they involve
   them) are the first stage's, not the method's: ``beyond_k`` in each direction gives the
   percentage of queries whose true match is not in their shortlist.

Results go to ``W/eval/results_rerank.json`` with ``rerank``: K, the shortlist, the pairs
scored and the ratio to exact, and the seconds of each stage. There is no full score matrix,
so PMRP and the evaluators that read one (``retrieval_examples``, ``uncertainty``,
``alignments``) do not run. With K = the gallery size the ranks equal the exact ones.
"""
import functools
import os
import sys
import time
from typing import Any, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from xmr_jax.common.errors import ConfigError
from xmr_jax.common.io import atomic_write_json
from xmr_jax.evaluation import engine, metrics, retrieval
from xmr_jax.evaluation.context import EvalContext, check_same_data

OWN = "own"
RESULTS = "results_rerank.json"
_BLOCK = 256     # queries per first-stage call


def enabled(settings) -> bool:
  """Whether ``config.eval`` asks for two-stage ranking (``rerank_k`` > 0)."""
  return int(settings.get("rerank_k", 0) or 0) > 0


def check(settings, method) -> None:
  """ConfigError when ``eval.shortlist=own`` and ``method`` has no global dot-product term
  (``Method.global_embedding``); the static checks are ``training/config_check.py``'s."""
  if enabled(settings) and settings.shortlist == OWN and method.global_embedding is None:
    raise ConfigError(f"config.eval.shortlist='own': {method.name} has no dot-product global "
                      f"term to shortlist with; give --config.eval.shortlist=W, a trained "
                      f"workdir of a method with one (VSE++, PCME, MMCA) on the same data")


@functools.partial(jax.jit, static_argnames=("k",))
def _shortlist_block(queries, gallery, targets, *, k: int):
  scores = jnp.matmul(queries, gallery.T, precision=jax.lax.Precision.HIGHEST)   # (B, N)
  candidates = jax.lax.top_k(scores, k)[1]       # ties: the lower index first
  own = jnp.take_along_axis(scores, targets, 1)[..., None]                      # (B, T, 1)
  rows = jnp.arange(gallery.shape[0])
  ahead = (scores[:, None] > own) | ((scores[:, None] == own) & (rows < targets[..., None]))
  return candidates, 1 + ahead.sum(-1)


def shortlist(queries: np.ndarray, gallery: np.ndarray, targets: np.ndarray,
              k: int) -> Tuple[np.ndarray, np.ndarray]:
  """Each query's top ``k`` gallery rows by dot product, and its targets' first-stage ranks.

  Args:
    queries: (Q, D) float vectors; gallery: (N, D); targets: (Q, T) int gallery rows of
      each query's true matches; k: 1..N.

  Returns:
    (candidates (Q, k) int64, best first, ties by the lower row, as a stable descending
    sort; first_ranks (Q, T) int64, the 1-based rank of each target under the same order).
  """
  queries, gallery = np.asarray(queries, np.float32), jnp.asarray(gallery, jnp.float32)
  n = len(queries)
  padded_q, padded_t = engine.pad_rows((queries, np.asarray(targets, np.int32)), _BLOCK)
  out = [_shortlist_block(padded_q[s:s + _BLOCK], gallery, padded_t[s:s + _BLOCK], k=k)
         for s in range(0, len(padded_q), _BLOCK)]
  return tuple(np.concatenate([np.asarray(o[i]) for o in out])[:n].astype(np.int64)
               for i in (0, 1))


def check_shortlist(ctx: EvalContext) -> None:
  """Before anything is encoded: ConfigError when the first stage has no global embedding
  (``own`` on a method without one, or a shortlist workdir's method without one),
  InputError when the shortlist workdir evaluates other data than ``ctx``."""
  check(ctx.settings, ctx.method)
  src, name = ctx.shortlist, ctx.settings.shortlist
  if name == OWN:
    return
  if src is None:
    raise ValueError(f"eval.shortlist={name!r} names a workdir, but no shortlist context was "
                     f"restored (training.workdirs.shortlist_context)")
  if src.method.global_embedding is None:
    raise ConfigError(f"config.eval.shortlist={name}: its method {src.method.name} has no "
                      f"dot-product embedding to shortlist with; give a workdir of a method "
                      f"with one (VSE++, PCME, MMCA) trained on the same data, or "
                      f"--config.eval.shortlist=own")
  check_same_data(src, ctx, f"the shortlist workdir {name}", "the evaluated workdir",
                  "Its shortlist names caption and image rows of the evaluated split, so both "
                  "must read the same data; give a workdir trained on the same data",
                  ignore=("extras",))


def _first_stage(ctx: EvalContext, img: Any, txt: Any, progress: bool) -> Tuple[Any, Any, str]:
  """(image vectors, caption vectors, the first stage's method name) of ``ctx``'s split."""
  src = ctx.shortlist
  if ctx.settings.shortlist == OWN:
    key = ctx.method.global_embedding
    return img[key], txt[key], ctx.method.name
  key = src.method.global_embedding
  img, txt = retrieval.encode_split(src, src.dataset.eval_data(src.split,
                                                               src.settings.encode_batch_size),
                                    progress)
  return img[key], txt[key], src.method.name


def _direction(ctx: EvalContext, queries, gallery, q_vec, g_vec, targets, side: str,
               seconds: Dict[str, float], progress: bool) -> Tuple[np.ndarray, int]:
  """(two-stage ranks (Q,), K used) of one direction; adds to ``seconds``."""
  s = ctx.settings
  k = min(int(s.rerank_k), len(g_vec))
  t0 = time.time()
  candidates, first_ranks = shortlist(q_vec, g_vec, targets, k)
  t1 = time.time()
  exact = engine.score_pairs(ctx.method, ctx.variables, queries, gallery, candidates,
                             query_side=side, tile_queries=s.tile_images,
                             pairs_per_step=s.tile_texts,
                             length_groups=s.get("length_groups", 1), mesh=ctx.mesh,
                             progress=progress)
  seconds["shortlist"] += t1 - t0
  seconds["score"] += time.time() - t1
  if not np.all(np.isfinite(exact)):
    raise FloatingPointError(f"{ctx.method.name}: non-finite scores on split {ctx.split!r}")
  return metrics.two_stage_ranks(candidates, exact, targets, first_ranks), k


def _fold(ctx: EvalContext, img, txt, img_vec, txt_vec, per_image: int,
          seconds: Dict[str, float], progress: bool) -> Dict[str, Any]:
  """The summary of one protocol part (a coco1k fold, or the whole split)."""
  n_img, n_txt = len(img_vec), len(txt_vec)
  own_captions = per_image * np.arange(n_img)[:, None] + np.arange(per_image)[None, :]
  own_image = (np.arange(n_txt) // per_image)[:, None]
  i2t, k_i = _direction(ctx, img, txt, img_vec, txt_vec, own_captions, "image", seconds,
                        progress)
  t2i, k_t = _direction(ctx, txt, img, txt_vec, img_vec, own_image, "text", seconds, progress)
  out = metrics.summarize_ranks(i2t, t2i)
  out["i2t"]["beyond_k"] = float(100.0 * np.mean(i2t > k_i))
  out["t2i"]["beyond_k"] = float(100.0 * np.mean(t2i > k_t))
  out["pairs"] = n_img * k_i + n_txt * k_t
  return out


def evaluate(ctx: EvalContext, *, progress: bool = False) -> Dict[str, Any]:
  """Two-stage R@K, medr, meanr and rsum of ``ctx.split`` (module doc); fills
  ``ctx.data`` and ``ctx.results`` (``ctx.scores`` stays None: there is no full matrix).

  Raises ConfigError when the shortlist has no global embedding, InputError when the
  shortlist workdir evaluates other data, FloatingPointError on NaN/Inf exact scores.
  """
  check_shortlist(ctx)
  s = ctx.settings
  data = ctx.dataset.eval_data(ctx.split, s.encode_batch_size)
  t0 = time.time()
  img, txt = retrieval.encode_split(ctx, data, progress)
  t1 = time.time()
  img_vec, txt_vec, first_method = _first_stage(ctx, img, txt, progress)
  seconds = {"encode": t1 - t0, "encode_shortlist": time.time() - t1, "shortlist": 0.0,
             "score": 0.0}
  parts, exact_pairs = [], 0
  take = lambda tree, rows: jax.tree.map(lambda x: x[rows], tree)
  for im, tx in metrics.protocol_folds(len(img_vec), data.k, s.protocol):
    parts.append(_fold(ctx, take(img, im), take(txt, tx), img_vec[im], txt_vec[tx], data.k,
                       seconds, progress))
    exact_pairs += (im.stop - im.start) * (tx.stop - tx.start)
  res = parts[0] if len(parts) == 1 else metrics.average_folds(parts)
  pairs = sum(p["pairs"] for p in parts)
  res = {"method": ctx.method.name, "split": ctx.split, "protocol": s.protocol,
         "i2t": res["i2t"], "t2i": res["t2i"], "rsum": res["rsum"],
         "rerank": {"k": int(s.rerank_k), "shortlist": s.shortlist,
                    "shortlist_method": first_method, "pairs_scored": int(pairs),
                    "pairs_exact": int(exact_pairs), "pairs_ratio": exact_pairs / pairs},
         "seconds": seconds}
  ctx.scores, ctx.data, ctx.results = None, data, res
  return res


def format_table(res: Dict[str, Any]) -> str:
  """``retrieval.format_table`` of a two-stage result, with its K, shortlist and pairs."""
  r = res["rerank"]
  return (retrieval.format_table(res) + f"\ntwo-stage: K={r['k']} from {r['shortlist']} "
          f"({r['shortlist_method']}); true match beyond K: i2t {res['i2t']['beyond_k']:.1f}%"
          f", t2i {res['t2i']['beyond_k']:.1f}%; pairs scored {r['pairs_scored']:,} of "
          f"{r['pairs_exact']:,} ({r['pairs_ratio']:.1f}x fewer)")


def run(ctx: EvalContext) -> Dict[str, Any]:
  """The ``retrieval`` evaluator under ``eval.rerank_k``: evaluate, then write
  ``eval/results_rerank.json`` and print the table when there is a workdir."""
  res = evaluate(ctx, progress=ctx.workdir is not None)
  res["data"] = ctx.dataset.fingerprint(ctx.split)
  if ctx.workdir is not None:
    atomic_write_json(os.path.join(ctx.workdir, "eval", RESULTS), res)
    print(format_table(res), flush=True)
  return res


def announce_skipped(names: Sequence[str]) -> None:
  """One stderr line naming the evaluators of ``config.evals`` that two-stage ranking leaves
  out (they read the full score matrix), when there are any."""
  rest = [n for n in names if n != "retrieval"]
  if rest:
    print(f"xmr_jax: eval.rerank_k: two-stage ranking scores no full matrix, so "
          f"{', '.join(rest)} (which read one) do not run", file=sys.stderr, flush=True)
