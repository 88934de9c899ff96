"""The ``uncertainty`` evaluator: recall by uncertainty bin (PCME fig. 5).

Each query's uncertainty comes from the method (``Method.uncertainty``: PCME's mean sigma^2
over dimensions). Queries are split into equal-count bins of uncertainty and R@1 is computed
per bin, for image queries (i2t) and caption queries (t2i). Writes ``eval/uncertainty.json``
(summary, curves, per-item values) and ``plots/uncertainty.png``. Encodes with the same seed
as ``retrieval``, so the items are the ones that were scored.
"""
import os
from typing import Any, Dict, Optional

import numpy as np

from xmr_jax.common.io import atomic_write_json
from xmr_jax.evaluation import engine, metrics
from xmr_jax.evaluation.context import EvalContext

NUM_BINS = 10


def check(method) -> Optional[str]:
  """Needs a method that declares ``Method.uncertainty``."""
  if method.uncertainty is None:
    return f"method {method.name!r} declares no per-item uncertainty (Method.uncertainty)"
  return None


def run(ctx: EvalContext, num_bins: int = NUM_BINS) -> Dict[str, Any]:
  """Computes, writes and returns ``{"summary", "recall_by_bin"}``."""
  data, unc = ctx.data, {}
  for side, batches in (("image", data.image_batches), ("text", data.text_batches)):
    reprs = engine.encode_all(ctx.method, ctx.variables, batches(), side, seed=ctx.seed)
    unc[side] = np.asarray(ctx.method.uncertainty(reprs), np.float64)
  curves = {
      "i2t (image uncertainty)": metrics.recall_by_bins(
          unc["image"], metrics.i2t_ranks(ctx.scores, data.k), num_bins),
      "t2i (caption uncertainty)": metrics.recall_by_bins(
          unc["text"], metrics.t2i_ranks(ctx.scores, data.k), num_bins)}
  summary = {side: {"mean": float(u.mean()), "p10": float(np.percentile(u, 10)),
                    "p50": float(np.percentile(u, 50)), "p90": float(np.percentile(u, 90))}
             for side, u in unc.items()}
  out = {"summary": summary, "recall_by_bin": curves}
  if ctx.workdir is not None:
    from xmr_jax import plots  # matplotlib only when plotting
    atomic_write_json(os.path.join(ctx.workdir, "eval", "uncertainty.json"),
                      dict(out, per_item={k: v.round(6).tolist() for k, v in unc.items()}))
    plots.plot_recall_by_bins(curves, os.path.join(ctx.workdir, "plots", "uncertainty.png"),
                              title=f"{ctx.method.name}: R@1 by uncertainty")
  return out
