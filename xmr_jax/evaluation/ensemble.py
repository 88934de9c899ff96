"""Ensembles: the mean of several trained methods' score matrices, evaluated as one.

This is how SGRAF's headline numbers are made (the mean of the SGR and SAF similarities; the
official repository has no code for it). The caller (``training.workdirs``) restores each
member's best variables into an :class:`EvalContext`; this module only scores and averages.
"""
import dataclasses
import os
from typing import Any, Dict, Sequence

from xmr_jax.common.io import atomic_write_json
from xmr_jax.evaluation import retrieval
from xmr_jax.evaluation.context import EvalContext, check_same_data


@dataclasses.dataclass
class Member:
  """One trained workdir: its label (``method:workdir``), path and evaluation context."""
  label: str
  workdir: str
  ctx: EvalContext


def check_compatible(members: Sequence[Member]) -> None:
  """InputError unless every member evaluates the same data as the first (``fingerprint``)."""
  first = members[0]
  for m in members[1:]:
    check_same_data(m.ctx, first.ctx, f"ensemble member {m.workdir}",
                    f"the first member {first.workdir}",
                    "Members' score matrices are averaged pair by pair, so they must share "
                    "the dataset, the split and the caption order")


def evaluate_ensemble(members: Sequence[Member], out_workdir: str,
                      protocol_name: str) -> Dict[str, Any]:
  """Averages the members' (n_img, n_txt) scores on their split; writes ``eval/results.json``.

  Raises InputError naming the member and what differs when the members do not share the
  dataset (location, captions in order, features), the split and its sizes.
  """
  check_compatible(members)
  total, data, seconds = None, None, {"encode": 0.0, "score": 0.0}
  for m in members:
    scores, data, sec = retrieval.score_split(m.ctx, progress=True)
    total = scores if total is None else total + scores
    for k in seconds:
      seconds[k] += sec[k]
  split = members[0].ctx.split
  res = retrieval.results_from_scores(
      total / len(members), data, split=split, protocol_name=protocol_name,
      method="ensemble(" + ",".join(m.label for m in members) + ")")
  res["seconds"] = seconds
  res["members"] = [m.workdir for m in members]
  res["data"] = members[0].ctx.dataset.fingerprint(split)
  atomic_write_json(os.path.join(out_workdir, "eval", "results.json"), res)
  print(retrieval.format_table(res), flush=True)
  return res
