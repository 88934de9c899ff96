"""SGRAF throughput against the official PyTorch code, same shapes, same machine, one run.

  python experiments/bench_sgraf.py --out=bench_sgraf.json \
      [--official_python=/work/torchvenv/bin/python --official_root=/work/official]

Shapes (``DIMS``): ``paper`` (36 regions x 2048 -> 1024, sim 256, word 300), ``small`` (the
official benchmark's small shape: 16 regions x 128 -> 256, sim 64, word 128) and
``synthetic`` (this repo's default config: 36 x 128 -> 128, sim 32, word 64). Captions of 8-20
words (synthetic: 10-16), as ``experiments/official_bench.py``.

Measures, for SGR and SAF:
* ``score``: eval-mode scores of an images x captions grid through the evaluation engine
  (``engine.score_all``: caption tiles grouped by length, padding trimmed; the ``engine``
  numbers are what a user's evaluation gets), and of one tile padded to the longest caption
  (``tile``: the kernel alone, every caption padded);
* ``train``: one jitted SGD step of the whole ``SGRAF`` model at batch 128 (encoders, B x B
  train-mode scores, hardest-negative loss, backward): SGR with and without
  ``sparse_backward``, SAF (its per-caption BatchNorm statistics couple the pairs, so it
  always takes the dense backward);
* a 2048^3 fp32 GEMM before and after, as the attainable matmul peak at that moment (and a
  bfloat16-operand, float32-accumulating one when bfloat16 is timed).

``--dtypes=float32,bfloat16`` times every entry in each ``model.dtype`` (bfloat16 matmul
operands, float32 accumulation; xmr_jax/models/precision.py) in one run; ``dtype_speedup``
is then bfloat16 speed / float32 speed per entry (> 1: bfloat16 faster), and ``cpu`` records
the CPU's bfloat16 flags (``avx512_bf16``, ``amx_bf16``) from /proc/cpuinfo.

With ``--official_python`` the official code is then timed by ``official_bench.py --only
sgraf`` (in that interpreter: a torch venv; see experiments/README_official.md) right after,
on the same shapes, and the JSON gets ``ratio_vs_official`` (> 1 = xmr_jax faster).

FLOPs are counted analytically (``pair_flops``: matmul FLOPs of one pair at the padded caption
length, as the kernels compute them); train GFLOP/s use 3 x forward over the B x B pairs (the
dense backward; the sparse one does less work, so its GFLOP/s is an "effective" rate).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from xmr_jax.common.hardware import cpu_bf16_flags
from xmr_jax.evaluation import engine
from xmr_jax.models import sgraf as M
from xmr_jax.models.registry import Method

DIMS = {
    "paper": dict(regions=36, region_dim=2048, embed_dim=1024, sim_dim=256, word_dim=300,
                  min_len=8, max_len=20),
    "small": dict(regions=16, region_dim=128, embed_dim=256, sim_dim=64, word_dim=128,
                  min_len=8, max_len=20),
    "synthetic": dict(regions=36, region_dim=128, embed_dim=128, sim_dim=32, word_dim=64,
                      min_len=10, max_len=16),
}
VOCAB = 10000     # as official_bench.py


def _time(fn: Callable, *args, repeats: int) -> Dict[str, float]:
  jax.block_until_ready(fn(*args))                     # compile + warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return {"median_s": float(np.median(times)), "min_s": float(np.min(times))}


def pair_flops(dims: Dict[str, int], variant: str, length: int, steps: int = 3) -> float:
  """Forward matmul FLOPs of one image-caption pair at caption length ``length``."""
  d, s, r, n = dims["embed_dim"], dims["sim_dim"], dims["regions"], length + 1
  flops = 2 * 2 * r * length * d              # region-word scores + attended vectors
  flops += 2 * length * d * s + 2 * d * s     # local and global similarity projections
  if variant == "sgr":                        # folded query/key: 2 N S^2 + 2 N S^2 + 4 N^2 S
    flops += (steps - 1) * (4 * n * s * s + 4 * n * n * s) + 4 * s * s + 4 * n * s
  else:
    flops += 4 * n * s
  return float(flops + 2 * s)


def _model(variant: str, dims: Dict[str, int], **kw) -> M.SGRAF:
  return M.SGRAF(vocab_size=VOCAB, region_dim=dims["region_dim"], word_dim=dims["word_dim"],
                 embed_dim=dims["embed_dim"], sim_dim=dims["sim_dim"],
                 num_regions=dims["regions"], variant=variant, remat=True, **kw)


def _batch(rng, b: int, dims: Dict[str, int]):
  lens = rng.integers(dims["min_len"], dims["max_len"] + 1, size=b)
  mask = np.arange(dims["max_len"])[None] < lens[:, None]
  images = dict(regions=rng.normal(size=(b, dims["regions"], dims["region_dim"])).astype(
      np.float32), region_mask=np.ones((b, dims["regions"]), bool))
  texts = dict(tokens=(rng.integers(1, VOCAB, size=(b, dims["max_len"])) * mask).astype(np.int32),
               token_mask=mask)
  return images, texts, lens


def _reprs(rng, n_img: int, n_txt: int, dims: Dict[str, int]):
  """l2-normalised region / word embeddings and global vectors, as the encoders leave them."""
  l2 = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  d, length, r = dims["embed_dim"], dims["max_len"], dims["regions"]
  lens = rng.integers(dims["min_len"], length + 1, size=n_txt)
  mask = np.arange(length)[None] < lens[:, None]
  img = dict(local=l2(rng.normal(size=(n_img, r, d))).astype(np.float32),
             mask=np.ones((n_img, r), bool), glo=l2(rng.normal(size=(n_img, d))).astype(np.float32))
  txt = dict(local=(l2(rng.normal(size=(n_txt, length, d))) * mask[..., None]).astype(np.float32),
             mask=mask, glo=l2(rng.normal(size=(n_txt, d))).astype(np.float32))
  return img, txt, lens


def bench_score(variant: str, shape: str, n_img: int, n_txt: int, tile_texts: int,
                repeats: int, dtype: str = "float32") -> Dict[str, Any]:
  """Scores of an n_img x n_txt grid: through the engine (length groups) and as one tile."""
  dims = DIMS[shape]
  rng = np.random.default_rng(0)
  img, txt, lens = _reprs(rng, n_img, n_txt, dims)
  model = _model(variant, dims, dtype=dtype)
  images, texts, _ = _batch(rng, 2, dims)
  v = jax.jit(lambda k: model.init({"params": k}, images, texts, train=False))(
      jax.random.PRNGKey(0))
  method = Method("sgraf", model, M.sgraf_loss, text_padding=("mask", ("local",)))
  pairs = n_img * n_txt
  res = dict(variant=variant, shape=shape, dtype=dtype, dims=dims, grid=[n_img, n_txt],
             caption_len_mean=float(lens.mean()))
  # The engine: the whole grid, caption tiles of tile_texts grouped by length.
  run = lambda: engine.score_all(method, v, img, txt, tile_images=n_img, tile_texts=tile_texts,
                                 length_groups=4)
  t = _time(run, repeats=repeats)
  flops = sum(pair_flops(dims, variant, int(n)) for n in lens) * n_img   # at the true lengths
  res["engine"] = dict(t, tile=[n_img, tile_texts], length_groups=4,
                       pairs_per_s=pairs / t["median_s"],
                       gflops_per_s_true_lengths=flops / t["median_s"] / 1e9)
  # One tile, every caption padded to the longest.
  sub = jax.tree.map(lambda a: a[:tile_texts], txt)
  fn = jax.jit(lambda v, i, t: model.apply(v, i, t, method=M.SGRAF.score))
  t = _time(fn, v, img, sub, repeats=repeats)
  tile_pairs = n_img * tile_texts
  flops = pair_flops(dims, variant, dims["max_len"]) * tile_pairs
  res["tile"] = dict(t, tile=[n_img, tile_texts], pairs_per_s=tile_pairs / t["median_s"],
                     gflops_per_s=flops / t["median_s"] / 1e9)
  return res


def bench_train(variant: str, shape: str, batch: int, repeats: int,
                sparse_backward: bool = True, dtype: str = "float32") -> Dict[str, Any]:
  """One SGD step of the whole model (forward, B x B scores, loss, backward, update)."""
  dims = DIMS[shape]
  images, texts, lens = _batch(np.random.default_rng(0), batch, dims)
  model = _model(variant, dims, sparse_backward=sparse_backward, dtype=dtype)
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

  t = _time(step, v["params"], v["batch_stats"], jax.random.PRNGKey(1), repeats=repeats)
  flops = 3 * pair_flops(dims, variant, dims["max_len"]) * batch * batch
  return dict(variant=variant, shape=shape, dtype=dtype, dims=dims, batch=batch,
              sparse_backward=sparse_backward and variant == "sgr", **t,
              gflops_per_s=flops / t["median_s"] / 1e9)


def bench_gemm(n: int = 2048, repeats: int = 5, dtype: str = "float32") -> Dict[str, float]:
  """An n^3 GEMM: float32, or bfloat16 operands with float32 accumulation."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)).astype(np.float32))
  if dtype == "bfloat16":
    x = x.astype(jnp.bfloat16)
    fn = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
  else:
    fn = jax.jit(lambda a: a @ a)
  t = _time(fn, x, repeats=repeats)
  return dict(n=n, dtype=dtype, **t, gflops_per_s=2 * n ** 3 / t["median_s"] / 1e9)


