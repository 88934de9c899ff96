"""Ensembles: the mean of several trained methods' score matrices, evaluated as one.

This is how SGRAF's headline numbers are made (the mean of the SGR and SAF similarities; the
official repository has no code for it). The caller (``training.workdirs``) restores each
member's best variables into an :class:`EvalContext`; this module only scores and averages.
"""
import dataclasses
import os
from typing import Any, Dict, Sequence

from xmr_jax.common.errors import InputError
from xmr_jax.common.io import atomic_write_json
from xmr_jax.evaluation import retrieval
from xmr_jax.evaluation.context import EvalContext


@dataclasses.dataclass
class Member:
  """One trained workdir: its label (``method:workdir``), path and evaluation context."""
  label: str
  workdir: str
  ctx: EvalContext


def evaluate_ensemble(members: Sequence[Member], out_workdir: str,
                      protocol_name: str) -> Dict[str, Any]:
  """Averages the members' (n_img, n_txt) scores on their split; writes ``eval/results.json``.

  Raises InputError when the members' score matrices differ in shape (different datasets).
  """
  total, data, seconds = None, None, {"encode": 0.0, "score": 0.0}
  for m in members:
    scores, data, sec = retrieval.score_split(m.ctx, progress=True)
    if total is not None and scores.shape != total.shape:
      raise InputError(f"ensemble member {m.workdir} has {scores.shape} scores on split "
                       f"{m.ctx.split!r}, the first member {total.shape}: members must be "
                       f"trained on the same dataset")
    total = scores if total is None else total + scores
    for k in seconds:
      seconds[k] += sec[k]
  split = members[0].ctx.split
  res = retrieval.results_from_scores(
      total / len(members), data, split=split, protocol_name=protocol_name,
      method="ensemble(" + ",".join(m.label for m in members) + ")")
  res["seconds"] = seconds
  res["members"] = [m.workdir for m in members]
  atomic_write_json(os.path.join(out_workdir, "eval", "results.json"), res)
  print(retrieval.format_table(res), flush=True)
  return res
