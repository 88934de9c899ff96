"""vmapped ablation sweeps: K variants that differ only in swept scalars train as ONE program.

A sweep config is a normal method config plus ``config.sweep``::

    config.sweep = ml_collections.ConfigDict(dict(
        variants=[                                   # trained together under jax.vmap
            dict(name="m0.1_s0", hparams=dict(margin=0.1), seed=0),
            dict(name="m0.2_s1", hparams=dict(margin=0.2), seed=1),
        ],
        sequential=[                                 # optional: shape-changing settings
            dict(name="smooth5", overrides={"model.smoothing": 5.0}),   # reuses `variants`
            dict(name="big", overrides={"model.embed_dim": 64}, variants=[...]),
        ],
    ))

``hparams`` overrides must name keys of ``config.hparams`` (DESIGN.md: everything a sweep
varies is an array in the hparams pytree); ``seed`` (default ``config.seed``) sets the
variant's initial parameters and its dropout/sampling stream. Every variant of a group reads
the SAME data stream (order and caption choice from the base ``config.seed``), which is what
lets one compiled step serve them all: ``jax.vmap(train_step, in_axes=(0, None, 0))`` over
(state, batch, hparams). Each ``sequential`` group is a config with ``overrides`` (dotted
keys) applied, run after the previous group, itself vmapped over its variants.

Outputs in the workdir: ``sweep_results.json`` (a list of ``{name, group, hparams, seed,
results}``, rewritten atomically after every group), ``plots/sweep.png``, per group
``<group>/metrics.jsonl`` and ``<group>/checkpoints`` (the stacked state, saved every
``train.checkpoint_every_steps``; a restarted sweep resumes each group from its latest
checkpoint). Simpler than the main loop on purpose: no dev evaluation and no best-checkpoint
selection; every variant is evaluated with its final parameters on ``config.eval.split``, and
a variant whose loss became NaN/Inf is reported as diverged instead of stopping the others.
"""
import copy
import functools
import math
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from xmr_jax.data import datasets
from xmr_jax.evaluation import protocol
from xmr_jax.models.registry import get_method
from xmr_jax.training import checkpoints, state as state_lib, step as step_lib
from xmr_jax.training.logging import MetricsWriter, atomic_write_json

