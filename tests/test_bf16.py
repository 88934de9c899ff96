"""Mixed precision (``config.model.dtype``, xmr_jax/models/precision.py): with "bfloat16" every
method's matrix products take bfloat16 operands (checked on the jaxpr, so a no-op fails),
scores stay float32 and within 0.05 of float32 from the same parameters, parameters and
optimiser state stay float32 through a train step, and a bad value is a ConfigError."""
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli, tiny_config
from xmr_jax.common import hardware, mesh as mesh_lib
from xmr_jax.common.errors import ConfigError
from xmr_jax.models import precision
from xmr_jax.models.registry import get_method
from xmr_jax.training import config_check, loop, step as step_lib
from xmr_jax.training import state as state_lib
from xmr_jax.types import image_inputs, text_inputs

CASES = {
    "vsepp": ("vsepp", dict(embed_dim=16, word_dim=8)),
    "vsepp_pixels": ("vsepp", dict(embed_dim=16, word_dim=8, image_input="pixels")),
    "pcme": ("pcme", dict(embed_dim=16, word_dim=8, num_samples=3)),
    "defrag": ("defrag", dict(embed_dim=16, word_dim=8)),
    "sgraf_sgr": ("sgraf", dict(embed_dim=8, word_dim=6, sim_dim=6, sgr_steps=2, variant="sgr")),
    "sgraf_saf": ("sgraf", dict(embed_dim=8, word_dim=6, sim_dim=6, variant="saf")),
    "mmca": ("mmca", dict(embed_dim=16, word_dim=8)),
}
RNGS = lambda: {"sampling": jax.random.key(0), "dropout": jax.random.key(1)}


