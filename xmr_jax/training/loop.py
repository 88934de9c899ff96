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
import collections
import dataclasses
import functools
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from xmr_jax import evaluation
from xmr_jax.common import mesh as mesh_lib
from xmr_jax.common.errors import ConfigError
from xmr_jax.common.io import atomic_write_json
from xmr_jax.data import datasets
from xmr_jax.evaluation import retrieval
from xmr_jax.models import image_tower
from xmr_jax.models.registry import get_method, method_inputs
from xmr_jax.training import checkpoints, config_check, identity, state as state_lib, \
    step as step_lib
from xmr_jax.training.logging import MetricsWriter


class TrainingDivergedError(RuntimeError):
  """The loss became NaN/Inf in a single run; the checkpoints already saved are intact."""


def steps_per_epoch(config, num_train_images: int, captions_per_image: int) -> int:
  """k * (N // B): one pass over every training caption (:func:`schedule`); 0 when B > N."""
  return captions_per_image * (num_train_images // max(int(config.train.batch_size), 1))


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
  per_epoch = steps_per_epoch(config, num_train_images, captions_per_image)
  total = (config.train.num_steps if config.train.num_steps > 0
           else round(per_epoch * config.train.num_epochs))
  return {"steps_per_epoch": per_epoch, "total_steps": int(total),
          "decay_steps": int(per_epoch * config.train.lr_decay_epochs)}


def setup(config, vocabularies=None):
  """(dataset, method, optimiser, hparams, initial state) for ``config``.

  The config's values and paths are checked first (``config_check``), the data is opened with
  only what the method reads (``Method.inputs``), and the config's evaluators are checked
  against the method before anything trains. ``vocabularies``: (tokenizer, deps_vocab) of a
  trained workdir (``identity.vocabularies_for``), used instead of building them from data.
  """
  config_check.check_config(config)
  tokenizer, deps_vocab = vocabularies or (None, None)
  # Several processes: process 0 builds a missing dataset cache, the others then read it.
  ds = mesh_lib.primary_first(lambda: datasets.open_dataset(
      config.data, needs=method_inputs(config), seed=config.seed, tokenizer=tokenizer,
      deps_vocab=deps_vocab), "dataset")
  method = get_method(config, ds.info)
  if method.text_states is not None:    # a frozen text tower: its vectors once per caption
    mesh_lib.primary_first(lambda: ds.use_text_states(*method.text_states), "text vectors")
  evaluation.check_evals(config.evals, method)
  evaluation.rerank.check(config.eval, method)
  # (A batch larger than the split is refused later, with the data's own message.)
  per_epoch = steps_per_epoch(config, ds.num_train_images, ds.k)
  tx = state_lib.make_optimizer(config.train, method.unclipped_params,
                                pretrained=tuple((p, s) for p, _, s in method.pretrained),
                                frozen_steps=image_tower.frozen_steps(config.train, per_epoch))
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
  preempted: bool = False     # stopped by SIGTERM (a checkpoint was saved; no final eval)
  # train.backbone_frozen_epochs: the steps before ``frozen_until`` run ``frozen_step_fn``,
  # the same step with no backward pass through the backbone (``image_tower.frozen_phase``).
  frozen_step_fn: Optional[Callable] = None
  frozen_until: int = 0

  @property
  def variant_names(self) -> List[Optional[str]]:
    """``[None]`` for a single run, else the sweep variants' names in stacking order."""
    return [None] if self.names is None else list(self.names)

  def variables(self, k: int = 0):
    """Flax variables of variant k (the run's own for a single run)."""
    state = mesh_lib.to_host(state_lib.variables_of(self.state))
    return state if self.names is None else jax.tree.map(lambda x: x[k], state)


def start(config, workdir: str, variants: Optional[Sequence[Dict[str, Any]]] = None,
          rebuild_tokenizer: bool = False) -> Run:
  """Builds a :class:`Run`, resuming from ``workdir``'s latest checkpoint if it has one.

  ``variants`` (a sweep group): dicts with ``name``, optional ``hparams`` overrides and
  ``seed``; every variant reads the same batches (order from ``config.seed``). A resumed run
  uses the workdir's own vocabularies (``identity``) and must see the same training data and
  a config its checkpoint can serve; ``rebuild_tokenizer`` stores a rebuilt tokenizer in a
  workdir trained before workdirs kept theirs.
  """
  identity.check_config(config, workdir, "train")
  vocabularies = identity.vocabularies_for(workdir, rebuild_tokenizer)
  ds, method, tx, hparams, state = setup(config, vocabularies)
  if variants is not None:
    _check_swept(method, variants)
  if vocabularies is not None:
    identity.check_training_data(workdir, ds, config.data.train_split)
  # Only now, with the config and data checked, is anything written into the workdir.
  os.makedirs(workdir, exist_ok=True)
  if vocabularies is None and mesh_lib.is_primary():
    identity.save(workdir, ds)
  marker = os.path.join(workdir, PREEMPTED)
  if mesh_lib.is_primary() and os.path.exists(marker):
    os.remove(marker)          # resuming a preempted run
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
  make_step = functools.partial(
      step_lib.make_train_step, tx=tx, decay_steps=sched["decay_steps"],
      decay_factor=config.train.lr_decay_factor, steps_per_epoch=sched["steps_per_epoch"],
      mesh=mesh, stacked=names is not None)
  step_fn = make_step(method)
  # jax.jit compiles on first call: a run past its frozen epochs never compiles the other.
  frozen_method = image_tower.frozen_phase(method)
  frozen_until = image_tower.frozen_steps(config.train, sched["steps_per_epoch"]).get(
      image_tower.TOWER_PATH, 0) if frozen_method is not None else 0
  frozen_step_fn = make_step(frozen_method) if frozen_until else None
  return Run(config=config, workdir=workdir, ds=ds, method=method, mesh=mesh, names=names,
             sched=sched, hparams=mesh_lib.replicate(hparams, mesh),
             state=mesh_lib.replicate(state, mesh), step_fn=step_fn,
             place=_placer(mesh, max(ds.len_buckets)), iterator=iterator,
             ckpt=ckpt, writer=MetricsWriter(workdir, enabled=mesh_lib.is_primary()),
             record=ckpt.trainer_record() or {"diverged": {}}, step=ckpt.latest_step() or 0,
             frozen_step_fn=frozen_step_fn, frozen_until=frozen_until)


def _check_swept(method, variants) -> None:
  """ConfigError when a sweep variant varies a hyperparameter that neither the trainer
  (``learning_rate``) nor the method's loss (``Method.hparam_names``) reads: its variants
  would train identically."""
  read = {"learning_rate", *method.hparam_names}
  for v in variants:
    unread = sorted(set(v.get("hparams", {})) - read)
    if unread:
      raise ConfigError(f"sweep variant {v['name']!r} sets {unread}, which {method.name} never "
                        f"reads (it reads {sorted(read)}); drop them from the sweep")


def _placer(mesh, text_len: int) -> Callable:
  """Host batch -> global arrays sharded over the mesh (multi-host: equal caption lengths)."""
  def place(batch):
    if jax.process_count() > 1:
      batch = mesh_lib.pad_text_to(batch, text_len)
    return mesh_lib.global_batch(batch, mesh)
  return place


PREEMPTED = "PREEMPTED"


class _Preemption:
  """SIGTERM (spot machines, SLURM, Cloud TPU maintenance) -> stop at a step every process
  agrees on.

  One process: a Python SIGTERM handler sets a flag the loop reads after each step. Several
  processes: JAX's distributed runtime catches SIGTERM itself and its preemption sync manager
  (``multihost_utils.reached_preemption_sync_point``, orbax's ``reached_preemption``) picks
  the step at which all processes stop, without a per-step round trip between hosts.
  """

  def __init__(self):
    self.flag, self._previous = False, None

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False

  def _handler(self, signum, frame):
    del signum, frame
    self.flag = True

  def reached(self, step: int) -> bool:
    """Whether to stop after ``step`` (called after every step, on every process)."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.flag


class _Feed:
  """Batches placed on the devices ``size`` steps ahead, each with the data iterator state
  just after it was read: a checkpoint records the state of the batch last *used*, not of
  the ones prefetched. Placing is asynchronous, so the host prepares the next batches while
  the device runs the current step."""

  def __init__(self, iterator, place: Callable, size: int):
    self.iterator, self.place, self.size = iterator, place, int(size)   # >= 1: config_check
    self.queue: "collections.deque" = collections.deque()

  def next(self):
    """(placed batch, data state after it)."""
    while len(self.queue) < self.size:
      host = next(self.iterator)
      self.queue.append((self.place(host), self.iterator.get_state()))
    return self.queue.popleft()


def train(run: Run) -> Run:
  """Trains ``run`` to ``total_steps``: the loop of every mode (see the module docstring).

  The host never waits for a step except every ``log_every_steps`` (metrics), at checkpoints
  (the NaN guard reads the state's ``alive`` flags first, so a saved checkpoint is always
  from before the first non-finite step) and at dev evaluations; batches are prefetched
  ``train.prefetch`` steps ahead. On SIGTERM the run saves a checkpoint after the current
  step, writes ``workdir/PREEMPTED`` and returns with ``run.preempted`` set.
  """
  c = run.config.train
  total, per_epoch = run.sched["total_steps"], run.sched["steps_per_epoch"]
  eval_period = max(1, round(run.config.train.eval_every_epochs * per_epoch))
  desc = f"train {run.method.name}" + ("" if run.names is None else f" x{len(run.names)}")
  bar = tqdm(total=total, initial=run.step, desc=desc, unit="step", dynamic_ncols=True,
             mininterval=1.0 if sys.stderr.isatty() else 30.0,
             disable=not mesh_lib.is_primary())
  feed = _Feed(run.iterator, run.place, c.get("prefetch", 2))
  t_last, seen = time.time(), 0
  try:
    with _Preemption() as preemption:
      while run.step < total:
        batch, data_state = feed.next()
        fn = run.frozen_step_fn if run.step < run.frozen_until else run.step_fn
        run.state, metrics = fn(run.state, batch, run.hparams)
        run.step += 1
        seen += 1
        bar.update(1)
        stop = preemption.reached(run.step)
        log = run.step % c.log_every_steps == 0 or run.step == total
        save = run.step % c.checkpoint_every_steps == 0 or run.step == total or stop
        dev = (run.step % eval_period == 0 or run.step == total) and not stop
        if log or save or dev:
          _guard(run)
        if log:
          now = time.time()
          _log(run, metrics, seen / max(now - t_last, 1e-9), bar)
          t_last, seen = now, 0
        if save:
          run.ckpt.save(run.step, run.state, data_state, run.config.to_dict(), run.record)
        if stop:
          _mark_preempted(run)
          break
        if dev:
          _dev_eval(run)
  finally:
    bar.close()
  return run


def _mark_preempted(run: Run) -> None:
  run.preempted = True
  if mesh_lib.is_primary():
    atomic_write_json(os.path.join(run.workdir, PREEMPTED),
                      {"step": run.step, "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    tqdm.write(f"preempted (SIGTERM): checkpoint of step {run.step} saved in "
               f"{run.ckpt.latest.directory}; the final evaluation is skipped. Run the same "
               f"command again to resume.")


def _guard(run: Run) -> None:
  """Records newly diverged variants; a single run that diverged stops with its checkpoint.

  Reads the state's ``alive`` flags (a host sync): a diverged state keeps its last finite
  parameters and its step counter, so ``step + 1`` is the first non-finite step.
  """
  alive = np.atleast_1d(mesh_lib.to_host(run.state["alive"]))
  steps = np.atleast_1d(mesh_lib.to_host(run.state["step"]))
  for k, name in enumerate(run.variant_names):
    key = name or "run"
    if alive[k] or key in run.record["diverged"]:
      continue
    first_bad = int(steps[k]) + 1
    run.record["diverged"][key] = first_bad
    if name is None:
      raise TrainingDivergedError(_diverged_message(run, first_bad))
    tqdm.write(f"variant {name} diverged at step {first_bad} (non-finite loss, gradient or "
               f"update); it keeps its last finite parameters and is reported as diverged, "
               f"the others go on")


def _diverged_message(run: Run, first_bad: int) -> str:
  saved = run.ckpt.latest_step()
  # The first checkpoint comes every checkpoint_every_steps, or at the last step if sooner.
  due = min(run.config.train.checkpoint_every_steps, run.sched["total_steps"])
  where = (f"The last checkpoint (step {saved}) is intact in {run.ckpt.latest.directory}"
           if saved is not None else
           f"No checkpoint was saved yet (the first would have been written at step {due})")
  return (f"the loss, gradient or update became non-finite at step {first_bad} "
          f"({run.method.name}); training stopped. {where}. Lower the learning rate or check "
          f"the inputs of the batch read at that step.")


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
    if not mesh_lib.is_primary():
      continue
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


def train_and_evaluate(config, workdir: str,
                       rebuild_tokenizer: bool = False) -> Dict[str, Any]:
  """``--mode=train``: trains (resuming if ``workdir`` holds a checkpoint), then runs the
  config's evaluators on the best parameters; returns the ``retrieval`` results dict, or
  ``{"preempted": step}`` when SIGTERM stopped the training (no evaluation then).

  Several processes: all train and score (each its share of the tiles); only process 0
  writes ``config.json``, metrics, results and plots.
  """
  # config.json records the dtype that ran ("auto" resolved here too, not only by the CLI),
  # so a later command-line run on the same hardware finds the same config.
  config_check.resolve_auto(config)
  run = start(config, workdir, rebuild_tokenizer=rebuild_tokenizer)
  primary = mesh_lib.is_primary()
  if primary:
    atomic_write_json(os.path.join(workdir, "config.json"), config.to_dict())
  try:
    train(run)
    if run.preempted:
      return {"preempted": run.step}
    from xmr_jax.training import workdirs   # it imports this module
    ctx = evaluation.EvalContext(run.method, best_variables(run), run.ds, config.eval.split,
                                 config.eval, seed=config.seed,
                                 workdir=workdir if primary else None,
                                 shortlist=workdirs.shortlist_context(config))
    evaluation.run_evals(config.evals if primary else config.evals[:1], ctx)
  finally:
    close(run)
  if primary:
    from xmr_jax import plots  # matplotlib only when plotting
    plots.plot_curves(os.path.join(workdir, "metrics.jsonl"),
                      os.path.join(workdir, "plots", "curves.png"))
  return ctx.results
