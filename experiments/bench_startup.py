"""Time from process start to the first train step on a Flickr30K-size dataset.

  python experiments/bench_startup.py --out=/tmp/bench_startup.json [--n_train=29000]

Writes a SCAN-layout dataset of Flickr30K's size (29,000 train / 1,014 dev / 1,000 test
images, 36 regions x 2048 float32 features, 5 captions each: 145,000 training captions of
English-like words, 7-20 words long) into a temporary folder, then starts
``configs/vsepp.py:data=f30k`` on it in a fresh process three times: a cold start (the
word vocabulary is built and every split tokenised, in worker processes), a second start
(vocabulary and token ids read from the cache beside the data), and a resume of the first
run's workdir (its stored tokenizer). Each child reports the seconds from its process
start to the end of its first train step, split into imports, ``loop.start`` (open the data,
tokenise, init, restore) and the first step (compile + run), and its peak resident memory.

The features are sparse zero-filled files: what start-up reads of them (headers, a few rows
for the fingerprints, one batch) does not depend on their values, and the 8.6 GB they would
take are not written. Absolute times on a shared machine are noisy; the JSON records the
load average and CPU flags.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("a man woman child dog boy girl people group person player crowd worker street "
         "water grass field beach snow road building wall table room city park stage "
         "shirt hat jacket ball bike car boat horse camera guitar sign tree rock wave "
         "red blue white black green yellow young old little large small two three "
         "is are sitting standing walking running riding holding playing looking "
         "wearing jumping climbing eating talking smiling throwing carrying "
         "in on at with of near down across through behind front next to the an "
         "while and his her their its").split()


def _captions(n: int, rng: np.random.Generator) -> list:
  """``n`` English-like captions, 7-20 words, some with a comma and a final period."""
  lengths = rng.integers(7, 21, n)
  words = rng.choice(WORDS, int(lengths.sum()))
  out, start = [], 0
  for i, length in enumerate(lengths):
    sentence = list(words[start:start + length])
    start += length
    sentence[0] = sentence[0].capitalize()
    if i % 3 == 0:
      sentence[length // 2] += ","
    out.append(" ".join(sentence) + (" ." if i % 2 else ""))
  return out


def make_dataset(root: str, n_train: int = 29000, n_dev: int = 1014, n_test: int = 1000,
                 regions: int = 36, dim: int = 2048, k: int = 5, seed: int = 0) -> str:
  """Writes the dataset (sparse zero features, random captions) into ``root``."""
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
    ims = np.lib.format.open_memmap(os.path.join(root, f"{split}_ims.npy"), "w+",
                                    np.float32, (n, regions, dim))
    del ims                                   # never written: a sparse file of zeros
    with open(os.path.join(root, f"{split}_caps.txt"), "w", encoding="utf-8") as f:
      f.write("\n".join(_captions(n * k, rng)) + "\n")
  return root


def child(data_dir: str, workdir: str) -> dict:
  """Runs in a fresh process: start the trainer, run one step; seconds since process start."""
  import psutil
  born = psutil.Process().create_time()
  t0 = time.time()
  import jax
  from absl import logging
  from xmr_jax import config_utils
  from xmr_jax.common import io
  from xmr_jax.training import loop
  logging.set_verbosity(logging.WARNING)
  io.enable_compilation_cache()        # as the CLI does
  config = config_utils.load_config(os.path.join(REPO, "configs", "vsepp.py"), "data=f30k")
  config.data.dir = data_dir
  config.train.checkpoint_every_steps = 1
  t1 = time.time()
  run = loop.start(config, workdir)
  t2 = time.time()
  batch = run.place(next(run.iterator))
  run.state, metrics = run.step_fn(run.state, batch, run.hparams)
  jax.block_until_ready(metrics)
  t3 = time.time()
  run.ckpt.save(1, run.state, run.iterator.get_state(), config.to_dict(), run.record)
  loop.close(run)
  return {"imports_s": t1 - born, "start_s": t2 - t1, "first_step_s": t3 - t2,
          "to_first_step_s": t3 - born, "before_imports_s": t0 - born,
          "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          **_memory_now()}


def _memory_now() -> dict:
  """Resident memory now, split into anonymous (what the run allocates) and file-backed
  pages (memory-mapped features and libraries: page cache the kernel may evict)."""
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      key, _, value = line.partition(":")
      if key in ("RssAnon", "RssFile", "RssShmem"):
        out[key.lower() + "_bytes"] = int(value.split()[0]) * 1024
  return out


def _run_child(data_dir: str, workdir: str, env: dict) -> dict:
  out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", data_dir,
                        workdir], cwd=REPO, env=env, capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(out.stderr[-3000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


def run(n_train: int, keep: str = "") -> dict:
  """The three starts (cold, cached ids, resume) on a fresh dataset; see the module doc."""
  from xmr_jax.common.hardware import cpu_bf16_flags
  root = keep or tempfile.mkdtemp(prefix="xmr-startup-")
  result = {"n_train": n_train, "train_captions": 5 * n_train, "cpu": cpu_bf16_flags(),
            "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg()}
  try:
    t0 = time.time()
    data = make_dataset(os.path.join(root, "data"), n_train=n_train)
    result["make_dataset_s"] = time.time() - t0
    env = dict(os.environ, XMR_DATA_DIR=os.path.join(root, "cache"), JAX_PLATFORMS="cpu")
    result["cold"] = _run_child(data, os.path.join(root, "w1"), env)
    result["cached_ids"] = _run_child(data, os.path.join(root, "w2"), env)
    result["resume"] = _run_child(data, os.path.join(root, "w1"), env)
  finally:
    if not keep:
      shutil.rmtree(root, ignore_errors=True)
  result["load_average_end"] = os.getloadavg()
  return result


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="bench_startup.json")
  p.add_argument("--n_train", type=int, default=29000)
  p.add_argument("--keep", default="", help="a folder to keep the dataset and workdirs in")
  p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.child:
    print(json.dumps(child(*a.child)))
    return
  result = run(a.n_train, a.keep)
  with open(a.out, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: result[k] for k in ("cold", "cached_ids", "resume")}, indent=2))


if __name__ == "__main__":
  main()
