"""vmapped sweeps: K variants in one program = K separate runs; results file, table, plot."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from xmr_jax.common import mesh as mesh_lib
from xmr_jax.common.errors import ConfigError
from xmr_jax.training import checkpoints, loop, state as state_lib, step as step_lib, sweep

VARIANTS = [dict(name="m0.1_s0", hparams=dict(margin=0.1), seed=0),
            dict(name="m0.3_s0", hparams=dict(margin=0.3, learning_rate=1e-3), seed=0),
            dict(name="m0.2_s1", hparams=dict(margin=0.2), seed=1)]


def _config(data_dir):
  c = tiny_config("vsepp", data_dir, embed_dim=16, word_dim=8)
  c.train.num_steps = 4
  c.train.checkpoint_every_steps = 4
  c.seed = 0
  c.sweep = ml_collections.ConfigDict(dict(
      variants=VARIANTS,
      sequential=[dict(name="small", overrides={"model.embed_dim": 8},
                       variants=[dict(name="m0.2", hparams=dict(margin=0.2))])]))
  return c


@pytest.fixture(scope="module")
def swept(tiny_data_dir, tmp_path_factory):
  config = _config(tiny_data_dir)
  workdir = str(tmp_path_factory.mktemp("sweep"))
  rows = sweep.run_sweep(config, workdir)
  return config, workdir, rows


def _single_runs(config, variants):
  """The reference: each variant alone, the plain jitted train step on the same batches."""
  ds, method, tx, base, _ = loop.setup(config)
  sample = ds.sample_batch(config.train.batch_size)
  sched = loop.schedule(config, ds.num_train_images, ds.k)
  mesh = mesh_lib.make_data_mesh(1)
  fn = step_lib.make_train_step(method, tx, decay_steps=sched["decay_steps"],
                                decay_factor=config.train.lr_decay_factor,
                                steps_per_epoch=sched["steps_per_epoch"], mesh=mesh)
  it = ds.train_iterator(config.train.batch_size, seed=config.seed)
  batches = [next(it) for _ in range(config.train.num_steps)]
  out = []
  for variant in variants:
    hparams = dict(base, **{k: np.float32(v) for k, v in variant["hparams"].items()})
    state = state_lib.init_state(method, sample, tx, variant["seed"])
    for batch in batches:
      state, _ = fn(state, mesh_lib.global_batch(batch, mesh), hparams)
    out.append(state)
  return out


def test_vmapped_sweep_equals_separate_runs(swept):
  config, workdir, _ = swept
  ds, method, tx, _, state = loop.setup(config)
  like = jax.tree.map(lambda x: np.stack([np.asarray(x)] * len(VARIANTS)), state)
  ck = checkpoints.Checkpointer(os.path.join(workdir, "base"),
                                variants=[v["name"] for v in VARIANTS])
  stacked, _ = ck.restore(like)
  ck.close()
  assert np.all(np.asarray(stacked["step"]) == config.train.num_steps)
  for k, ref in enumerate(_single_runs(config, VARIANTS)):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a)[k], b, atol=1e-5,
                                                         rtol=1e-5),
                 stacked["params"], ref["params"])
  # The variants really differ (a sweep that ignored hparams/seed would pass the loop above
  # only if every reference were equal too).
  w = jax.tree.leaves(stacked["params"])[0]
  assert not np.allclose(w[0], w[1]) and not np.allclose(w[0], w[2])


def test_results_file_table_and_plot(swept):
  config, workdir, rows = swept
  with open(os.path.join(workdir, "sweep_results.json")) as f:
    saved = json.load(f)
  assert [r["name"] for r in saved] == ["m0.1_s0", "m0.3_s0", "m0.2_s1", "small/m0.2"]
  assert saved[1]["hparams"]["margin"] == pytest.approx(0.3)
  assert saved[1]["hparams"]["learning_rate"] == pytest.approx(1e-3)
  assert saved[0]["hparams"]["learning_rate"] == pytest.approx(config.hparams.learning_rate)
  assert saved[2]["seed"] == 1 and saved[3]["group"] == "small"
  for r in saved:
    assert set(r["results"]) >= {"i2t", "t2i", "rsum"} and not r["diverged"]
  assert os.path.getsize(os.path.join(workdir, "plots", "sweep.png")) > 1000
  table = sweep.format_sweep_table(rows)
  assert "m0.3_s0" in table and "margin" in table and "rsum" in table


def test_bad_sweep_entries_name_the_problem(tiny_data_dir):
  config = _config(tiny_data_dir)
  config.sweep.variants = [dict(name="a", hparams=dict(no_such=1.0))]
  with pytest.raises(ConfigError, match="no_such"):
    sweep.sweep_groups(config)
  config.sweep.variants = [dict(name="a"), dict(name="a")]
  with pytest.raises(ValueError, match="unique"):
    sweep.sweep_groups(config)
  config.sweep.variants = [dict(name="a")]
  config.sweep.sequential = [dict(name="s", overrides={"model.no_such_dim": 3})]
  with pytest.raises(ConfigError, match="no_such_dim"):
    sweep.sweep_groups(config)


def test_stack_hparams_overrides_only_named_keys():
  base = {"margin": np.float32(0.2), "learning_rate": np.float32(2e-4)}
  hp = state_lib.stack_hparams(base, [dict(name="a"), dict(name="b", hparams=dict(margin=0.5))])
  np.testing.assert_allclose(hp["margin"], [0.2, 0.5])
  np.testing.assert_allclose(hp["learning_rate"], [2e-4, 2e-4])


def test_a_diverging_variant_stops_alone(tiny_data_dir, tmp_path):
  """lr = 1e38 makes variant "bad" blow up at its first update (Adam moves weights by ~1e38:
  the update's norm overflows): it keeps its initial (finite) parameters, is reported as
  diverged at step 1, and "good" trains on. (A non-finite hparam is a config error.)"""
  config = _config(tiny_data_dir)
  variants = [dict(name="good", seed=0), dict(name="bad", hparams=dict(learning_rate=1e38),
                                                seed=0)]
  config.sweep = ml_collections.ConfigDict(dict(variants=variants))
  workdir = str(tmp_path / "sweep")
  rows = sweep.run_sweep(config, workdir)
  good, bad = rows
  assert not good["diverged"] and bad["diverged"] and bad["diverged_at_step"] == 1
  assert np.isfinite(bad["results"]["rsum"]) and np.isfinite(good["results"]["rsum"])
  assert "diverged at step 1" in sweep.format_sweep_table(rows)
  ds, method, tx, _, state = loop.setup(config)
  like = jax.tree.map(lambda x: np.stack([np.asarray(x)] * 2), state)
  ck = checkpoints.Checkpointer(os.path.join(workdir, "base"), variants=["good", "bad"])
  stacked, _ = ck.restore(like)
  ck.close()
  assert list(np.asarray(stacked["alive"])) == [True, False]
  assert list(np.asarray(stacked["step"])) == [config.train.num_steps, 0]   # frozen at 0
  initial = jax.tree.leaves(state["params"])
  for w, w0 in zip(jax.tree.leaves(stacked["params"]), initial):
    np.testing.assert_array_equal(np.asarray(w)[1], np.asarray(w0))    # last finite = initial
  assert not np.array_equal(np.asarray(jax.tree.leaves(stacked["params"])[0])[0],
                            np.asarray(initial[0]))                   # "good" moved on
  with open(os.path.join(workdir, "base", "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert any("dev_rsum/good" in r for r in records)       # dev evaluation per variant
  assert not any("dev_rsum/bad" in r for r in records)


def test_lr_margin_sweep_file_builds_each_methods_grid():
  """experiments/sweeps/lr_margin.py: the method's own preset (its variant and tower) with
  one variant per (learning rate, margin), both read by the method's loss."""
  from xmr_jax.config_utils import load_config
  c = load_config("experiments/sweeps/lr_margin.py",
                  "method=sgraf,data=images,text=minilm,variant=saf,lrs=2e-4/5e-4,"
                  "margins=0.2/0.4/0.6")
  assert (c.model.variant, c.model.text_encoder) == ("saf", "minilm")
  got = [(v["name"], v["hparams"]["learning_rate"], v["hparams"]["margin"])
         for v in c.sweep.variants]
  assert got == [(f"lr{lr:g}_margin{m:g}", lr, m) for lr in (2e-4, 5e-4) for m in (0.2, 0.4, 0.6)]
  assert all("seed" not in v for v in c.sweep.variants)    # --config.seed still applies
  seeded = load_config("experiments/sweeps/lr_margin.py",
                       "method=mmca,data=images,lrs=1e-3,margins=0.2,seeds=3").sweep.variants
  assert [(v["name"], v["seed"]) for v in seeded] == [
      (f"lr0.001_margin0.2_seed{s}", s) for s in range(3)]
  assert load_config("experiments/sweeps/lr_margin.py", "").model.get("variant") is None
  with pytest.raises(Exception, match="unknown config argument 'methd'"):
    load_config("experiments/sweeps/lr_margin.py", "methd=sgraf")


def test_a_sweep_of_a_hyperparameter_the_method_never_reads_is_refused(tiny_data_dir,
                                                                       tmp_path):
  """PCME's loss reads no margin: sweeping it would train identical variants."""
  c = tiny_config("pcme", tiny_data_dir)
  workdir = str(tmp_path / "w")
  variants = [dict(name=f"m{m}", hparams=dict(margin=m)) for m in (0.1, 0.2)]
  with pytest.raises(ConfigError, match=r"sets \['margin'\], which pcme never reads"):
    loop.start(c, workdir, variants=variants)
  assert not os.path.exists(workdir)          # refused before anything was written
