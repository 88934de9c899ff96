"""``train_and_evaluate(config, workdir)``: the whole product for one method.

The loop owns the data iterator, checkpoints (resume = never having stopped), the NaN guard,
dev evaluation with best-checkpoint selection, metrics/TensorBoard logging, the final test
evaluation and the plots. ``main.py`` and notebooks both call this function.
"""
import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional

import jax
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from xmr_jax.data import datasets
from xmr_jax.evaluation import protocol
from xmr_jax.models.registry import get_method
from xmr_jax.training import checkpoints, parallel, state as state_lib, step as step_lib
from xmr_jax.training.logging import MetricsWriter, atomic_write_json


class TrainingDivergedError(RuntimeError):
  """Raised when the loss becomes NaN/Inf; the last good checkpoint is left untouched."""


def schedule(config, num_train_images: int, captions_per_image: int) -> Dict[str, int]:
  """Epochs -> steps: steps per epoch, total steps, lr-decay period.

  An epoch keeps the official repos' meaning, one pass over every training *caption*
  (k x N pairs). Our batches hold distinct images (xmr_jax.data.pipeline), so an epoch is
  k passes over the images: k * (N // B) steps. Presets with the papers' epoch counts thus
  take the papers' number of gradient steps.
  """
  bs = config.train.batch_size
  if num_train_images < bs:
    raise ValueError(f"train.batch_size={bs} exceeds the {num_train_images} training images")
  per_epoch = captions_per_image * (num_train_images // bs)
  total = (config.train.num_steps if config.train.num_steps > 0
           else round(per_epoch * config.train.num_epochs))
  return {"steps_per_epoch": per_epoch, "total_steps": int(total),
          "decay_steps": int(per_epoch * config.train.lr_decay_epochs)}


def setup(config, workdir: Optional[str] = None):
  """Dataset, method, optimiser, initial state and hparams for ``config``."""
  ds = datasets.load(config)
  method = get_method(config, ds.info)
  tx = state_lib.make_optimizer(config.train, method.unclipped_params)
  hparams = state_lib.hparams_from_config(config, method)
  sample = ds.sample_batch(config.train.batch_size)
  state = state_lib.init_state(method, sample, tx, config.seed)
  return ds, method, tx, hparams, state


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds a checkpoint), then evaluates on test."""
  os.makedirs(workdir, exist_ok=True)
  config_dict = config.to_dict()
  atomic_write_json(os.path.join(workdir, "config.json"), config_dict)
  ds, method, tx, hparams, state = setup(config, workdir)
  sched = schedule(config, ds.num_train_images, ds.k)
  ckpt = checkpoints.Checkpointer(workdir, config.train.max_to_keep)
  mesh = parallel.mesh_for(config)   # None on one device: the plain single-device step
  train_iter = ds.train_iterator(config.train.batch_size, seed=config.seed,
                                 **parallel.process_shard())
  restored = ckpt.restore(state)
  if restored is not None:
    state, data_state = restored
    train_iter.set_state(data_state)
    logging.info("resumed from step %d in %s", int(state["step"]), workdir)
  step_fn = step_lib.make_train_step(method, tx, decay_steps=sched["decay_steps"],
                                     decay_factor=config.train.lr_decay_factor,
                                     steps_per_epoch=sched["steps_per_epoch"], mesh=mesh)
  if mesh is not None:
    state, hparams = parallel.replicate(state, mesh), parallel.replicate(hparams, mesh)
    step_fn = parallel.placing_batches(step_fn, mesh, max(config.data.len_buckets))
  writer = MetricsWriter(workdir)
  try:
    state = _train(config, ds, method, state, hparams, step_fn, train_iter, ckpt, writer, sched,
                   config_dict)
    results = _final_eval(config, ds, method, state, ckpt, workdir)
  finally:
    writer.close()
    ckpt.close()
  return results


def _train(config, ds, method, state, hparams, step_fn, train_iter, ckpt, writer, sched,
           config_dict):
  total, per_epoch = sched["total_steps"], sched["steps_per_epoch"]
  step = int(state["step"])
  eval_period = max(1, config.train.eval_every_epochs * per_epoch)
  bar = tqdm(total=total, initial=step, desc=f"train {method.name}", unit="step",
             dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
  t_last, seen = time.time(), 0
  while step < total:
    batch = next(train_iter)
    state, metrics = step_fn(state, batch, hparams)
    step += 1
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
      bar.close()
      raise TrainingDivergedError(
          f"loss became {loss} at step {step} ({method.name}); training stopped. The last good "
          f"checkpoint (step {ckpt.latest_step()}) is intact in {ckpt.latest.directory}; lower "
          f"the learning rate or check the inputs of the batch read at that step.")
    seen += 1
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}")
    if step % config.train.log_every_steps == 0 or step == total:
      now = time.time()
      scalars = {k: float(v) for k, v in metrics.items()}
      scalars["steps_per_sec"] = seen / max(now - t_last, 1e-9)
      writer.write(step, scalars)
      t_last, seen = now, 0
    if step % config.train.checkpoint_every_steps == 0 or step == total:
      ckpt.save(step, state, train_iter.get_state(), config_dict)
    if step % eval_period == 0 or step == total:
      _dev_eval(config, ds, method, state, ckpt, writer, step)
  bar.close()
  return state


def _variables(state) -> Dict[str, Any]:
  v = {"params": state["params"]}
  if state["batch_stats"]:
    v["batch_stats"] = state["batch_stats"]
  return v


def _dev_eval(config, ds, method, state, ckpt, writer, step):
  res = protocol.evaluate(config, ds, method, _variables(state), split=config.data.dev_split,
                          max_images=config.eval.dev_max_images, protocol_name="default")
  writer.write(step, {"dev_rsum": res["rsum"], "dev_i2t_r1": res["i2t"]["r1"],
                      "dev_t2i_r1": res["t2i"]["r1"]})
  best = ckpt.best_info()
  if best is None or res["rsum"] > best["rsum"]:
    ckpt.save_best(step, _variables(state), {"step": step, "rsum": res["rsum"]})
  tqdm.write(f"step {step}: dev rsum {res['rsum']:.2f} (i2t R@1 {res['i2t']['r1']:.1f}, "
             f"t2i R@1 {res['t2i']['r1']:.1f})")


def _final_eval(config, ds, method, state, ckpt, workdir):
  variables = ckpt.restore_best(_variables(state)) or _variables(state)
  results = protocol.evaluate_and_write(config, ds, method, variables, workdir,
                                        split=config.eval.split)
  protocol.write_plots(config, ds, method, variables, workdir, results)
  return results


def evaluate_workdir(config, workdir: str) -> Dict[str, Any]:
  """``--mode=eval``: the best checkpoint of ``workdir`` on ``config.eval.split``."""
  ds, method, tx, hparams, state = setup(config, workdir)
  ckpt = checkpoints.Checkpointer(workdir, config.train.max_to_keep)
  try:
    variables = ckpt.restore_best(_variables(state))
    if variables is None:
      restored = ckpt.restore(state)
      if restored is None:
        raise FileNotFoundError(f"{workdir} holds no checkpoint to evaluate; train it first")
      variables = _variables(restored[0])
    return protocol.evaluate_and_write(config, ds, method, variables, workdir,
                                       split=config.eval.split)
  finally:
    ckpt.close()


def config_from_workdir(workdir: str):
  """The ConfigDict a workdir was trained with (its ``config.json``)."""
  import ml_collections
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: {workdir} is not a trained xmr_jax workdir")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def evaluate_ensemble(workdirs, out_workdir: str, split: Optional[str] = None) -> Dict[str, Any]:
  """Averages the score matrices of several trained workdirs (best checkpoints) and evaluates.

  This is how SGRAF's headline numbers were made (the mean of the SGR and SAF similarities; the
  official repository has no code for it). All members must share the dataset and split.
  """
  total, names, data, seconds = None, [], None, {"encode": 0.0, "score": 0.0}
  for w in workdirs:
    config = config_from_workdir(w)
    ds, method, _, _, state = setup(config)
    ckpt = checkpoints.Checkpointer(w, config.train.max_to_keep)
    variables = ckpt.restore_best(_variables(state))
    ckpt.close()
    if variables is None:
      raise FileNotFoundError(f"{w} holds no best checkpoint; train it first")
    split = split or config.eval.split
    scores, data_w, sec = protocol.score_split(config, ds, method, variables, split=split,
                                               progress=True)
    if total is not None and scores.shape != total.shape:
      raise ValueError(f"ensemble members disagree on the {split} split: {scores.shape} vs "
                       f"{total.shape}; they must be trained on the same dataset")
    total = scores if total is None else total + scores
    data = data_w
    names.append(f"{method.name}:{os.path.basename(os.path.normpath(w))}")
    for k in seconds:
      seconds[k] += sec[k]
  scores = total / len(workdirs)
  res = protocol.results_from_scores(scores, data, method="ensemble(" + ",".join(names) + ")",
                                     split=split, protocol_name=config.eval.protocol)
  res["seconds"] = seconds
  res["members"] = list(workdirs)
  atomic_write_json(os.path.join(out_workdir, "eval", "results.json"), res)
  print(protocol.format_table(res), flush=True)
  return res
