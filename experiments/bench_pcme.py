"""Benchmark of the PCME kernels: loss + gradient, and Monte-Carlo scoring of a test set.

  python experiments/bench_pcme.py --out=/tmp/bench_pcme.json            # B=128, J=7, D=1024
  python experiments/bench_pcme.py --n_images=1000 --n_captions=5000      # MC scoring sizes

Measures (i) the soft contrastive + VIB loss and its gradient w.r.t. samples, logsigma, a, b
for one batch (the per-step cost of the criterion), and (ii) MC match probability of every
image x caption pair in tiles under ``jax.lax.map`` (how evaluation scores). Peak memory is
XLA's compiled-memory analysis (temp + argument + output bytes); times are the median of
``--repeats`` runs after one warm-up. Writes one JSON object.
"""
import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp

from xmr_jax.kernels import pcme as K
from xmr_jax.losses import pcme as pcme_losses
from xmr_jax.kernels.common import l2norm


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  keys = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
  return {k: int(getattr(m, k, 0)) for k in keys}


def _time(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return sorted(times)[len(times) // 2]


def bench_loss(b: int, j: int, d: int, repeats: int, official: bool) -> dict:
  """Loss + gradient of the criterion for a batch of b pairs."""
  keys = jax.random.split(jax.random.key(0), 4)
  mu = [l2norm(jax.random.normal(k, (b, d))) for k in keys[:2]]
  ls = jnp.full((b, d), -4.0)
  z = [K.sample_gaussian(k, m, ls, j) for k, m in zip(keys[2:], mu)]

  def loss(zi, zc, li, lc, a, s):
    return pcme_losses.pcme_criterion(zi, zc, li, lc, a, s, vib_beta=1e-5, mu_img=mu[0], mu_txt=mu[1],
                            official_sigmoid=official, official_kl=official)[0]

  fn = jax.jit(jax.value_and_grad(loss, argnums=range(6)))
  args = (z[0], z[1], ls, ls, jnp.float32(15.0), jnp.float32(15.0))
  compiled = fn.lower(*args).compile()
  return {"batch": b, "samples": j, "dim": d, "seconds": _time(fn, args, repeats),
          "memory": _memory(compiled)}


def bench_scoring(n_img: int, n_txt: int, j: int, d: int, tile: int, repeats: int) -> dict:
  """MC match probability of all n_img x n_txt pairs, tiles of ``tile`` images."""
  k1, k2 = jax.random.split(jax.random.key(1))
  zi = jax.random.normal(k1, (n_img, j, d)) / jnp.sqrt(d)
  zt = jax.random.normal(k2, (n_txt, j, d)) / jnp.sqrt(d)
  n_tiles = -(-n_img // tile)
  zi = jnp.pad(zi, ((0, n_tiles * tile - n_img), (0, 0), (0, 0)))

  @jax.jit
  def score_all(zi, zt):
    tiles = zi.reshape(n_tiles, tile, j, d)
    out = jax.lax.map(lambda t: K.match_probability(t, zt, 15.0, 15.0), tiles)
    return out.reshape(n_tiles * tile, n_txt)[:n_img]

  compiled = score_all.lower(zi, zt).compile()
  return {"images": n_img, "captions": n_txt, "samples": j, "dim": d, "image_tile": tile,
          "seconds": _time(score_all, (zi, zt), repeats), "memory": _memory(compiled)}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--samples", type=int, default=7)
  p.add_argument("--dim", type=int, default=1024)
  p.add_argument("--n_images", type=int, default=1000)
  p.add_argument("--n_captions", type=int, default=5000)
  p.add_argument("--image_tile", type=int, default=100)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--official", action="store_true", help="official-quirk criterion")
  p.add_argument("--out", default="bench_pcme.json")
  a = p.parse_args()
  result = {
      "device": str(jax.devices()[0]), "backend": jax.default_backend(),
      "host": platform.processor() or platform.machine(), "jax": jax.__version__,
      "loss_and_grad": bench_loss(a.batch, a.samples, a.dim, a.repeats, a.official),
      "mc_scoring": bench_scoring(a.n_images, a.n_captions, a.samples, a.dim, a.image_tile,
                                  a.repeats),
  }
  with open(a.out, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
