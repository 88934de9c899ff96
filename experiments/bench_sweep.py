"""Benchmark: a vmapped sweep of K variants vs. K sequential runs; 1 vs. N (fake) devices.

  python experiments/bench_sweep.py --out=/tmp/bench_sweep.json [--k=8] [--steps=30]

Part 1 (same process, same machine): K variants of a small VSE++ config trained for ``steps``
steps as one vmapped program (``sweep.make_sweep_step``) vs. one after another with the plain
jitted step (the K runs share the compiled step, as a script looping over margins would).
Both timings include compilation; the steady-state time per step is reported too.
Part 2 (informational): training throughput (pairs/s) on 1 device vs. the data mesh over
``--devices`` fake CPU devices, in a subprocess with ``--xla_force_host_platform_device_count``.
On a CPU the fake devices share the same cores, so this measures overhead, not speed-up.
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)   # run from a checkout without installing


def _config(data_dir: str, batch_size: int):
  from xmr_jax.config_utils import config_path, load_config
  c = load_config(config_path(__file__, "..", "configs", "vsepp.py"), "runlocal")
  if data_dir:
    c.data.name, c.data.dir = "precomp", data_dir
  c.model.embed_dim, c.model.word_dim = 64, 32
  c.train.batch_size = batch_size
  return c


def bench_sweep(k: int, steps: int, data_dir: str = "", batch_size: int = 32) -> dict:
  """Wall-clock of K vmapped variants vs. K sequential runs (compile included)."""
  import jax
  import numpy as np
  from xmr_jax.common import mesh as mesh_lib
  from xmr_jax.training import loop, state as state_lib, step as step_lib
  c = _config(data_dir, batch_size)
  ds, method, tx, base, _ = loop.setup(c)
  sample = ds.sample_batch(batch_size)
  it = ds.train_iterator(batch_size, seed=0)
  mesh = mesh_lib.make_data_mesh(1)
  batches = [mesh_lib.global_batch(next(it), mesh) for _ in range(steps)]
  variants = [dict(name=f"m{i}", hparams=dict(margin=0.1 + 0.05 * i), seed=i) for i in range(k)]
  kw = dict(decay_steps=0, decay_factor=0.1, steps_per_epoch=1000, mesh=mesh)

  t0 = time.perf_counter()
  states = state_lib.init_states(method, sample, tx, [v["seed"] for v in variants])
  states = mesh_lib.replicate(states, mesh)
  hp = mesh_lib.replicate(state_lib.stack_hparams(base, variants), mesh)
  fn = step_lib.make_train_step(method, tx, stacked=True, **kw)
  for i, b in enumerate(batches):
    if i == 1:
      jax.block_until_ready(states)
      t_first = time.perf_counter()
    states, m = fn(states, b, hp)
  jax.block_until_ready(states)
  t_vmap = time.perf_counter() - t0
  vmap_step = (time.perf_counter() - t_first) / max(steps - 1, 1)

  t0 = time.perf_counter()
  one = step_lib.make_train_step(method, tx, **kw)
  steady = []
  for v in variants:
    state = mesh_lib.replicate(state_lib.init_state(method, sample, tx, v["seed"]), mesh)
    h = mesh_lib.replicate(dict(base, margin=np.float32(v["hparams"]["margin"])), mesh)
    for i, b in enumerate(batches):
      if i == 1:
        jax.block_until_ready(state)
        ts = time.perf_counter()
      state, _ = one(state, b, h)
    jax.block_until_ready(state)
    steady.append((time.perf_counter() - ts) / max(steps - 1, 1))
  t_seq = time.perf_counter() - t0
  return {"k": k, "steps": steps, "batch_size": batch_size, "backend": jax.default_backend(),
          "vmapped_total_s": t_vmap, "sequential_total_s": t_seq,
          "speedup_total": t_seq / t_vmap,
          "vmapped_step_s": vmap_step, "sequential_step_s_per_run": float(np.mean(steady)),
          "speedup_steady": k * float(np.mean(steady)) / vmap_step}


_DEVICES = """
import json, sys, time
sys.path.insert(0, {repo!r})
sys.argv = ['x']
import jax
from experiments.bench_sweep import _config
from xmr_jax.common import mesh as mesh_lib
from xmr_jax.training import loop, step as step_lib
c = _config({data!r}, {bs})
ds, method, tx, hp, state = loop.setup(c)
it = ds.train_iterator({bs}, seed=0)
batches = [next(it) for _ in range({steps})]
kw = dict(decay_steps=0, decay_factor=0.1, steps_per_epoch=1000)
out = {{}}
for n in (1, jax.device_count()):
  mesh = mesh_lib.make_data_mesh(n)
  fn = step_lib.make_train_step(method, tx, mesh=mesh, **kw)
  s = mesh_lib.replicate(jax.tree.map(lambda x: x.copy(), state), mesh)
  h = mesh_lib.replicate(hp, mesh)
  place = lambda b: mesh_lib.global_batch(b, mesh)
  s, _ = fn(s, place(batches[0]), h); jax.block_until_ready(s)
  t0 = time.perf_counter()
  for b in batches[1:]:
    s, _ = fn(s, place(b), h)
  jax.block_until_ready(s)
  out[str(n)] = {bs} * (len(batches) - 1) / (time.perf_counter() - t0)
print("RESULT" + json.dumps(out))
"""


def bench_devices(n: int, steps: int, data_dir: str = "", batch_size: int = 32) -> dict:
  """Pairs/s on 1 device vs. an n-device fake CPU mesh (subprocess)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
  code = _DEVICES.format(repo=REPO, data=data_dir, bs=batch_size, steps=steps)
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                       text=True, check=True)
  line = [l for l in out.stdout.splitlines() if l.startswith("RESULT")][-1]
  res = json.loads(line[len("RESULT"):])
  return {"pairs_per_s_1_device": res["1"], f"pairs_per_s_{n}_fake_devices": res[str(n)],
          "note": "fake CPU devices share the same cores: overhead, not speed-up"}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="bench_sweep.json")
  p.add_argument("--k", type=int, default=8)
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--data_dir", default="", help="precomp dir; default: runlocal synthetic")
  a = p.parse_args()
  result = {"sweep": bench_sweep(a.k, a.steps, a.data_dir, a.batch_size)}
  if a.devices > 1:
    result["devices"] = bench_devices(a.devices, a.steps, a.data_dir, a.batch_size)
  from xmr_jax.common.io import atomic_write_json
  atomic_write_json(a.out, result)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
