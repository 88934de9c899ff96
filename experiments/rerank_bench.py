"""Two-stage ranking against exact scoring on one trained workdir; writes JSON, prints Markdown.

  python experiments/rerank_bench.py --workdir=W_sgraf --shortlist=W_vsepp \
      --k=32,64,128 --out=rerank.json [--split=test] [--repeats=2]

Evaluates ``W``'s best checkpoint on ``--split`` exactly (``retrieval.evaluate``: every pair
through ``engine.score_all``) and with ``eval.rerank_k`` = each K and ``eval.shortlist`` =
``--shortlist`` (``own`` or a workdir; ``rerank.evaluate``), each ``--repeats`` times in one
process: the first run of each includes compiling its programs, the last is reported (and
every run's seconds are in the JSON). Recorded per K: R@1/5/10, medr and rsum of both
directions, the pairs scored and the ratio to exact, the percentage of queries whose true
match is outside the shortlist, and the seconds: encoding, the shortlist's encoding (a
shortlist workdir encodes the split with its own model), the first stage (matrix product +
top-k) and the exact scoring; the time ratio is exact scoring / (first stage + scoring of the
shortlist), with and without the shortlist's encoding. Once per file: the commit, the date,
the CPU model and its bfloat16 flags, the core count, the JAX version and the 1-minute load
average before and after. One run; absolute times on a shared machine are noisy.
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402

from xmr_jax.common import io  # noqa: E402
from xmr_jax.common.hardware import cpu_bf16_flags  # noqa: E402
from xmr_jax.evaluation import EvalContext, rerank, retrieval  # noqa: E402
from xmr_jax.training import workdirs  # noqa: E402


def _git(*args: str) -> str:
  return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def _recalls(res: Dict) -> Dict:
  keep = ("r1", "r5", "r10", "medr", "beyond_k")
  return {d: {k: res[d][k] for k in keep if k in res[d]} for d in ("i2t", "t2i")} | {
      "rsum": res["rsum"]}


def _timed(fn, repeats: int) -> List[Dict]:
  runs = []
  for _ in range(repeats):
    start = time.time()
    res = fn()
    res["wall"] = time.time() - start
    runs.append(res)
  return runs


def bench(workdir: str, shortlist: str, ks: List[int], split: Optional[str],
          repeats: int) -> Dict:
  """The record of one workdir: exact and one entry per K (module doc)."""
  config = workdirs.config_from_workdir(workdir)
  if split:
    config.eval.split = split
  ds, method, variables = workdirs.restore_variables(config, workdir)
  exact_ctx = EvalContext(method, variables, ds, config.eval.split, config.eval,
                          seed=config.seed)
  exact = _timed(lambda: retrieval.evaluate(exact_ctx), repeats)
  settings = copy.deepcopy(config.eval)
  settings.rerank_k, settings.shortlist = max(ks), shortlist
  config.eval = settings
  first = workdirs.shortlist_context(config)
  out = {"workdir": workdir, "method": method.name, "split": config.eval.split,
         "shortlist": shortlist, "exact": {**_recalls(exact[-1]),
                                           "seconds": exact[-1]["seconds"],
                                           "runs": [r["seconds"] for r in exact]},
         "two_stage": []}
  score_exact = exact[-1]["seconds"]["score"]
  for k in ks:
    s = copy.deepcopy(settings)
    s.rerank_k = k
    ctx = EvalContext(method, variables, ds, config.eval.split, s, seed=config.seed,
                      shortlist=first)
    runs = _timed(lambda: rerank.evaluate(ctx), repeats)
    res, sec = runs[-1], runs[-1]["seconds"]
    stages = sec["shortlist"] + sec["score"]
    out["two_stage"].append({
        "k": k, **_recalls(res), **res["rerank"], "seconds": sec,
        "runs": [r["seconds"] for r in runs],
        "time_ratio": score_exact / stages,
        "time_ratio_with_shortlist_encoding": score_exact / (stages
                                                              + sec["encode_shortlist"])})
  return out


def markdown(rec: Dict) -> str:
  """One table row per K and one for exact: R@1 i2t / t2i, rsum, pairs, seconds, ratios."""
  e = rec["exact"]
  rows = [f"| exact | {e['i2t']['r1']:.1f} / {e['t2i']['r1']:.1f} | {e['rsum']:.1f} | "
          f"{rec['two_stage'][0]['pairs_exact']:,} | {e['seconds']['score']:.1f} s | — |"]
  for t in rec["two_stage"]:
    rows.append(f"| K = {t['k']} | {t['i2t']['r1']:.1f} / {t['t2i']['r1']:.1f} | "
                f"{t['rsum']:.1f} | {t['pairs_scored']:,} ({t['pairs_ratio']:.1f}x fewer) | "
                f"{t['seconds']['shortlist'] + t['seconds']['score']:.1f} s | "
                f"{t['time_ratio']:.1f}x |")
  return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--shortlist", required=True, help="'own' or a workdir")
  p.add_argument("--k", default="32,64,128", help="comma-separated K values")
  p.add_argument("--split", default="")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--out", required=True)
  a = p.parse_args(argv)
  io.enable_compilation_cache()
  load_before = os.getloadavg()[0]
  start = dict(commit=_git("rev-parse", "HEAD"),      # the code the run starts with
               tree_changed=bool(_git("status", "--porcelain", "--untracked-files=no")),
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
  rec = bench(a.workdir, a.shortlist, [int(k) for k in a.k.split(",")], a.split, a.repeats)
  rec.update(start, cpu=cpu_bf16_flags(),
             cpu_count=os.cpu_count(), jax=jax.__version__, load_before=load_before,
             load_after=os.getloadavg()[0], runs="one run")
  with open(a.out, "w") as f:
    json.dump(rec, f, indent=2)
  print(markdown(rec))


if __name__ == "__main__":
  main()
