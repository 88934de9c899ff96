"""Evaluation: the tiled scorer (``engine``), metrics, and the evaluators.

An evaluator is a plain module with ``check(method) -> Optional[str]`` (why it cannot run for
this method, or None) and ``run(ctx: EvalContext)`` (computes, writes under ``ctx.workdir``,
returns its results). A config lists the evaluators to run after training in ``config.evals``
(big_vision's ``config.evals`` idea); ``retrieval`` comes first, the others read its scores.
Ensembles of trained workdirs are ``evaluation.ensemble``; two-stage ranking
(``eval.rerank_k``: a dot-product shortlist, then the exact score on it) is ``evaluation.rerank``.
"""
from typing import Dict, Sequence

from xmr_jax.common.errors import ConfigError
from xmr_jax.evaluation import alignments, examples, rerank, retrieval, uncertainty
from xmr_jax.evaluation.context import EvalContext

EVALUATORS = {
    "retrieval": retrieval,
    "retrieval_examples": examples,
    "uncertainty": uncertainty,
    "alignments": alignments,
}


def check_evals(names: Sequence[str], method) -> None:
  """ConfigError naming the problem when ``config.evals`` cannot run for ``method``.

  Checked before training, so a typo or an evaluator the method cannot serve never costs a run.
  """
  names = list(names)
  if not names or names[0] != "retrieval":
    raise ConfigError(f"config.evals={names}: must start with 'retrieval' (the other "
                     f"evaluators read its scores); choose from {sorted(EVALUATORS)}")
  for name in names:
    if name not in EVALUATORS:
      raise ConfigError(f"config.evals: unknown evaluator {name!r}; choose from "
                       f"{sorted(EVALUATORS)}")
    why = EVALUATORS[name].check(method)
    if why:
      raise ConfigError(f"config.evals: evaluator {name!r} cannot run: {why}; remove it from "
                       f"config.evals")


def run_evals(names: Sequence[str], ctx: EvalContext) -> Dict[str, object]:
  """Runs the evaluators in order on one context; returns {name: its result}.

  With ``eval.rerank_k`` > 0 (``ctx.settings``) ``retrieval`` is two-stage ranking
  (``rerank.run``) and the evaluators that read the full score matrix are left out, said on
  stderr.
  """
  check_evals(names, ctx.method)
  if rerank.enabled(ctx.settings):
    rerank.announce_skipped(names)
    return {"retrieval": rerank.run(ctx)}
  return {name: EVALUATORS[name].run(ctx) for name in names}
