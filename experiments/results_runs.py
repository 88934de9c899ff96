"""Runs the trainings behind docs/results.md one after another and records each with its
conditions; writes JSON and prints Markdown rows.

  python experiments/results_runs.py --group=coco_mini --out=results_coco_mini.json \
      [--only=vsepp_gru,vsepp_minilm] [--root=/tmp/results_runs] [--list] \
      [--extra=--config.train.num_epochs=3 ...]

Each run is the CLI as a user types it (``python -m xmr_jax.main ...``) in its own workdir
under ``--root`` (an existing workdir is removed first, so every run starts from step 0),
or the ridge baseline (experiments/baseline_ridge.py) on the folder the first photo run
extracted. Recorded per run: the command, wall seconds of the whole process (data already
extracted and cached unless it is the first run of its folder: ``first_of_folder``), the
1-minute load average before and after, the test split's R@K, rsum and PMRP
(``W/eval/results.json``), the commit it ran at; once per file: the first commit (and whether
the tree had changes),
the date, the CPU model and flags (``xmr_jax.common.hardware``), the JAX version.

Groups: ``synthetic`` (the README's first command, every method's ``runlocal`` preset, the
DeFrag ablation, a vmapped sweep), ``coco_mini`` and ``uitviic`` (every method x text
tower on the photo folders of ../shared/real with one backbone, pretrained towers frozen; see
``GROUPS``), ``uitviic_finetune`` (VSE++ and PCME on frozen features against the backbone
fine-tuned inside the model, ``data=photos``).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from xmr_jax.common.hardware import cpu_bf16_flags  # noqa: E402

MAIN = [sys.executable, "-m", "xmr_jax.main"]
METHODS = ("vsepp", "pcme", "defrag", "sgraf", "mmca")
PRETRAINED = ("minilm", "e5_small")      # the text towers trained frozen here


def _photo_runs(folder: str, extra: List[str], towers: Dict[str, List[str]],
                sgraf_extra: Sequence[str] = ()) -> Dict:
  """Every method x tower on a photo folder (each method's ``data=images`` preset)."""
  runs = {}
  for method in METHODS:
    for tower, methods in towers.items():
      if method not in methods:
        continue
      arg = f"data=images,text={tower}"
      if method == "defrag":   # no Vietnamese parser, and the towers have no word triples
        arg += ",fragments=bigram"
      # Pretrained towers frozen (MMCA's paper setting): a few hundred captions cannot
      # fine-tune 22M (MiniLM) or 118M (e5_small) weights, and the backward pass would
      # triple the step time on a CPU.
      frozen = ["--config.model.text_frozen=true"] if tower in PRETRAINED else []
      runs[f"{method}_{tower}"] = MAIN + [f"--config=configs/{method}.py:{arg}",
                                          f"--config.data.dir={folder}"] + extra + frozen
  for tower in towers:             # SGRAF's preset is 2 epochs of uitviic (370 steps)
    if f"sgraf_{tower}" in runs and sgraf_extra:
      runs[f"sgraf_{tower}"] = runs[f"sgraf_{tower}"] + sgraf_extra
  for tower in towers:
    if f"sgraf_{tower}" in runs:   # SAF beside SGR, then the paper's ensemble of both
      runs[f"sgraf_saf_{tower}"] = [a.replace("data=images,", "data=images,variant=saf,")
                                    for a in runs[f"sgraf_{tower}"]]
      runs[f"sgraf_ensemble_{tower}"] = ("ensemble", f"sgraf_{tower}", f"sgraf_saf_{tower}")
  runs["ridge"] = ("ridge",)
  return runs


LITE1 = ["--config.data.images.backbone=efficientnet_lite1"]
COCO = "../shared/real/coco_mini"
UITVIIC = "../shared/real/uitviic"
GROUPS = {
    "synthetic": {
        "readme_sgr": MAIN + ["--config=configs/sgraf.py"],
        **{f"{m}_runlocal": MAIN + [f"--config=configs/{m}.py:runlocal"] for m in METHODS},
        "sgraf_saf_runlocal": MAIN + ["--config=configs/sgraf.py:runlocal,variant=saf"],
        **{f"defrag_runlocal_{a}": MAIN + [f"--config=configs/defrag.py:runlocal,{a}"]
           for a in ("objective=global_only", "objective=fragment_only", "fragments=bigram")},
        "sweep_vsepp_margin_seed": MAIN + [
            "--mode=sweep", "--config=experiments/sweeps/vsepp_margin_seed.py:runlocal"],
    },
    "coco_mini": _photo_runs(COCO, ["--config.data.split_sizes=(50, 50)",
                                    "--config.train.batch_size=32"] + LITE1,
                             {"gru": METHODS, "glove": METHODS, "minilm": METHODS},
                             # 139 photos make a 20-step epoch: 15 epochs = 300 steps, a
                             # budget like the other methods' presets; one length bucket
                             # (one compiled step, padding masked).
                             sgraf_extra=["--config.train.num_epochs=15",
                                          "--config.train.eval_every_epochs=5",
                                          "--config.data.len_buckets=(32,)"]),
    # GloVe is English: not for the Vietnamese captions; e5_small is multilingual.
    "uitviic": _photo_runs(UITVIIC, LITE1, {"gru": METHODS, "minilm": METHODS,
                                            "e5_small": METHODS}),
    # Frozen Lite0 features against Lite0 fine-tuned inside the model (data=photos), VSE++ and
    # PCME with the frozen e5 tower. The fine-tuned runs are cut (a photos step costs tens of
    # features steps on 2 CPU cores: VSE++'s preset epoch at batch 32 would be 27 minutes,
    # PCME's about an hour): 1 epoch of VSE++, half an epoch of PCME.
    "uitviic_finetune": {
        **{f"{m}_{kind}": MAIN + [f"--config=configs/{m}.py:data={data},text=e5_small",
                                  f"--config.data.dir={UITVIIC}",
                                  "--config.model.text_frozen=true"] + cut
           for m, cuts in (("vsepp", ["--config.train.num_epochs=1"]),
                           ("pcme", ["--config.train.num_epochs=0.5"]))
           for kind, data, cut in (("frozen", "images", []), ("finetuned", "photos", cuts),
                                   # the fine-tuned run's steps x batch on frozen features
                                   ("frozen_same_steps", "images",
                                    cuts + ["--config.train.batch_size=32"]))},
        "ridge": ("ridge",),
    },
}


def _git(*args: str) -> str:
  return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def _test_metrics(workdir: str) -> Optional[Dict]:
  """The test split's recalls, rsum and PMRP from ``W/eval/results.json`` (None if absent)."""
  path = os.path.join(workdir, "eval", "results.json")
  sweep = os.path.join(workdir, "sweep_results.json")
  if not os.path.exists(path) and os.path.exists(sweep):    # --mode=sweep: rsum per variant
    with open(sweep) as f:
      return {"sweep": {r["name"]: (r.get("results") or {}).get("rsum") for r in json.load(f)}}
  if not os.path.exists(path):
    return None
  with open(path) as f:
    res = json.load(f)
  keep = {side: {k: res[side][k] for k in ("r1", "r5", "r10")} for side in ("i2t", "t2i")}
  return dict(keep, rsum=res["rsum"], pmrp=res.get("pmrp"), data=res.get("data"))


def _extracted_dir(root: str, names: List[str]) -> str:
  """The extracted precomp folder the photo runs trained on (their ``W/data.json``)."""
  for name in names:
    path = os.path.join(root, name, "data.json")
    if os.path.exists(path):
      with open(path) as f:
        location = json.load(f)["splits"]["train"].get("location", "")
      if location:
        return location
  raise SystemExit("ridge: run a photo run of this group first (no W/data.json names the "
                   "extracted folder)")


def _command(spec, root: str, name: str, done: List[str], extra: Sequence[str] = ()) -> List[str]:
  """The argv of one run; ``extra`` flags are appended to a training run's command."""
  workdir = os.path.join(root, name)
  if spec[0] == "ensemble":
    members = ",".join(os.path.join(root, m) for m in spec[1:])
    return MAIN + ["--mode=eval", f"--ensemble={members}", f"--workdir={workdir}"]
  if spec[0] == "ridge":
    data = _extracted_dir(root, done)
    return [sys.executable, os.path.join(REPO, "experiments", "baseline_ridge.py"),
            f"--data_dir={data}", f"--out={os.path.join(workdir, 'baseline.json')}"]
  return list(spec) + list(extra) + [f"--workdir={workdir}"]


def run_one(spec, root: str, name: str, done: List[str], extra: Sequence[str] = ()) -> Dict:
  """Runs one entry of a group; returns its record."""
  workdir = os.path.join(root, name)
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(workdir)
  argv = _command(spec, root, name, done, extra)
  commit = _git("rev-parse", "HEAD")   # the code the run starts with
  load_before = os.getloadavg()[0]
  start = time.time()
  proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
  wall = time.time() - start
  with open(os.path.join(workdir, "run.log"), "w") as f:
    f.write(proc.stdout + proc.stderr)
  record = dict(name=name, argv=argv[1:], commit=commit,
                returncode=proc.returncode, wall_s=round(wall, 1),
                load_before=round(load_before, 2), load_after=round(os.getloadavg()[0], 2))
  if spec[0] == "ridge":
    with open(os.path.join(workdir, "baseline.json")) as f:
      record["ridge"] = json.load(f)
  else:
    record["test"] = _test_metrics(workdir)
  if proc.returncode:
    record["stderr_tail"] = proc.stderr[-2000:]
  return record


def markdown_row(r: Dict) -> str:
  """``| name | i2t R@1/5/10 | t2i R@1/5/10 | rsum | PMRP | wall (load) |``."""
  t = r.get("test") or (r.get("ridge") or {}).get("test") or {}
  if "i2t" not in t:
    return f"| {r['name']} | failed or no results (rc {r['returncode']}) | | | | |"
  rec = lambda side: " / ".join(f"{t[side][k]:.1f}" for k in ("r1", "r5", "r10"))
  pmrp = t.get("pmrp") or {}
  pm = (f"{pmrp['i2t']:.1f} / {pmrp['t2i']:.1f}" if isinstance(pmrp, dict) and "i2t" in pmrp
        else "—")
  wall = f"{int(r['wall_s'] // 60)}:{int(r['wall_s'] % 60):02d}"
  return (f"| {r['name']} | {rec('i2t')} | {rec('t2i')} | {t['rsum']:.1f} | {pm} | {wall} "
          f"({r['load_before']:.1f}–{r['load_after']:.1f}) |")


def main(argv: Optional[List[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--group", choices=sorted(GROUPS), required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--only", default="", help="comma-separated run names (default: all)")
  p.add_argument("--root", default="/tmp/results_runs")
  p.add_argument("--list", action="store_true", help="print the run names and commands")
  p.add_argument("--extra", action="append", default=[],
                 help="a flag appended to every training run's command (repeatable), e.g. "
                      "--extra=--config.train.num_epochs=3 for a cut schedule; recorded in "
                      "each run's argv")
  a = p.parse_args(argv)
  runs = GROUPS[a.group]
  names = [n for n in runs if not a.only or n in a.only.split(",")]
  unknown = set(a.only.split(",")) - set(runs) - {""}
  if unknown:
    raise SystemExit(f"--only: unknown run(s) {sorted(unknown)}; --list shows them")
  if a.list:
    for n in names:
      print(n, " ".join(runs[n]) if runs[n][0] not in ("ridge", "ensemble") else runs[n])
    return
  root = os.path.join(a.root, a.group)
  out = dict(group=a.group, commit=_git("rev-parse", "HEAD"),
             tree_changed=bool(_git("status", "--porcelain", "--untracked-files=no")),
             date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), cpu=cpu_bf16_flags(),
             cpu_count=os.cpu_count(), runs=[])
  done: List[str] = []
  for name in names:
    record = run_one(runs[name], root, name, done, a.extra)
    done.append(name)
    out["runs"].append(record)
    print(markdown_row(record), flush=True)
    with open(a.out, "w") as f:     # after every run: a stopped job keeps what it measured
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
