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

``hparams`` overrides must name keys of ``config.hparams`` (docs/architecture.md: everything a sweep
varies is an array in the hparams pytree); ``seed`` (default ``config.seed``) sets the
variant's initial parameters and its dropout/sampling stream. Every variant of a group reads
the SAME data stream (order and caption choice from the base ``config.seed``), which is what
lets one compiled step serve them all: ``jax.vmap(train_step, in_axes=(0, None, 0))`` over
(state, batch, hparams). Each ``sequential`` group is a config with ``overrides`` (dotted
keys) applied, run after the previous group, itself vmapped over its variants.

Each group trains with the one trainer (``training.loop``) on a stacked state, so a sweep has
everything ``--mode=train`` has: the data mesh, checkpoints and resume, dev evaluation with
each variant's best parameters kept (``<group>/best/<variant>``), and the NaN guard per
variant: a variant whose loss becomes NaN/Inf keeps its last finite parameters, is reported
as diverged and the others go on.

Outputs in the workdir: ``sweep_results.json`` (a list of ``{name, group, hparams, seed,
diverged, diverged_at_step, results}``, rewritten atomically after every group),
``plots/sweep.png``, per group ``<group>/metrics.jsonl`` (``loss/<variant>``,
``dev_rsum/<variant>``, ...) and ``<group>/checkpoints``. Every variant is evaluated on
``config.eval.split`` with its best dev parameters (its last finite ones if it was never
evaluated).

Sweep files start from a method config loaded by path (``config_utils.load_config``),
resolved against the sweep file, so they work from an installed package too.
"""
import copy
import os
import time
from typing import Any, Dict, List, Mapping, Sequence, Optional

import ml_collections

from xmr_jax import evaluation
from xmr_jax.common.errors import ConfigError
from xmr_jax.common.io import atomic_write_json
from xmr_jax.evaluation import retrieval
from xmr_jax.training import config_check, identity, loop

def _plain(x: Any) -> Any:
  return x.to_dict() if isinstance(x, ml_collections.ConfigDict) else x


def sweep_groups(config) -> List[Dict[str, Any]]:
  """``[{name, config, variants}]``: the base group, then the sequential ones, validated."""
  sweep = config.get("sweep")
  if sweep is None:
    raise ConfigError("--mode=sweep needs config.sweep (see xmr_jax/training/sweep.py)")
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
    raise ConfigError("config.sweep has no variants and no sequential groups")
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
        raise ConfigError(f"sweep override {dotted!r}: config has no such key")
      node[last] = value
  return cfg


def _check_variants(config, variants: Sequence[Mapping[str, Any]], group: str) -> None:
  names = [v.get("name") for v in variants]
  if not variants or None in names or len(set(names)) != len(names):
    raise ConfigError(f"sweep group {group!r}: every variant needs a unique name, got {names}")
  for v in variants:
    unknown = set(v.get("hparams", {})) - set(config.hparams)
    if unknown:
      raise ConfigError(f"sweep variant {v['name']!r} sets {sorted(unknown)}, not in config.hparams "
                     f"{sorted(config.hparams)}; shape-changing settings go in sweep.sequential")
    config_check.check_hparams(v.get("hparams", {}),
                               where=f"sweep variant {v['name']!r}: hparams")
    extra = set(v) - {"name", "hparams", "seed"}
    if extra:
      raise ConfigError(f"sweep variant {v['name']!r}: unknown fields {sorted(extra)}")


def _row(config, method, variant, group: str, k: int, run) -> Dict[str, Any]:
  """The results row of variant k: its hparams as written in the config and the variant (not
  their float32 round trip) and its evaluation on the eval split."""
  name = variant["name"]
  diverged_at = run.record["diverged"].get(name)
  ctx = evaluation.EvalContext(method, loop.best_variables(run, k), run.ds, config.eval.split,
                               config.eval, seed=config.seed)
  return {"name": name if group == "base" else f"{group}/{name}", "group": group,
          "hparams": {**{n: float(v) for n, v in config.hparams.items()},
                      **{n: float(v) for n, v in variant.get("hparams", {}).items()}},
          "seed": int(variant.get("seed", config.seed)),
          "diverged": diverged_at is not None, "diverged_at_step": diverged_at,
          "results": retrieval.evaluate(ctx)}


def run_group(config, variants, workdir: str) -> Optional[List[Dict[str, Any]]]:
  """Trains one group's K variants together (one vmapped program); returns their rows, or
  None when SIGTERM stopped it (checkpoint saved, ``PREEMPTED`` in its workdir)."""
  run = loop.start(config, workdir, variants)
  try:
    loop.train(run)
    if run.preempted:
      return None
    return [_row(config, run.method, v, os.path.basename(workdir), k, run)
            for k, v in enumerate(variants)]
  finally:
    loop.close(run)


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
    tail = f"{res['i2t']['r1']:9.2f}{res['t2i']['r1']:9.2f}{res['rsum']:9.2f}"
    if r["diverged"]:
      tail += f"   diverged at step {r['diverged_at_step']}"
    lines.append(f"{r['name']:24}{vals}{tail}")
  return "\n".join(lines)


def run_sweep(config, workdir: str) -> List[Dict[str, Any]]:
  """``--mode=sweep``: every group of ``config.sweep``; results JSON, table and bar plot.

  Raises ConfigError for ``eval.rerank_k`` > 0: every variant is evaluated exactly.
  """
  if config.eval.get("rerank_k", 0):
    raise ConfigError(f"config.eval.rerank_k={config.eval.rerank_k}: a sweep evaluates every "
                      f"variant on every pair; two-stage ranking is for --mode=train or "
                      f"--mode=eval of one workdir. Remove it")
  identity.check_config(config, workdir, "train")
  os.makedirs(workdir, exist_ok=True)
  atomic_write_json(os.path.join(workdir, "config.json"), config.to_dict())
  rows: List[Dict[str, Any]] = []
  t0 = time.time()
  for g in sweep_groups(config):
    group_rows = run_group(g["config"], g["variants"], os.path.join(workdir, g["name"]))
    if group_rows is None:
      print(f"sweep preempted in group {g['name']}; run the same command again to resume",
            flush=True)
      return rows
    rows += group_rows
    atomic_write_json(os.path.join(workdir, "sweep_results.json"), rows)
  print(format_sweep_table(rows), flush=True)
  print(f"sweep of {len(rows)} variants took {time.time() - t0:.1f} s", flush=True)
  _plot(rows, os.path.join(workdir, "plots", "sweep.png"), config.method)
  return rows


def _plot(rows, path: str, method: str) -> None:
  from xmr_jax import plots   # matplotlib only when plotting
  table = {r["name"]: {"i2t R@1": r["results"]["i2t"]["r1"], "t2i R@1": r["results"]["t2i"]["r1"],
                       "rsum / 6": r["results"]["rsum"] / 6}
           for r in rows}
  if table:
    plots.plot_bars(table, path, f"{method} sweep", ylabel="%")
