"""The trainer: compile once, resume after SIGKILL = never stopping, NaN guard, config errors."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import tiny_config
from xmr_jax import training
from xmr_jax.common import mesh as mesh_lib
from xmr_jax.training import checkpoints, loop, parallel, state as state_lib, step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tiny_data_dir):
  config = tiny_config("vsepp", tiny_data_dir, embed_dim=16, word_dim=8)
  return config, loop.setup(config)


def test_train_step_compiles_once_and_learns(setup):
  config, (ds, method, tx, hparams, state) = setup
  traces = []
  def counting_step(*args, **kwargs):
    traces.append(1)
    return step_lib.train_step(*args, **kwargs)
  mesh = mesh_lib.make_data_mesh(1)
  forward = parallel.sharded_loss_and_aux(method, mesh)
  fn = jax.jit(lambda s, b, h: counting_step(s, b, h, tx=tx, decay_steps=0, forward=forward,
                                             decay_factor=0.1, steps_per_epoch=10))
  it = ds.train_iterator(config.train.batch_size, seed=0)
  batch = mesh_lib.global_batch(next(it), mesh)
  # Placed once as the loop does, so every call sees the same input shardings.
  state, hparams = mesh_lib.replicate(state, mesh), mesh_lib.replicate(hparams, mesh)
  first = None
  for i in range(8):   # the same batch: the loss must go down
    state, metrics = fn(state, batch, hparams)
    first = float(metrics["loss"]) if first is None else first
  assert len(traces) == 1
  assert float(metrics["loss"]) < first
  assert int(state["step"]) == 8


def test_learning_rate_step_decay():
  lr = state_lib.learning_rate_at(np.array([0, 9, 10, 25], np.float32), 2e-4, 10, 0.1)
  np.testing.assert_allclose(lr, [2e-4, 2e-4, 2e-5, 2e-6], rtol=1e-6)


def test_hparam_learning_rate_reaches_the_optimizer(setup):
  config, (ds, method, tx, hparams, state) = setup
  batch = ds.sample_batch(config.train.batch_size)
  zero = dict(hparams, learning_rate=np.float32(0.0))
  mesh = mesh_lib.make_data_mesh(1)
  forward = parallel.sharded_loss_and_aux(method, mesh)
  batch = mesh_lib.global_batch(batch, mesh)
  new, _ = jax.jit(lambda s, b, h: step_lib.train_step(
      s, b, h, tx=tx, decay_steps=0, decay_factor=0.1, steps_per_epoch=10,
      forward=forward))(jax.tree.map(np.asarray, state), batch, zero)
  same = jax.tree.map(lambda a, b: np.array_equal(a, b), new["params"], state["params"])
  assert all(jax.tree.leaves(same))


_RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config
    from xmr_jax import training
    c = tiny_config("vsepp", {data!r}, embed_dim=16, word_dim=8)
    c.train.num_steps = 8
    c.train.checkpoint_every_steps = 1
    c.train.eval_every_epochs = 100
    training.train_and_evaluate(c, {workdir!r})
""")


def _params_of(workdir, config):
  ck = checkpoints.Checkpointer(workdir)
  _, method, tx, hparams, state = loop.setup(config)
  restored, _ = ck.restore(state)
  ck.close()
  return restored


def test_sigkill_then_resume_equals_uninterrupted(tiny_data_dir, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  tests = os.path.join(REPO, "tests")
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  subprocess.run([sys.executable, "-c", _RUN.format(tests=tests, data=tiny_data_dir,
                                                     workdir=straight)],
                 check=True, env=env, cwd=REPO, capture_output=True)
  proc = subprocess.Popen([sys.executable, "-c", _RUN.format(tests=tests, data=tiny_data_dir,
                                                              workdir=killed)],
                          env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  # Kill as soon as step 3's checkpoint exists (mid-training, possibly mid-save of step 4).
  ckdir = os.path.join(killed, "checkpoints")
  while proc.poll() is None and not (os.path.isdir(ckdir) and "3" in os.listdir(ckdir)):
    try:
      proc.wait(timeout=0.05)
    except subprocess.TimeoutExpired:
      pass
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  subprocess.run([sys.executable, "-c", _RUN.format(tests=tests, data=tiny_data_dir,
                                                     workdir=killed)],
                 check=True, env=env, cwd=REPO, capture_output=True)
  config = tiny_config("vsepp", tiny_data_dir, embed_dim=16, word_dim=8)
  a, b = _params_of(straight, config), _params_of(killed, config)
  assert int(a["step"]) == int(b["step"]) == 8
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
               a["params"], b["params"])
  with open(os.path.join(killed, "eval", "results.json")) as f:
    assert set(json.load(f)) >= {"method", "split", "protocol", "i2t", "t2i", "rsum", "seconds"}


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tiny_data_dir, tmp_path):
  config = tiny_config("vsepp", tiny_data_dir, embed_dim=16, word_dim=8)
  config.train.num_steps = 6
  config.train.checkpoint_every_steps = 2
  config.train.eval_every_epochs = 100
  workdir = str(tmp_path / "nan")
  original = loop.step_lib.make_train_step

  def poisoned(*args, **kwargs):
    fn = original(*args, **kwargs)
    def step(state, batch, hparams):
      if int(state["step"]) == 3:   # the 4th step sees a NaN feature
        batch = dict(batch, regions=batch["regions"] * np.nan)
      return fn(state, batch, hparams)
    return step
  loop.step_lib.make_train_step = poisoned
  try:
    with pytest.raises(training.TrainingDivergedError, match="step 4"):
      training.train_and_evaluate(config, workdir)
  finally:
    loop.step_lib.make_train_step = original
  ck = checkpoints.Checkpointer(workdir)
  assert ck.latest_step() == 2
  ck.close()