def dtype_speedup(res: Dict[str, Any]) -> Dict[str, float]:
  """bfloat16 speed / float32 speed of every entry timed in both dtypes (> 1: bf16 faster)."""
  out = {}
  for r in res["score"]:
    if r["dtype"] == "bfloat16":
      for f in res["score"]:
        if f["dtype"] == "float32" and (f["variant"], f["shape"]) == (r["variant"], r["shape"]):
          out[f"score_{r['variant']}_{r['shape']}"] = (r["engine"]["pairs_per_s"]
                                                      / f["engine"]["pairs_per_s"])
  for r in res["train"]:
    if r["dtype"] == "bfloat16":
      for f in res["train"]:
        same = ("variant", "shape", "sparse_backward")
        if f["dtype"] == "float32" and all(f[k] == r[k] for k in same):
          key = f"train_{r['variant']}_{r['shape']}" + ("" if r["sparse_backward"] else "_dense")
          out[key] = f["median_s"] / r["median_s"]
  return out


def run_official(python: str, root: str, budget_s: int) -> Dict[str, Any]:
  """official_bench.py --only sgraf in its own interpreter; returns its JSON."""
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "official_bench.py")
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "official.json")
    cmd = [python, script, "--official-root", root, "--out", out, "--only", "sgraf",
           "--sgraf-threads", "2", "--time-budget-s", str(budget_s)]
    print("running", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, stdout=sys.stdout, stderr=sys.stderr)
    if not os.path.exists(out):
      raise RuntimeError(f"official_bench.py wrote no JSON (exit code {proc.returncode})")
    with open(out) as f:
      return json.load(f)


