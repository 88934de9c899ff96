"""Shared fixtures: one tiny synthetic dataset and config for the training/evaluation tests."""
import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# model.dtype=auto means bfloat16 on a CPU with avx512_bf16 / amx_bf16: the suite's reference
# comparisons are float32, so it pins "auto" to float32 on every machine (and in every process
# it starts); the bfloat16 paths have their own tests.
os.environ.setdefault("XMR_JAX_AUTO_DTYPE", "float32")

# One persistent XLA compilation cache for the test session, inherited by every process the
# tests start (CLI runs, resume after SIGKILL/SIGTERM, the multi-process and 8-device runs,
# and the other pytest-xdist worker): a program the suite compiled once (the same tiny
# model, the same shapes) is read back instead of compiled again. A new folder per session
# (or the one the environment names), so nothing carries over between sessions and the
# user's own cache is never written. Results are unaffected: the cache key is the whole
# compiled program.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  _run = os.environ.get("PYTEST_XDIST_TESTRUNUID")   # the same in every worker of one run
  os.environ["JAX_COMPILATION_CACHE_DIR"] = (
      os.path.join(tempfile.gettempdir(), f"xmr_test_jax_cache_{_run}") if _run
      else tempfile.mkdtemp(prefix="xmr_test_jax_cache_"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# LLVM's optimisation level 1 for XLA:CPU in the test processes and every process they start
# (their XLA_FLAGS build on this one: ``xla_flags``): the suite's programs are tiny and run
# for milliseconds, while compiling them is most of its time. Level 1 compiled MMCA's tiny
# train step (with its data and first evaluation) in 33-35 s against 47-48 s at the default
# level 3 (a 2-core EPYC with AVX-512, under load, two runs each). XLA's own graph passes run at every level.
# Level 0 was not used: it changed a result (PCME's loss at log-sigma +-20 overflowed to inf,
# tests/test_pcme.py), so it is not the users' arithmetic; the whole suite passes at level 1
# as at the default.
# Users' runs, and children that train for minutes (``run_cli(optimised=True)``), keep the
# default level.
_TEST_XLA_FLAG = "--xla_backend_optimization_level=1"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _TEST_XLA_FLAG).strip()


def xla_flags(devices: int) -> str:
  """``XLA_FLAGS`` for a child process with ``devices`` CPU devices (the suite's flags kept)."""
  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  from xmr_jax.data import synthetic
  root = tmp_path_factory.mktemp("data")
  return synthetic.generate(str(root / "synthetic"), seed=0, n_train=48, n_dev=12, n_test=12,
                            pixels=True)


def tiny_config(method: str, data_dir: str, **model):
  """A config of ``configs/<method>.py:runlocal`` shrunk to seconds, on ``data_dir``."""
  import importlib.util
  path = os.path.join(os.path.dirname(__file__), "..", "configs", f"{method}.py")
  spec = importlib.util.spec_from_file_location(f"cfg_{method}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("runlocal")
  c.data.name = "precomp"
  c.data.dir = data_dir
  c.data.vocab_size = 100
  # One caption-length bucket: a tiny run compiles one train step and one encoder per side
  # whatever its batches' longest caption (the bucketing tests set their own buckets).
  c.data.len_buckets = (64,)
  c.train.batch_size = 8
  c.train.num_steps = 6
  c.train.checkpoint_every_steps = 2
  c.train.log_every_steps = 2
  c.eval.encode_batch_size = 16
  c.eval.tile_images = 8
  c.eval.tile_texts = 16
  for k, v in model.items():
    c.model[k] = v
  return c


def tiny_synthetic_config(method: str, **model):
  """``tiny_config`` on a tiny synthetic benchmark built on first use in the data cache
  (``$XMR_DATA_DIR``): 48 train / 16 dev / 16 test images."""
  c = tiny_config(method, "", **model)
  c.data.name = "synthetic"
  c.data.dir = ""
  c.data.synthetic.update(n_train=48, n_dev=16, n_test=16)
  return c


def train_tiny(method: str, data_dir: str, workdir: str, steps: int = 2, **model):
  """Trains ``tiny_config(method)`` for ``steps`` steps end to end; returns the test results."""
  from xmr_jax.training import loop
  config = tiny_config(method, data_dir, **model)
  config.train.num_steps = steps
  return loop.train_and_evaluate(config, workdir)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, cwd=REPO, module="xmr_jax.main", optimised=False):
  """``python -m xmr_jax.main ARGS`` (or another ``module``'s command line) in a fresh
  process on the CPU (the user's view). ``optimised``: XLA:CPU at its default optimisation
  level, as users run it, for a child that trains for minutes rather than compiles for them
  (the suite's level 1 makes the compiled programs slower)."""
  import subprocess
  import sys
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if optimised:
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(_TEST_XLA_FLAG, "").strip()
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                        capture_output=True, text=True)