def test_unknown_config_override_names_the_key(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "xmr_jax.main", "--config=configs/vsepp.py:runlocal",
       f"--workdir={tmp_path}", "--config.train.no_such_key=3"],
      cwd=REPO, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode != 0
  assert "no_such_key" in out.stderr
  assert not os.listdir(tmp_path)


def test_unknown_config_argument_names_the_key():
  from xmr_jax.config_utils import parse_arg
  with pytest.raises(ValueError, match="bogus"):
    parse_arg("runlocal,bogus=1", runlocal=False)
  assert parse_arg("runlocal,data=coco", runlocal=False, data="synthetic").to_dict() == {
      "runlocal": True, "data": "coco"}


_RUN_LONG = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config
    from xmr_jax import training
    c = tiny_config("vsepp", {data!r}, embed_dim=16, word_dim=8)
    c.train.num_steps = 40
    c.train.log_every_steps = 1
    c.train.checkpoint_every_steps = 1000
    c.train.eval_every_epochs = 100
    print(training.train_and_evaluate(c, {workdir!r}), flush=True)
""")


def test_sigterm_checkpoints_marks_and_resumes_bit_equal(tiny_data_dir, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  tests = os.path.join(REPO, "tests")
  code = lambda w: [sys.executable, "-c", _RUN_LONG.format(tests=tests, data=tiny_data_dir,
                                                           workdir=w)]
  straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
  subprocess.run(code(straight), check=True, env=env, cwd=REPO, capture_output=True)
  proc = subprocess.Popen(code(stopped), env=env, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(stopped, "metrics.jsonl")
  # Signal once step 3 is logged: mid-training, with batches prefetched ahead of the step.
  while proc.poll() is None and not (os.path.exists(metrics) and
                                     sum(1 for _ in open(metrics)) >= 3):
    try:
      proc.wait(timeout=0.05)
    except subprocess.TimeoutExpired:
      pass
  assert proc.poll() is None, "the run ended before it could be signalled"
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  with open(os.path.join(stopped, "PREEMPTED")) as f:
    step = json.load(f)["step"]
  assert 3 <= step < 40 and f"{{'preempted': {step}}}" in out
  assert "preempted (SIGTERM): checkpoint of step" in out + err
  ck = checkpoints.Checkpointer(stopped)
  assert ck.latest_step() == step       # saved at the step it stopped, not the periodic one
  ck.close()
  assert not os.path.exists(os.path.join(stopped, "eval"))   # final evaluation skipped
  subprocess.run(code(stopped), check=True, env=env, cwd=REPO, capture_output=True)
  assert not os.path.exists(os.path.join(stopped, "PREEMPTED"))
  config = tiny_config("vsepp", tiny_data_dir, embed_dim=16, word_dim=8)
  a, b = _params_of(straight, config), _params_of(stopped, config)
  assert int(a["step"]) == int(b["step"]) == 40
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  with open(os.path.join(stopped, "eval", "results.json")) as f:
    assert json.load(f)["rsum"] >= 0


def test_compilation_cache_follows_the_data_dir_and_can_be_turned_off(tmp_path, monkeypatch):
  import jax
  from xmr_jax.common import io
  before = (jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size)
  try:
    monkeypatch.setenv("XMR_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert io.enable_compilation_cache() == str(tmp_path / "jax_cache")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax_cache")
    assert jax.config.jax_compilation_cache_max_size == io.COMPILATION_CACHE_BYTES
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert io.enable_compilation_cache() == str(tmp_path / "mine")
    monkeypatch.setenv("XMR_COMPILATION_CACHE", "0")
    jax.config.update("jax_compilation_cache_dir", None)
    assert io.enable_compilation_cache() == "" and jax.config.jax_compilation_cache_dir is None
  finally:
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_compilation_cache_max_size", before[1])
