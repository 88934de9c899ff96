"""The one trainer: ``--mode=train`` (one run) and ``--mode=sweep`` (K variants vmapped).

A :class:`Run` is everything one training needs: dataset, method, data mesh, state (stacked on
a leading variant axis for a sweep), jitted step, data iterator, checkpoints and metrics. The
same :func:`train` loop serves both modes: the NaN guard (per variant: a diverged variant
keeps its last finite parameters and the others go on; a single run stops), dev evaluation
with each variant's best parameters kept, checkpoints with resume (= never having stopped),
metrics/TensorBoard logging and a progress bar. ``train_and_evaluate`` then runs the config's
evaluators (``config.evals``) on the best parameters; ``sweep.run_sweep`` evaluates every
variant. ``main.py`` and notebooks call these functions.
"""
import dataclasses
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from xmr_jax import evaluation
from xmr_jax.common import mesh as mesh_lib
from xmr_jax.common.errors import ConfigError
from xmr_jax.common.io import atomic_write_json
from xmr_jax.data import datasets
from xmr_jax.evaluation import retrieval
from xmr_jax.models.registry import get_method, method_inputs
from xmr_jax.training import checkpoints, config_check, state as state_lib, step as step_lib
from xmr_jax.training.logging import MetricsWriter


class TrainingDivergedError(RuntimeError):
  """The loss became NaN/Inf in a single run; the checkpoints already saved are intact."""


