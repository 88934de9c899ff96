"""Trained workdirs: ``--mode=eval`` on one, and ``--mode=eval --ensemble=W1,W2`` over several.

A workdir holds ``config.json`` (the config it was trained with) and orbax checkpoints
(``checkpoints/``, ``best/``). This module restores variables from them into evaluation
contexts; the evaluation itself is ``xmr_jax.evaluation``.
"""
import json
import os
import sys
from typing import Any, Dict, Mapping, Optional, Sequence

import ml_collections
import numpy as np
import jax

from xmr_jax import evaluation
from xmr_jax.common.errors import InputError, WorkdirError
from xmr_jax.evaluation import ensemble, rerank
from xmr_jax.training import checkpoints, identity, loop, state as state_lib


def config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
  """The ConfigDict a workdir was trained with; WorkdirError when it has none."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise WorkdirError(f"{path} not found: {workdir} is not a trained xmr_jax workdir (give "
                       f"--config with --mode=eval, or train it first)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_variables(config, workdir: str, rebuild_tokenizer: bool = False):
  """(dataset, method, variables) of ``workdir``'s best checkpoint (else its latest).

  The dataset is opened with the workdir's own vocabularies (``identity``), never ones
  rebuilt from the data; with ``rebuild_tokenizer``, a workdir trained before workdirs kept
  theirs gets the one built from the data stored.

  Raises:
    WorkdirError: the workdir holds no checkpoint, or no tokenizer (see
      ``identity.vocabularies_for``).
    ConfigError: ``config`` differs from ``W/config.json`` in a key the checkpoint cannot
      serve (``identity.check_config``).
  """
  # Checked before a checkpoint manager exists: creating one writes directories.
  if not identity.has_checkpoint(workdir):
    raise WorkdirError(f"{workdir} holds no checkpoint to evaluate; train it first")
  identity.check_config(config, workdir, "eval")
  vocabularies = identity.vocabularies_for(workdir, rebuild_tokenizer)
  ds, method, _, _, state = loop.setup(config, vocabularies)
  identity.check_feature_shape(workdir, ds)
  if vocabularies is None:
    identity.save(workdir, ds)
    print(f"xmr_jax: stored the tokenizer built from {ds.data_dir} in {workdir}",
          file=sys.stderr, flush=True)
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


def evaluate_workdir(config, workdir: str, rebuild_tokenizer: bool = False) -> Dict[str, Any]:
  """``--mode=eval``: the config's evaluators on ``workdir``'s best checkpoint (one stderr
  line when the evaluated split is not data the workdir was trained with)."""
  ds, method, variables = restore_variables(config, workdir, rebuild_tokenizer)
  identity.announce_data(workdir, ds, config.eval.split)
  ctx = evaluation.EvalContext(method, variables, ds, config.eval.split, config.eval,
                               seed=config.seed, workdir=workdir,
                               shortlist=shortlist_context(config))
  evaluation.run_evals(config.evals, ctx)
  return ctx.results


def shortlist_context(config) -> Optional[evaluation.EvalContext]:
  """Two-stage ranking's first stage when ``config.eval.shortlist`` names a workdir: that
  workdir restored with its own ``config.json`` (best checkpoint), as a context on
  ``config.eval.split``; None for exact scoring or ``shortlist='own'``. Whether it can
  serve (a global embedding, the same data) is checked by ``evaluation.rerank``.

  Raises WorkdirError / ConfigError as :func:`restore_variables`.
  """
  path = config.eval.get("shortlist", "")
  if not rerank.enabled(config.eval) or path == rerank.OWN:
    return None
  stored = config_from_workdir(path)
  ds, method, variables = restore_variables(stored, path)
  return evaluation.EvalContext(method, variables, ds, config.eval.split, stored.eval,
                                seed=stored.seed)


# What an ensemble reads of a config beyond each member's own: the evaluation settings.
ENSEMBLE_KEYS = ("eval",)


def check_ensemble(workdirs: Sequence[str], out_workdir: str,
                   overrides: Mapping[str, Any]) -> None:
  """InputError for a member listed twice, an output workdir that is one of the members (its
  own results would be overwritten) or a ``--config.<key>`` override an ensemble does not read (only ``eval.*``:
  every member is evaluated with its own ``config.json`` and the retrieval evaluator)."""
  out = os.path.realpath(out_workdir)
  real = [os.path.realpath(w) for w in workdirs]
  twice = sorted({w for w, r in zip(workdirs, real) if real.count(r) > 1})
  if twice:     # the mean would silently weight that member double
    raise InputError(f"--ensemble lists {', '.join(twice)} more than once; each member "
                     f"counts once in the mean of the scores. List every workdir once")
  for w in workdirs:
    if os.path.realpath(w) == out:
      raise InputError(f"--workdir={out_workdir} is also an ensemble member; its own "
                       f"eval/results.json would be overwritten. Give the ensemble a workdir "
                       f"of its own")
  two_stage = sorted(k for k in overrides if k in ("eval.rerank_k", "eval.shortlist"))
  if two_stage:
    raise InputError(f"--ensemble averages every pair's score of its members; two-stage "
                     f"ranking ({', '.join('--config.' + k for k in two_stage)}) is for one "
                     f"workdir at a time. Remove it")
  unread = sorted(k for k in overrides if not any(k.startswith(p + ".") for p in ENSEMBLE_KEYS))
  if unread:
    raise InputError(f"--ensemble reads each member's own config.json; of --config it applies "
                     f"only eval.* overrides (e.g. --config.eval.split, "
                     f"--config.eval.protocol), not {', '.join('--config.' + k for k in unread)}."
                     f" Remove them")


def evaluate_ensemble(workdirs: Sequence[str], out_workdir: str,
                      split: Optional[str] = None,
                      overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """Mean score matrix of several trained workdirs (best checkpoints), evaluated as one.

  Each member uses its own ``config.json`` with the ``eval.*`` ``overrides`` applied (e.g.
  ``{"eval.protocol": "coco1k"}``); ``split`` defaults to the first member's ``eval.split``.
  Results go to ``out_workdir/eval/results.json``.

  Raises InputError as :func:`check_ensemble` says, or when members differ in their data.
  """
  overrides = dict(overrides or {})
  check_ensemble(workdirs, out_workdir, overrides)
  members, config = [], None
  for w in workdirs:
    config = config_from_workdir(w)
    for key, value in overrides.items():
      config.eval[key.split(".", 1)[1]] = value
    ds, method, variables = restore_variables(config, w)
    identity.announce_data(w, ds, split or config.eval.split)
    ctx = evaluation.EvalContext(method, variables, ds, split or config.eval.split,
                                 config.eval, seed=config.seed)
    label = f"{method.name}:{os.path.basename(os.path.normpath(w))}"
    members.append(ensemble.Member(label, w, ctx))
  return ensemble.evaluate_ensemble(members, out_workdir, config.eval.protocol)
