"""SGRAF throughput: score pairs/s and train-step time, with achieved GFLOP/s.

  python experiments/bench_sgraf.py --out=/tmp/bench_sgraf.json [--train_paper]

Measures, for both variants (SGR, SAF):
* ``score``: eval-mode ``SGRAFHead.similarity`` on one tile of images x captions (caption
  lengths uniform in 8..20, padded to 20) at paper dims (36 x 1024, sim 256) and at the
  synthetic config's dims (36 x 128, sim 32, lengths 10..16 padded to 16);
* ``train``: one jitted SGD step of the whole ``SGRAF`` model at batch 128 (B x B pairs,
  train-mode BatchNorms, dropout) at the synthetic dims (paper dims with ``--train_paper``);
* a plain fp32 GEMM (2048^3) on the same machine at the same time, as the attainable peak
  (the machine may be shared; the nominal 2-core peak is ~150-170 GFLOP/s).

FLOPs are counted analytically (``pair_flops``: the matmul FLOPs per image-caption pair at the
padded caption length, as the kernels compute them; XLA's cost analysis counts a ``lax.map``
body once, so it is not used). Train GFLOP/s use the usual 3 x forward (no remat recompute).
Writes one JSON.
"""
import argparse
import json
import platform
import time
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from xmr_jax.models import sgraf as M

PAPER = dict(region_dim=2048, embed_dim=1024, sim_dim=256, word_dim=300, min_len=8, max_len=20)
SYNTH = dict(region_dim=128, embed_dim=128, sim_dim=32, word_dim=64, min_len=10, max_len=16)


def _time(fn: Callable, *args, repeats: int) -> Dict[str, float]:
  jax.block_until_ready(fn(*args))                     # compile + warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return {"median_s": float(np.median(times)), "min_s": float(np.min(times))}


def pair_flops(dims: Dict[str, int], variant: str, regions: int = 36, steps: int = 3) -> float:
  """Forward matmul FLOPs of one image-caption pair (padded length L, N = L + 1 nodes)."""
  d, s, length = dims["embed_dim"], dims["sim_dim"], dims["max_len"]
  n = length + 1
  flops = 2 * 2 * regions * length * d        # region-word scores + attended vectors
  flops += 2 * length * d * s + 2 * d * s     # local and global similarity projections
  if variant == "sgr":                        # folded query/key: 2 N S^2 + 2 N S^2 + 4 N^2 S
    flops += (steps - 1) * (4 * n * s * s + 4 * n * n * s) + 4 * s * s + 4 * n * s
  else:
    flops += 4 * n * s
  return float(flops + 2 * s)


def _reprs(rng, n_img, n_txt, dims, regions=36):
  l2 = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  d, length = dims["embed_dim"], dims["max_len"]
  lens = rng.integers(dims["min_len"], length + 1, size=n_txt)
  mask = np.arange(length)[None] < lens[:, None]
  img = dict(local=l2(rng.normal(size=(n_img, regions, d))).astype(np.float32),
             mask=np.ones((n_img, regions), bool),
             glo=l2(rng.normal(size=(n_img, d))).astype(np.float32))
  txt = dict(local=(l2(rng.normal(size=(n_txt, length, d))) * mask[..., None]).astype(np.float32),
             mask=mask, glo=l2(rng.normal(size=(n_txt, d))).astype(np.float32))
  return img, txt


def bench_score(variant: str, dims: Dict[str, int], n_img: int, n_txt: int,
                repeats: int) -> Dict[str, Any]:
  """Eval-mode scores of one n_img x n_txt tile."""
  rng = np.random.default_rng(0)
  img, txt = _reprs(rng, n_img, n_txt, dims)
  head = M.SGRAFHead(dims["embed_dim"], dims["sim_dim"], 36, variant)
  v = head.init(jax.random.PRNGKey(0), img["local"][:1], img["mask"][:1], txt["local"][:1],
                txt["mask"][:1])
  fn = jax.jit(lambda v, i, t: head.apply(v, i, t, method=M.SGRAFHead.similarity))
  t = _time(fn, v, img, txt, repeats=repeats)
  pairs = n_img * n_txt
  flops = pair_flops(dims, variant) * pairs
  return dict(variant=variant, dims=dims, tile=[n_img, n_txt], **t,
              pairs_per_s=pairs / t["median_s"], flops=flops,
              gflops_per_s=flops / t["median_s"] / 1e9)


