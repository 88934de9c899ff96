"""Trained workdirs: ``--mode=eval`` on one, and ``--mode=eval --ensemble=W1,W2`` over several.

A workdir holds ``config.json`` (the config it was trained with) and orbax checkpoints
(``checkpoints/``, ``best/``). This module restores variables from them into evaluation
contexts; the evaluation itself is ``xmr_jax.evaluation``.
"""
import json
import os
from typing import Any, Dict, Optional, Sequence

import ml_collections
import numpy as np
import jax

from xmr_jax import evaluation
from xmr_jax.common.errors import WorkdirError
from xmr_jax.evaluation import ensemble
from xmr_jax.training import checkpoints, loop, state as state_lib


def config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
  """The ConfigDict a workdir was trained with; WorkdirError when it has none."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise WorkdirError(f"{path} not found: {workdir} is not a trained xmr_jax workdir (give "
                       f"--config with --mode=eval, or train it first)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_variables(config, workdir: str):
  """(dataset, method, variables) of ``workdir``'s best checkpoint (else its latest).

  Raises WorkdirError when the workdir holds no checkpoint.
  """
  # Checked before a checkpoint manager exists: creating one writes directories.
  if not any(os.path.isdir(os.path.join(workdir, d)) for d in ("best", "checkpoints")):
    raise WorkdirError(f"{workdir} holds no checkpoint to evaluate; train it first")
  ds, method, _, _, state = loop.setup(config)
  like = jax.tree.map(np.asarray, state_lib.variables_of(state))
  ckpt = checkpoints.Checkpointer(workdir, config.train.max_to_keep)
  try:
    variables = ckpt.restore_best(like)
    if variables is None:
      restored = ckpt.restore(state)
      if restored is None:
        raise WorkdirError(f"{workdir} holds no checkpoint to evaluate; train it first")
      variables = state_lib.variables_of(restored[0])
  finally:
    ckpt.close()
  return ds, method, variables


def evaluate_workdir(config, workdir: str) -> Dict[str, Any]:
  """``--mode=eval``: the config's evaluators on ``workdir``'s best checkpoint."""
  ds, method, variables = restore_variables(config, workdir)
  ctx = evaluation.EvalContext(method, variables, ds, config.eval.split, config.eval,
                               seed=config.seed, workdir=workdir)
  evaluation.run_evals(config.evals, ctx)
  return ctx.results


def evaluate_ensemble(workdirs: Sequence[str], out_workdir: str,
                      split: Optional[str] = None) -> Dict[str, Any]:
  """Mean score matrix of several trained workdirs (best checkpoints), evaluated as one.

  Each member uses its own ``config.json``; ``split`` defaults to the first member's
  ``eval.split``. Results go to ``out_workdir/eval/results.json``.
  """
  members, config = [], None
  for w in workdirs:
    config = config_from_workdir(w)
    ds, method, variables = restore_variables(config, w)
    ctx = evaluation.EvalContext(method, variables, ds, split or config.eval.split,
                                 config.eval, seed=config.seed)
    label = f"{method.name}:{os.path.basename(os.path.normpath(w))}"
    members.append(ensemble.Member(label, w, ctx))
  return ensemble.evaluate_ensemble(members, out_workdir, config.eval.protocol)