def assert_one_message(out, *needles):
  """Exit status 2, no traceback, exactly one ``xmr_jax: error:`` line holding ``needles``."""
  assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
  assert "Traceback" not in out.stderr
  errors = [line for line in out.stderr.splitlines() if line.startswith("xmr_jax: error:")]
  assert len(errors) == 1, out.stderr[-2000:]
  for needle in needles:
    assert needle in errors[0], errors[0]


def assert_same_checkpoints(workdirs, like, step):
  """The checkpoints of ``step`` in each of ``workdirs`` (restored into the state ``like``)
  hold bit-equal parameters and optimiser states; returns the first state."""
  import jax
  import numpy as np
  from xmr_jax.training import checkpoints
  states = []
  for workdir in workdirs:
    ck = checkpoints.Checkpointer(workdir)
    assert ck.latest_step() == step, workdir
    states.append(ck.restore(like)[0])
    ck.close()
  for other in states[1:]:
    for key in ("params", "opt_state"):
      jax.tree.map(np.testing.assert_array_equal, states[0][key], other[key])
  return states[0]


def install_small_text_tower(setitem, name="minilm"):
  """Text tower ``name`` replaced by a 1-layer, 32-d BERT of the same vocabulary and
  tokenizer with random weights (through ``setitem(mapping, key, value)``: a monkeypatch's,
  or a plain one in a child process): the seam and every head at a fraction of the compile
  time. Its entry differs from the real one, so cached token vectors never mix the two; the
  real weights are tested against the reference code in test_minilm.py / test_e5.py."""
  import dataclasses
  import functools
  import jax
  import numpy as np
  from xmr_jax.backbones import bert, text_towers
  real = text_towers.TEXT_TOWERS[name]
  entry = dataclasses.replace(real.entry, dim=32, layers=1, heads=2, ffn_dim=64)
  network = functools.partial(bert.BertEncoder, **bert.encoder_sizes(entry))

  @functools.lru_cache(maxsize=1)
  def load_params():
    ids = np.full((1, 4), 5, np.int32)
    params = network().init(jax.random.key(0), ids, np.ones((1, 4), bool))["params"]
    return jax.tree.map(np.asarray, params)

  setitem(text_towers.TEXT_TOWERS, name,
          dataclasses.replace(real, entry=entry, network=network, load_params=load_params))
  _clear_tower_caches()


def _clear_tower_caches():
  """Forget the per-process tower functions and weights read so far (after a swap)."""
  from xmr_jax.backbones import text_towers
  from xmr_jax.training import state as state_lib
  text_towers.states_fn.cache_clear()
  state_lib._load_pretrained.cache_clear()


@pytest.fixture
def small_text_tower(monkeypatch):
  """MiniLM swapped for ``install_small_text_tower``'s stand-in for one test."""
  install_small_text_tower(monkeypatch.setitem)
  yield
  _clear_tower_caches()