def bench_train(variant: str, dims: Dict[str, int], batch: int, repeats: int) -> Dict[str, Any]:
  """One SGD step of the whole model (forward, B x B scores, loss, backward, update)."""
  rng = np.random.default_rng(0)
  length = dims["max_len"]
  lens = rng.integers(dims["min_len"], length + 1, size=batch)
  mask = np.arange(length)[None] < lens[:, None]
  images = dict(regions=rng.normal(size=(batch, 36, dims["region_dim"])).astype(np.float32),
                region_mask=np.ones((batch, 36), bool))
  texts = dict(tokens=(rng.integers(1, 1000, size=(batch, length)) * mask).astype(np.int32),
               token_mask=mask)
  model = M.SGRAF(vocab_size=1000, region_dim=dims["region_dim"], word_dim=dims["word_dim"],
                  embed_dim=dims["embed_dim"], sim_dim=dims["sim_dim"], variant=variant,
                  remat=True)
  v = jax.jit(lambda k: model.init({"params": k}, images, texts, train=False))(
      jax.random.PRNGKey(0))

  def loss(params, stats, key):
    (_, _, s), upd = model.apply({"params": params, "batch_stats": stats}, images, texts,
                                 train=True, rngs={"dropout": key}, mutable=["batch_stats"])
    return M.sgraf_loss(None, None, s, {"margin": jnp.float32(0.2)}, None)[0], upd

  @jax.jit
  def step(params, stats, key):
    (value, upd), grads = jax.value_and_grad(loss, has_aux=True)(params, stats, key)
    return jax.tree.map(lambda p, g: p - 1e-4 * g, params, grads), upd["batch_stats"], value

  args = (v["params"], v["batch_stats"], jax.random.PRNGKey(1))
  t = _time(step, *args, repeats=repeats)
  flops = 3 * pair_flops(dims, variant) * batch * batch
  return dict(variant=variant, dims=dims, batch=batch, **t, flops=flops,
              gflops_per_s=flops / t["median_s"] / 1e9)


def bench_gemm(n: int = 2048, repeats: int = 5) -> Dict[str, float]:
  x = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)).astype(np.float32))
  t = _time(jax.jit(lambda a: a @ a), x, repeats=repeats)
  return dict(n=n, **t, gflops_per_s=2 * n ** 3 / t["median_s"] / 1e9)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="bench_sgraf.json")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--paper_tile", default="32,128", help="images,captions of the paper-dims tile")
  p.add_argument("--synth_tile", default="128,128", help="images,captions at synthetic dims")
  p.add_argument("--train_paper", action="store_true", help="also time a paper-dims train step")
  args = p.parse_args()
  results = dict(backend=jax.default_backend(), devices=[str(d) for d in jax.devices()],
                 machine=platform.processor() or platform.machine(), gemm_before=bench_gemm())
  pt, st = ([int(x) for x in s.split(",")] for s in (args.paper_tile, args.synth_tile))
  results["score"] = [bench_score(v, dims, *tile, repeats=args.repeats)
                      for dims, tile in ((PAPER, pt), (SYNTH, st)) for v in ("sgr", "saf")]
  train_dims = (SYNTH, PAPER) if args.train_paper else (SYNTH,)
  results["train"] = [bench_train(v, dims, 128, repeats=args.repeats)
                      for dims in train_dims for v in ("sgr", "saf")]
  results["gemm_after"] = bench_gemm()
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  for r in results["score"]:
    print(f"score {r['variant']} D={r['dims']['embed_dim']} tile={r['tile']}: "
          f"{r['pairs_per_s']:.0f} pairs/s, {r['gflops_per_s']:.1f} GFLOP/s")
  for r in results["train"]:
    print(f"train {r['variant']} D={r['dims']['embed_dim']} B=128: {r['median_s']:.2f} s/step, "
          f"{r['gflops_per_s']:.1f} GFLOP/s")
  print(f"fp32 GEMM: {results['gemm_before']['gflops_per_s']:.1f} / "
        f"{results['gemm_after']['gflops_per_s']:.1f} GFLOP/s (before / after)")


if __name__ == "__main__":
  main()