def ratios(ours: Dict[str, Any], official: Dict[str, Any]) -> Dict[str, float]:
  """xmr_jax speed / official speed at the same shape (> 1: xmr_jax is faster)."""
  out = {}
  off = official.get("sgraf") or {}
  for r in (r for r in ours["score"] if r.get("dtype", "float32") == "float32"):
    o = off.get("score", {}).get(f"{r['variant'].upper()}_{r['shape']}", {})
    if o.get("pairs_per_s"):
      out[f"score_{r['variant']}_{r['shape']}"] = r["engine"]["pairs_per_s"] / o["pairs_per_s"]
      out[f"score_{r['variant']}_{r['shape']}_padded_tile"] = (
          r["tile"]["pairs_per_s"] / o["pairs_per_s"])
  for r in (r for r in ours["train"] if r.get("dtype", "float32") == "float32"):
    o = off.get("train_step", {}).get(f"{r['variant'].upper()}_{r['shape']}", {})
    if o.get("median_s"):
      key = f"train_{r['variant']}_{r['shape']}" + ("" if r["sparse_backward"] else "_dense")
      out[key] = o["median_s"] / r["median_s"]
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="bench_sgraf.json")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--shapes", default="paper,small,synthetic")
  p.add_argument("--grid", default="paper=32x512,small=128x1024,synthetic=128x1024",
                 help="images x captions scored per shape")
  p.add_argument("--tile_texts", type=int, default=128,
                 help="caption tile of the engine; length groups are whole tiles, so the grid "
                 "needs several tiles for grouping to happen (5,000 test captions in tiles of "
                 "512 make 4 groups of 3 tiles)")
  p.add_argument("--no_train", action="store_true", help="scoring only")
  p.add_argument("--train_skip", default="saf:paper",
                 help="variant:shape train steps not timed (the official bench times only SGR; "
                 "a paper-dims SAF step takes ~100 s on 2 cores)")
  p.add_argument("--train_dense", default="small,synthetic",
                 help="shapes where SGR is also timed with sparse_backward off")
  p.add_argument("--official_python", default="", help="a torch venv's python: also time "
                 "the official code (experiments/README_official.md)")
  p.add_argument("--official_root", default="/work/official")
  p.add_argument("--dtypes", default="float32",
                 help="model.dtype values to time, comma-separated (float32,bfloat16)")
  p.add_argument("--official_budget_s", type=int, default=900,
                 help="official_bench.py's time budget (~150 s covers its scoring only)")
  args = p.parse_args()
  shapes = [s for s in args.shapes.split(",") if s]
  grid = {k: [int(x) for x in v.split("x")] for k, v in
          (kv.split("=") for kv in args.grid.split(","))}
  dtypes = [d for d in args.dtypes.split(",") if d]
  res = dict(backend=jax.default_backend(), devices=[str(d) for d in jax.devices()],
             machine=platform.processor() or platform.machine(), jax=jax.__version__,
             cpu=cpu_bf16_flags(), dtypes=dtypes, load_average_start=os.getloadavg(),
             gemm_before=bench_gemm())
  if "bfloat16" in dtypes:
    res["gemm_bf16_before"] = bench_gemm(dtype="bfloat16")
  res["score"] = [bench_score(v, s, *grid[s], args.tile_texts, args.repeats, dtype=dt)
                  for s in shapes for v in ("sgr", "saf") for dt in dtypes]
  skip = set(args.train_skip.split(","))
  res["train"] = [] if args.no_train else [
      bench_train(v, s, 128, args.repeats, dtype=dt) for s in shapes for v in ("sgr", "saf")
      for dt in dtypes if f"{v}:{s}" not in skip]
  res["train"] += [] if args.no_train else [
      bench_train("sgr", s, 128, args.repeats, sparse_backward=False, dtype=dt)
      for s in args.train_dense.split(",") if s in shapes for dt in dtypes]
  res["gemm_after"] = bench_gemm()
  if "bfloat16" in dtypes:
    res["gemm_bf16_after"] = bench_gemm(dtype="bfloat16")
    res["dtype_speedup"] = dtype_speedup(res)
  res["load_average_end"] = os.getloadavg()
  if args.official_python:
    res["official"] = run_official(args.official_python, args.official_root,
                                   args.official_budget_s)
    res["ratio_vs_official"] = ratios(res, res["official"])
  with open(args.out, "w") as f:
    json.dump(res, f, indent=1)
  for r in res["score"]:
    print(f"score {r['variant']} {r['shape']} {r['dtype']}: engine "
          f"{r['engine']['pairs_per_s']:.0f} pairs/s ({r['engine']['gflops_per_s_true_lengths']:.1f} GFLOP/s), padded tile "
          f"{r['tile']['pairs_per_s']:.0f} pairs/s ({r['tile']['gflops_per_s']:.1f} GFLOP/s)")
  for r in res["train"]:
    print(f"train {r['variant']} {r['shape']} {r['dtype']} B=128 sparse={r['sparse_backward']}: "
          f"{r['median_s']:.2f} s/step")
  print(f"fp32 GEMM: {res['gemm_before']['gflops_per_s']:.1f} / "
        f"{res['gemm_after']['gflops_per_s']:.1f} GFLOP/s (before / after)")
  if "dtype_speedup" in res:
    print(f"bf16 GEMM: {res['gemm_bf16_before']['gflops_per_s']:.1f} / "
          f"{res['gemm_bf16_after']['gflops_per_s']:.1f} GFLOP/s (before / after)")
    print("bfloat16 / float32 speed:", json.dumps(res["dtype_speedup"], indent=1))
  if "ratio_vs_official" in res:
    print("xmr_jax / official:", json.dumps(res["ratio_vs_official"], indent=1))


if __name__ == "__main__":
  main()