REPO_CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def method_config(name: str, arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """``configs/<name>.py``'s ``get_config(arg)`` (sweep files start from it)."""
  import importlib.util
  path = os.path.abspath(os.path.join(REPO_CONFIGS, f"{name}.py"))
  spec = importlib.util.spec_from_file_location(f"xmr_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _plain(x: Any) -> Any:
  return x.to_dict() if hasattr(x, "to_dict") else x


def sweep_groups(config) -> List[Dict[str, Any]]:
  """``[{name, config, variants}]``: the base group, then the sequential ones, validated."""
  sweep = config.get("sweep")
  if sweep is None:
    raise ValueError("--mode=sweep needs config.sweep (see xmr_jax/training/sweep.py)")
  base_variants = [_plain(v) for v in sweep.get("variants", ())]
  groups = []
  if base_variants:
    groups.append({"name": "base", "config": config, "variants": base_variants})
  for entry in sweep.get("sequential", ()) or ():
    entry = _plain(entry)
    cfg = apply_overrides(config, entry.get("overrides", {}))
    variants = [_plain(v) for v in entry.get("variants", base_variants)]
    groups.append({"name": entry["name"], "config": cfg, "variants": variants})
  if not groups:
    raise ValueError("config.sweep has no variants and no sequential groups")
  for g in groups:
    _check_variants(g["config"], g["variants"], g["name"])
  return groups


def apply_overrides(config, overrides: Mapping[str, Any]):
  """A copy of ``config`` with ``{"model.embed_dim": 64, ...}`` set; unknown keys raise."""
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    for dotted, value in overrides.items():
      *path, last = dotted.split(".")
      node = cfg
      for p in path:
        node = node[p]
      if last not in node:
        raise KeyError(f"sweep override {dotted!r}: config has no such key")
      node[last] = value
  return cfg


def _check_variants(config, variants: Sequence[Mapping[str, Any]], group: str) -> None:
  names = [v.get("name") for v in variants]
  if not variants or None in names or len(set(names)) != len(names):
    raise ValueError(f"sweep group {group!r}: every variant needs a unique name, got {names}")
  for v in variants:
    unknown = set(v.get("hparams", {})) - set(config.hparams)
    if unknown:
      raise KeyError(f"sweep variant {v['name']!r} sets {sorted(unknown)}, not in config.hparams "
                     f"{sorted(config.hparams)}; shape-changing settings go in sweep.sequential")
    extra = set(v) - {"name", "hparams", "seed"}
    if extra:
      raise KeyError(f"sweep variant {v['name']!r}: unknown fields {sorted(extra)}")


def stack_hparams(base: Mapping[str, jax.Array], variants: Sequence[Mapping[str, Any]]):
  """(K,) float32 arrays: ``base`` with each variant's ``hparams`` overrides."""
  rows = [{**{k: float(v) for k, v in base.items()},
           **{k: float(v) for k, v in var.get("hparams", {}).items()}} for var in variants]
  return {k: jnp.asarray([r[k] for r in rows], jnp.float32) for k in base}


def init_states(method, sample_batch, tx, seeds: Sequence[int]):
  """K initial states stacked on a leading axis, variant k from ``jax.random.key(seeds[k])``.

  Equal to K calls of ``state.init_state(..., seed)``: the key data of ``key(seed)`` is what
  ``init_state`` wraps, and vmapping random draws over keys does not change them.
  """
  # One jitted init per variant, then stacked (init runs once, not per step). A single
  # jit(vmap(init)) over 6 variants never completed on the 2-core CPU box (XLA CPU; 2 variants
  # did), which hung the CLI sweep; per-variant init gives the same arrays.
  init = jax.jit(lambda k: state_lib.init_state(method, sample_batch, tx, k))
  states = [init(jax.random.key_data(jax.random.key(int(s)))) for s in seeds]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def make_sweep_step(method, tx, *, decay_steps: int, decay_factor: float,
                    steps_per_epoch: int):
  """``step(states, batch, hparams) -> (states, metrics)``: one step of all K variants.

  ``jax.vmap`` over the leading axis of state and hparams with the batch shared (in_axes
  None), jitted once; the stacked state is donated.
  """
  fn = functools.partial(step_lib.train_step, method=method, tx=tx, decay_steps=decay_steps,
                         decay_factor=decay_factor, steps_per_epoch=steps_per_epoch)
  return jax.jit(jax.vmap(fn, in_axes=(0, None, 0)), donate_argnums=(0,))


def slice_variant(tree, k: int):
  return jax.tree.map(lambda x: x[k], tree)


def _variables(state) -> Dict[str, Any]:
  v = {"params": state["params"]}
  if state["batch_stats"]:
    v["batch_stats"] = state["batch_stats"]
  return v


def run_group(config, variants, workdir: str, *, progress: bool = True):
  """Trains one group's K variants together; returns (dataset, method, stacked final state)."""
  from xmr_jax.training.loop import schedule   # the main loop's epochs -> steps rule
  ds = datasets.load(config)
  method = get_method(config, ds.info)
  tx = state_lib.make_optimizer(config.train, method.unclipped_params)
  hparams = stack_hparams(state_lib.hparams_from_config(config, method), variants)
  sample = ds.sample_batch(config.train.batch_size)
  states = init_states(method, sample, tx, [v.get("seed", config.seed) for v in variants])
  sched = schedule(config, ds.num_train_images, ds.k)
  it = ds.train_iterator(config.train.batch_size, seed=config.seed)
  ckpt = checkpoints.Checkpointer(workdir, config.train.max_to_keep)
  restored = ckpt.restore(states)
  if restored is not None:
    states, data_state = restored
    it.set_state(data_state)
  step_fn = make_sweep_step(method, tx, decay_steps=sched["decay_steps"],
                            decay_factor=config.train.lr_decay_factor,
                            steps_per_epoch=sched["steps_per_epoch"])
  writer = MetricsWriter(workdir)
  try:
    states = _train_loop(config, variants, states, hparams, step_fn, it, ckpt, writer,
                         sched["total_steps"], progress)
  finally:
    writer.close()
    ckpt.close()
  return ds, method, states


def _train_loop(config, variants, states, hparams, step_fn, it, ckpt, writer, total, progress):
  step = int(states["step"][0])
  names = [v["name"] for v in variants]
  bar = tqdm(total=total, initial=step, desc=f"sweep x{len(names)}", disable=not progress,
             unit="step")
  cfg_dict = config.to_dict()
  while step < total:
    states, metrics = step_fn(states, next(it), hparams)
    step += 1
    bar.update(1)
    if step % config.train.log_every_steps == 0 or step == total:
      loss = np.asarray(metrics["loss"])
      writer.write(step, {f"loss/{n}": float(l) for n, l in zip(names, loss)})
    if step % config.train.checkpoint_every_steps == 0 or step == total:
      ckpt.save(step, states, it.get_state(), cfg_dict)
  bar.close()
  return states


def evaluate_variants(config, ds, method, states, variants, group: str) -> List[Dict[str, Any]]:
  """Each variant's final parameters on ``config.eval.split`` (one compile for all K)."""
  out = []
  for k, v in enumerate(variants):
    variables = jax.tree.map(np.asarray, _variables(slice_variant(states, k)))
    row = {"name": v["name"] if group == "base" else f"{group}/{v['name']}", "group": group,
           "hparams": {n: float(x[k]) for n, x in
                       stack_hparams(state_lib.hparams_from_config(config, method),
                                     variants).items()},
           "seed": int(v.get("seed", config.seed))}
    if not all(np.all(np.isfinite(x)) for x in jax.tree.leaves(variables)):
      row.update(diverged=True, results=None)   # NaN/Inf parameters: nothing to evaluate
    else:
      row.update(diverged=False, results=protocol.evaluate(
          config, ds, method, variables, split=config.eval.split))
    out.append(row)
  return out


def format_sweep_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """One line per variant: name, swept values, R@1 both ways, rsum."""
  swept = sorted({k for r in rows for k, v in r["hparams"].items()
                  if len({rr["hparams"].get(k) for rr in rows}) > 1})
  head = f"{'variant':24}" + "".join(f"{k:>14}" for k in swept + ["seed"]) + \
      f"{'i2t R@1':>9}{'t2i R@1':>9}{'rsum':>9}"
  lines = [head]
  for r in rows:
    vals = "".join(f"{r['hparams'][k]:14.4g}" for k in swept) + f"{r['seed']:14d}"
    res = r["results"]
    tail = "   diverged" if res is None else \
        f"{res['i2t']['r1']:9.2f}{res['t2i']['r1']:9.2f}{res['rsum']:9.2f}"
    lines.append(f"{r['name']:24}{vals}{tail}")
  return "\n".join(lines)


def run_sweep(config, workdir: str, *, progress: bool = True) -> List[Dict[str, Any]]:
  """``--mode=sweep``: every group of ``config.sweep``; results JSON, table and bar plot."""
  os.makedirs(workdir, exist_ok=True)
  atomic_write_json(os.path.join(workdir, "config.json"), config.to_dict())
  rows: List[Dict[str, Any]] = []
  t0 = time.time()
  for g in sweep_groups(config):
    ds, method, states = run_group(g["config"], g["variants"],
                                   os.path.join(workdir, g["name"]), progress=progress)
    rows += evaluate_variants(g["config"], ds, method, states, g["variants"], g["name"])
    atomic_write_json(os.path.join(workdir, "sweep_results.json"), rows)
  print(format_sweep_table(rows), flush=True)
  print(f"sweep of {len(rows)} variants took {time.time() - t0:.1f} s", flush=True)
  _plot(rows, os.path.join(workdir, "plots", "sweep.png"), config.method)
  return rows


def _plot(rows, path: str, method: str) -> None:
  from xmr_jax import plots   # matplotlib only when plotting
  table = {r["name"]: {"i2t R@1": r["results"]["i2t"]["r1"], "t2i R@1": r["results"]["t2i"]["r1"],
                       "rsum / 6": r["results"]["rsum"] / 6}
           for r in rows if r["results"] is not None}
  if table:
    plots.plot_bars(table, path, f"{method} sweep", ylabel="%")
