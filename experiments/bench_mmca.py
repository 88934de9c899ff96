"""Benchmark MMCA's per-pair cross-attention: scoring pairs/s and train-step time, with the
achieved GFLOP/s against a measured fp32 matmul peak on this machine. Prints JSON.

  python experiments/bench_mmca.py --out /tmp/bench_mmca.json
  python experiments/bench_mmca.py --settings synthetic --train_batch 128

FLOPs come from ``xmr_jax.kernels.cross_attention.pair_flops`` (the pairwise part only; the
per-image/per-caption work is amortised and excluded, so GFLOP/s is a slight underestimate).
A train step is counted as 3× the forward FLOPs of its B × B pairs. Timings use wall time and
also report process CPU time (on a machine shared with other jobs, CPU time / threads is the
better estimate of the unloaded wall time).
"""
import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from configs import mmca as mmca_config  # noqa: E402
from xmr_jax.kernels import cross_attention as ca  # noqa: E402
from xmr_jax.models import mmca  # noqa: E402
from xmr_jax.types import DataInfo  # noqa: E402

# name -> (config arg, region feature dim, caption length)
SETTINGS = {"synthetic": ("", 128, 16), "paper": ("data=f30k", 2048, 32)}


def _timed(fn, *args, repeats: int):
  jax.block_until_ready(fn(*args))                     # compile + warm up
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / repeats, (time.process_time() - c0) / repeats


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """Measured fp32 GFLOP/s of an n × n matmul (the roofline we compare against)."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  wall, _ = _timed(jax.jit(lambda x: x @ x), a, repeats=repeats)
  return 2 * n ** 3 / wall / 1e9


def _inputs(n_img, n_txt, feat, length, vocab, seed=0):
  rng = np.random.default_rng(seed)
  images = dict(regions=rng.normal(size=(n_img, 36, feat)).astype(np.float32),
                region_mask=np.ones((n_img, 36), bool))
  lengths = rng.integers(max(2, length // 2), length + 1, size=n_txt)
  mask = np.arange(length)[None] < lengths[:, None]
  texts = dict(tokens=np.where(mask, rng.integers(1, vocab, (n_txt, length)), 0).astype(np.int32),
               token_mask=mask)
  return images, texts


def bench_setting(name: str, n_img: int, n_txt: int, train_batch: int, repeats: int):
  arg, feat, length = SETTINGS[name]
  config = mmca_config.get_config(arg)
  m = config.model
  vocab = 1000
  method = mmca.build_method(config.model, DataInfo(vocab_size=vocab, region_dim=feat, num_regions=36))
  model = method.model
  images, texts = _inputs(max(n_img, train_batch), max(n_txt, train_batch), feat, length, vocab)
  params = jax.jit(lambda k: model.init({"params": k}, images, texts, train=False))(
      jax.random.PRNGKey(0))["params"]
  flops = ca.pair_flops(36, length, m.embed_dim, m.ffn_dim, m.conv_dim, m.embed_dim,
                        tuple(m.windows))["pair_total"]
  out = dict(setting=name, dims=dict(m.to_dict()), caption_length=length, region_dim=feat,
             pair_gflop=flops / 1e9)

  enc = jax.jit(lambda p, i, t: (model.apply({"params": p}, i, train=False,
                                             method="encode_images"),
                                 model.apply({"params": p}, t, train=False,
                                             method="encode_texts")))
  sub = lambda tree, n: jax.tree.map(lambda x: x[:n], tree)
  img, txt = enc(params, sub(images, n_img), sub(texts, n_txt))
  score = jax.jit(lambda p, i, t: model.apply({"params": p}, i, t, method="score"))
  wall, cpu = _timed(score, params, img, txt, repeats=repeats)
  pairs = n_img * n_txt
  out["score"] = dict(pairs=pairs, wall_s=wall, cpu_s=cpu, pairs_per_s=pairs / wall,
                      gflops=pairs * flops / wall / 1e9)

  tx = optax.chain(optax.clip_by_global_norm(config.train.grad_clip), optax.adam(1e-4))
  hp = {"margin": jnp.float32(config.hparams.margin)}

  def step(p, opt, i, t):
    def loss(p):
      a, b, s = model.apply({"params": p}, i, t, train=True)
      return method.loss_fn(a, b, s, hp, None)[0]
    value, grads = jax.value_and_grad(loss)(p)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt, value

  batch_i, batch_t = sub(images, train_batch), sub(texts, train_batch)
  step = jax.jit(step)
  opt = tx.init(params)
  wall, cpu = _timed(lambda p, o: step(p, o, batch_i, batch_t)[2], params, opt, repeats=repeats)
  out["train_step"] = dict(batch=train_batch, wall_s=wall, cpu_s=cpu,
                           gflops=3 * train_batch ** 2 * flops / wall / 1e9)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--settings", default="synthetic,paper")
  parser.add_argument("--synthetic_grid", default="128,256", help="images,captions scored")
  parser.add_argument("--paper_grid", default="8,32")
  parser.add_argument("--train_batch", type=int, default=128, help="synthetic train batch")
  parser.add_argument("--paper_train_batch", type=int, default=8,
                      help="paper-dims train batch (128 needs ~55 TFLOP per step)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="")
  a = parser.parse_args()
  peak = matmul_peak()
  result = dict(device=str(jax.devices()[0]), cpu_count=os.cpu_count(),
                matmul_peak_gflops=peak, settings=[])
  for name in a.settings.split(","):
    grid = a.synthetic_grid if name == "synthetic" else a.paper_grid
    n_img, n_txt = (int(x) for x in grid.split(","))
    batch = a.train_batch if name == "synthetic" else a.paper_train_batch
    r = bench_setting(name, n_img, n_txt, batch, a.repeats)
    for part in ("score", "train_step"):
      r[part]["fraction_of_peak"] = r[part]["gflops"] / peak
    result["settings"].append(r)
    print(json.dumps(r), file=sys.stderr, flush=True)
  text = json.dumps(result, indent=2)
  print(text)
  if a.out:
    with open(a.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