def schedule(config, num_train_images: int, captions_per_image: int) -> Dict[str, int]:
  """Epochs -> steps: ``{steps_per_epoch, total_steps, decay_steps}``.

  An epoch keeps the official repos' meaning, one pass over every training *caption*
  (k x N pairs). Our batches hold distinct images (xmr_jax.data.pipeline), so an epoch is
  k passes over the images: k * (N // B) steps. Presets with the papers' epoch counts thus
  take the papers' number of gradient steps. Raises ConfigError when B exceeds N.
  """
  bs = config.train.batch_size
  if num_train_images < bs:
    raise ConfigError(f"train.batch_size={bs} exceeds the {num_train_images} training images")
  per_epoch = captions_per_image * (num_train_images // bs)
  total = (config.train.num_steps if config.train.num_steps > 0
           else round(per_epoch * config.train.num_epochs))
  return {"steps_per_epoch": per_epoch, "total_steps": int(total),
          "decay_steps": int(per_epoch * config.train.lr_decay_epochs)}


def setup(config):
  """(dataset, method, optimiser, hparams, initial state) for ``config``.

  The config's values and paths are checked first (``config_check``), the data is opened with
  only what the method reads (``Method.inputs``), and the config's evaluators are checked
  against the method before anything trains.
  """
  config_check.check_config(config)
  ds = datasets.open_dataset(config.data, needs=method_inputs(config), seed=config.seed)
  method = get_method(config, ds.info)
  evaluation.check_evals(config.evals, method)
  tx = state_lib.make_optimizer(config.train, method.unclipped_params)
  hparams = state_lib.hparams_from_config(config, method)
  sample = ds.sample_batch(config.train.batch_size)
  state = state_lib.init_state(method, sample, tx, config.seed)
  return ds, method, tx, hparams, state


@dataclasses.dataclass
class Run:
  """One training: a single run (``names`` None) or a sweep group of K stacked variants."""
  config: Any
  workdir: str
  ds: Any
  method: Any
  mesh: jax.sharding.Mesh
  names: Optional[List[str]]
  sched: Dict[str, int]
  hparams: Any
  state: Any
  step_fn: Callable
  place: Callable
  iterator: Any
  ckpt: checkpoints.Checkpointer
  writer: MetricsWriter
  record: Dict[str, Any]      # {"diverged": {variant: step}}, saved with every checkpoint
  step: int = 0

  @property
  def variant_names(self) -> List[Optional[str]]:
    """``[None]`` for a single run, else the sweep variants' names in stacking order."""
    return [None] if self.names is None else list(self.names)

  def variables(self, k: int = 0):
    """Flax variables of variant k (the run's own for a single run)."""
    state = self.state if self.names is None else jax.tree.map(lambda x: x[k], self.state)
    return state_lib.variables_of(state)


def start(config, workdir: str, variants: Optional[Sequence[Dict[str, Any]]] = None) -> Run:
  """Builds a :class:`Run`, resuming from ``workdir``'s latest checkpoint if it has one.

  ``variants`` (a sweep group): dicts with ``name``, optional ``hparams`` overrides and
  ``seed``; every variant reads the same batches (order from ``config.seed``).
  """
  ds, method, tx, hparams, state = setup(config)
  # Only now, with the config and data checked, is anything written into the workdir.
  os.makedirs(workdir, exist_ok=True)
  names = None if variants is None else [v["name"] for v in variants]
  if variants is not None:
    hparams = state_lib.stack_hparams(hparams, variants)
    state = state_lib.init_states(method, ds.sample_batch(config.train.batch_size), tx,
                                  [v.get("seed", config.seed) for v in variants])
  mesh = mesh_lib.train_mesh(config.train.get("num_devices", 0), config.train.batch_size)
  sched = schedule(config, ds.num_train_images, ds.k)
  ckpt = checkpoints.Checkpointer(workdir, config.train.max_to_keep, variants=names)
  iterator = ds.train_iterator(config.train.batch_size, seed=config.seed,
                               **mesh_lib.process_shard())
  restored = ckpt.restore(state)
  if restored is not None:
    state, data_state = restored
    iterator.set_state(data_state)
  step_fn = step_lib.make_train_step(
      method, tx, decay_steps=sched["decay_steps"], decay_factor=config.train.lr_decay_factor,
      steps_per_epoch=sched["steps_per_epoch"], mesh=mesh, stacked=names is not None)
  return Run(config=config, workdir=workdir, ds=ds, method=method, mesh=mesh, names=names,
             sched=sched, hparams=mesh_lib.replicate(hparams, mesh),
             state=mesh_lib.replicate(state, mesh), step_fn=step_fn,
             place=_placer(mesh, max(ds.len_buckets)), iterator=iterator,
             ckpt=ckpt, writer=MetricsWriter(workdir),
             record=ckpt.trainer_record() or {"diverged": {}}, step=ckpt.latest_step() or 0)


def _placer(mesh, text_len: int) -> Callable:
  """Host batch -> global arrays sharded over the mesh (multi-host: equal caption lengths)."""
  def place(batch):
    if jax.process_count() > 1:
      batch = mesh_lib.pad_text_to(batch, text_len)
    return mesh_lib.global_batch(batch, mesh)
  return place


def train(run: Run) -> Run:
  """Trains ``run`` to ``total_steps``: the loop of every mode (see the module docstring)."""
  c = run.config.train
  total, per_epoch = run.sched["total_steps"], run.sched["steps_per_epoch"]
  eval_period = max(1, round(run.config.train.eval_every_epochs * per_epoch))
  desc = f"train {run.method.name}" + ("" if run.names is None else f" x{len(run.names)}")
  bar = tqdm(total=total, initial=run.step, desc=desc, unit="step", dynamic_ncols=True,
             mininterval=1.0 if sys.stderr.isatty() else 30.0)
  t_last, seen = time.time(), 0
  try:
    while run.step < total:
      batch = run.place(next(run.iterator))
      run.state, metrics = run.step_fn(run.state, batch, run.hparams)
      run.step += 1
      seen += 1
      _guard(run, metrics)
      bar.update(1)
      if run.step % c.log_every_steps == 0 or run.step == total:
        now = time.time()
        _log(run, metrics, seen / max(now - t_last, 1e-9), bar)
        t_last, seen = now, 0
      if run.step % c.checkpoint_every_steps == 0 or run.step == total:
        run.ckpt.save(run.step, run.state, run.iterator.get_state(), run.config.to_dict(),
                      run.record)
      if run.step % eval_period == 0 or run.step == total:
        _dev_eval(run)
  finally:
    bar.close()
  return run


def _guard(run: Run, metrics) -> None:
  """Records newly diverged variants; a single run that diverged stops with its checkpoint."""
  alive = np.atleast_1d(np.asarray(metrics["alive"]))
  loss = np.atleast_1d(np.asarray(metrics["loss"]))
  for k, name in enumerate(run.variant_names):
    key = name or "run"
    if alive[k] or key in run.record["diverged"]:
      continue
    run.record["diverged"][key] = run.step
    if name is None:
      raise TrainingDivergedError(_diverged_message(run, float(loss[k])))
    tqdm.write(f"variant {name} diverged at step {run.step} (loss {float(loss[k])}); it keeps "
               f"its last finite parameters and is reported as diverged, the others go on")


def _diverged_message(run: Run, loss: float) -> str:
  saved = run.ckpt.latest_step()
  where = (f"The last checkpoint (step {saved}) is intact in {run.ckpt.latest.directory}"
           if saved is not None else
           f"No checkpoint was saved yet (the first is due at step "
           f"{run.config.train.checkpoint_every_steps})")
  return (f"loss became {loss} at step {run.step} ({run.method.name}); training stopped. "
          f"{where}. Lower the learning rate or check the inputs of the batch read at that "
          f"step.")


def _log(run: Run, metrics, steps_per_sec: float, bar) -> None:
  """Writes the step's metrics (per variant: ``name/variant``) and the speed."""
  scalars = {}
  for key, value in metrics.items():
    value = np.atleast_1d(np.asarray(value, np.float64))
    for k, name in enumerate(run.variant_names):
      scalars[key if name is None else f"{key}/{name}"] = float(value[k])
  scalars["steps_per_sec"] = steps_per_sec
  run.writer.write(run.step, scalars)
  if run.names is None:
    bar.set_postfix(loss=f"{scalars['loss']:.4f}")


def _dev_eval(run: Run) -> None:
  """Dev R@K of every live variant; each variant's best parameters are kept (by dev rsum)."""
  c = run.config
  for k, name in enumerate(run.variant_names):
    if (name or "run") in run.record["diverged"]:
      continue
    variables = run.variables(k)
    ctx = evaluation.EvalContext(run.method, variables, run.ds, c.data.dev_split, c.eval,
                                 seed=c.seed)
    res = retrieval.evaluate(ctx, max_images=c.eval.dev_max_images, protocol_name="default")
    tag = "" if name is None else f"/{name}"
    run.writer.write(run.step, {f"dev_rsum{tag}": res["rsum"],
                                f"dev_i2t_r1{tag}": res["i2t"]["r1"],
                                f"dev_t2i_r1{tag}": res["t2i"]["r1"]})
    best = run.ckpt.best_info(name)
    if best is None or res["rsum"] > best["rsum"]:
      run.ckpt.save_best(run.step, variables, {"step": run.step, "rsum": res["rsum"]}, name)
    tqdm.write(f"step {run.step}{'' if name is None else ' ' + name}: dev rsum "
               f"{res['rsum']:.2f} (i2t R@1 {res['i2t']['r1']:.1f}, t2i R@1 "
               f"{res['t2i']['r1']:.1f})")


def best_variables(run: Run, k: int = 0):
  """Variant k's best dev parameters, or its last (finite) parameters if never evaluated."""
  current = jax.tree.map(np.asarray, run.variables(k))
  return run.ckpt.restore_best(current, run.variant_names[k]) or current


def close(run: Run) -> None:
  """Closes the run's metrics writer and checkpoint managers."""
  run.writer.close()
  run.ckpt.close()


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """``--mode=train``: trains (resuming if ``workdir`` holds a checkpoint), then runs the
  config's evaluators on the best parameters; returns the ``retrieval`` results dict."""
  run = start(config, workdir)
  atomic_write_json(os.path.join(workdir, "config.json"), config.to_dict())
  try:
    train(run)
    ctx = evaluation.EvalContext(run.method, best_variables(run), run.ds, config.eval.split,
                                 config.eval, seed=config.seed, workdir=workdir)
    evaluation.run_evals(config.evals, ctx)
  finally:
    close(run)
  from xmr_jax import plots  # matplotlib only when plotting
  plots.plot_curves(os.path.join(workdir, "metrics.jsonl"),
                    os.path.join(workdir, "plots", "curves.png"))
  return ctx.results