def _sub_jaxprs(value):
  """Jaxprs nested in an equation parameter (pjit, scan, cond branches, custom_vjp, ...)."""
  if hasattr(value, "eqns"):
    yield value
  elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def dot_dtypes(jaxpr):
  """Operand and result dtypes of every dot_general / conv in ``jaxpr`` and its sub-jaxprs."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
      out.append((tuple(str(v.aval.dtype) for v in eqn.invars), str(eqn.outvars[0].aval.dtype)))
    for p in eqn.params.values():
      for sub in _sub_jaxprs(p):
        out.extend(dot_dtypes(sub))
  return out


def _setup(case, tiny_data_dir, dtype="float32"):
  name, dims = CASES[case]
  config = tiny_config(name, tiny_data_dir, dtype=dtype, **dims)
  return config, loop.setup(config)


def _run(model, images, texts):
  img = model.encode_images(images, train=False)
  return model.score(img, model.encode_texts(texts, train=False))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bfloat16_scores_match_float32(tiny_data_dir, case):
  config, (ds, method32, _, _, state) = _setup(case, tiny_data_dir)
  config.model.dtype = "bfloat16"
  method16 = get_method(config, ds.info)
  assert method16.key != method32.key          # evaluation caches never mix the dtypes
  variables = state_lib.variables_of(state)
  batch = ds.sample_batch(8)
  images, texts = image_inputs(batch), text_inputs(batch)
  score = lambda m: lambda v: m.model.apply(v, images, texts, method=_run, rngs=RNGS())
  s32, s16 = np.asarray(score(method32)(variables)), np.asarray(score(method16)(variables))
  assert s16.dtype == np.float32 and s16.shape == s32.shape
  dev = float(np.max(np.abs(s16 - s32)))
  print(f"{case}: max |bf16 - fp32| score = {dev:.4f} (scale {np.max(np.abs(s32)):.3f})")
  assert dev < 0.05
  # The bfloat16 path really computes in bfloat16 (a no-op setting fails here) and
  # accumulates in float32; the float32 path has no bfloat16 anywhere.
  dots16 = dot_dtypes(jax.make_jaxpr(score(method16))(variables).jaxpr)
  dots32 = dot_dtypes(jax.make_jaxpr(score(method32))(variables).jaxpr)
  assert dots16 and all(ins == ("bfloat16", "bfloat16") and out == "float32"
                        for ins, out in dots16), dots16
  assert all("bfloat16" not in ins for ins, _ in dots32)
  # score itself (the evaluation tiles), not only the encoders, runs in bfloat16.
  reprs = method16.model.apply(variables, images, texts, rngs=RNGS(), train=False)[:2]
  tile = lambda v: method16.model.apply(v, *reprs, method="score")
  assert any(ins == ("bfloat16", "bfloat16")
             for ins, _ in dot_dtypes(jax.make_jaxpr(tile)(variables).jaxpr))


@pytest.mark.parametrize("case", ["vsepp", "pcme", "sgraf_sgr", "sgraf_saf", "mmca", "defrag"])
def test_bfloat16_train_step_keeps_float32_state(tiny_data_dir, case):
  config, (ds, method, tx, hparams, state) = _setup(case, tiny_data_dir, "bfloat16")
  mesh = mesh_lib.make_data_mesh(1)
  step = step_lib.make_train_step(method, tx, decay_steps=0, decay_factor=0.1,
                                  steps_per_epoch=10, mesh=mesh)
  batch = next(ds.train_iterator(config.train.batch_size, seed=0))
  before = jax.tree.map(np.asarray, state["params"])
  new, metrics = step(mesh_lib.replicate(state, mesh), mesh_lib.global_batch(batch, mesh),
                      mesh_lib.replicate(hparams, mesh))
  assert np.isfinite(float(metrics["loss"]))
  floats = [x for x in jax.tree.leaves(new) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), new["params"],
                       before)
  assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.parametrize("value", ["float16", "bf16", ""])
def test_bad_dtype_is_a_config_error_naming_the_choices(tiny_data_dir, value):
  config = tiny_config("vsepp", tiny_data_dir, dtype=value)
  with pytest.raises(ConfigError, match=r"config.model.dtype=.*'float32', 'bfloat16'"):
    loop.setup(config)


def test_dtype_is_read_by_every_method():
  for name in ("vsepp", "pcme", "defrag", "sgraf", "mmca"):
    path = os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"cfg_bf16_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("runlocal")
    assert c.model.dtype == "auto"
    config_check.check_overrides(c, {"model.dtype": "bfloat16"})   # not reported unused


def test_vsepp_runlocal_bfloat16_reaches_float32_rsum(tmp_path):
  """The README's end-to-end claim, for the fastest method (~45 s a run on 2 CPU cores):
  ``configs/vsepp.py:runlocal`` with ``model.dtype=bfloat16`` reaches a test rsum within 3
  points of float32 (measured 266.6 vs 266.1). Run as the command line at XLA's default
  optimisation level (225 training steps each: the run time is the program's, not the
  compiler's)."""
  rsum = {}
  for dtype in ("float32", "bfloat16"):
    workdir = tmp_path / dtype
    out = run_cli("--config=configs/vsepp.py:runlocal", f"--config.model.dtype={dtype}",
                  f"--workdir={workdir}", optimised=True)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(workdir / "eval" / "results.json") as f:
      rsum[dtype] = json.load(f)["rsum"]
  assert abs(rsum["bfloat16"] - rsum["float32"]) < 3.0, rsum


class _Gpu:
  platform = "gpu"
  device_kind = "NVIDIA test"

  def __init__(self, capability):
    self.compute_capability = capability


@pytest.mark.parametrize("backend,device,flags,want", [
    ("tpu", object(), None, "bfloat16"),
    ("gpu", _Gpu("9.0"), None, "bfloat16"),          # H100 / H200
    ("gpu", _Gpu("8.0"), None, "bfloat16"),          # A100
    ("gpu", _Gpu("7.0"), None, "float32"),           # V100: no bfloat16 tensor cores
    ("gpu", _Gpu(None), None, "float32"),            # unknown: no claim
    ("cpu", object(), {"avx512_bf16": True, "amx_bf16": False}, "bfloat16"),
    ("cpu", object(), {"avx512_bf16": False, "amx_bf16": True}, "bfloat16"),
    ("cpu", object(), {"avx512_bf16": False, "amx_bf16": False, "avx512f": True}, "float32"),
    ("cpu", object(), {"avx512_bf16": None, "amx_bf16": None}, "float32"),   # no cpuinfo
])
def test_auto_dtype_is_bfloat16_only_with_bfloat16_units(monkeypatch, backend, device, flags,
                                                        want):
  monkeypatch.delenv(hardware.AUTO_DTYPE_ENV, raising=False)
  dtype, reason = hardware.auto_dtype(backend, device, flags)
  assert dtype == want and reason


def test_auto_dtype_env_override_and_its_bad_value(monkeypatch):
  monkeypatch.setenv(hardware.AUTO_DTYPE_ENV, "bfloat16")
  assert hardware.auto_dtype("cpu", object(), {"avx512_bf16": False})[0] == "bfloat16"
  monkeypatch.setenv(hardware.AUTO_DTYPE_ENV, "fp16")
  with pytest.raises(ConfigError, match="XMR_JAX_AUTO_DTYPE='fp16'.*float32 or bfloat16"):
    hardware.auto_dtype("cpu", object(), {})


def test_resolve_auto_writes_the_concrete_dtype_and_says_why(tiny_data_dir, monkeypatch):
  monkeypatch.setenv(hardware.AUTO_DTYPE_ENV, "bfloat16")
  config = tiny_config("vsepp", tiny_data_dir, dtype="auto")
  assert precision.read_dtype(config.model) == "bfloat16"
  line = precision.resolve_auto(config)
  assert config.model.dtype == "bfloat16"
  assert "model.dtype=auto -> bfloat16" in line and hardware.AUTO_DTYPE_ENV in line
  assert precision.resolve_auto(config) is None and config.model.dtype == "bfloat16"
  config.model.dtype = "float16"
  with pytest.raises(ConfigError, match="config.model.dtype='float16'"):
    precision.resolve_auto(config)
