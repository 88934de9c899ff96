"""Speed and memory of one config on whatever device JAX sees; writes JSON.

  python experiments/benchmark.py --config=configs/vsepp.py --out=bench_vsepp.json \
      [--steps=20] [--n_images=1000]

Measures, on the config's own model and data (the synthetic benchmark unless the config
points elsewhere):
  * train steps/s at ``config.train.batch_size`` (after compilation, median of repeats);
  * evaluation encode items/s (images and captions) and score pairs/s over an
    ``n_images`` x ``5 n_images`` grid through the tiled engine;
  * peak memory: the compiled train step's and score tile's XLA memory analysis (temp +
    argument bytes) and the process's peak RSS.
With ``--extract_images=DIR`` (a folder of photos; ``--config`` then optional) it also
measures feature extraction (``xmr_jax.data.extract``'s backbone, EfficientNet-Lite0 at
S = 192, batch 32): images/s of the backbone alone and of decode + preprocess + backbone.
Absolute times on shared machines are noisy: compare ratios measured in one run.
``--config.model.dtype=bfloat16`` times mixed precision (bfloat16 matmul operands, float32
accumulation); the JSON records ``model_dtype`` and the CPU's bfloat16 flags (``cpu``:
``avx512_bf16``, ``amx_bf16``).
"""
import json
import os
import resource
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from xmr_jax.common import mesh as mesh_lib
from xmr_jax.common.hardware import cpu_bf16_flags
from xmr_jax.evaluation import engine
from xmr_jax.training import loop, state as state_lib, step as step_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (as for xmr_jax.main).")
flags.DEFINE_string("out", "benchmark.json", "Where to write the JSON.")
flags.DEFINE_integer("steps", 20, "Timed train steps.")
flags.DEFINE_integer("n_images", 1000, "Images in the scoring benchmark (5 captions each).")
flags.DEFINE_string("extract_images", "", "A folder of photos: also benchmark extraction.")
flags.DEFINE_integer("extract_n", 256, "Photos used by the extraction benchmark.")


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _memory(compiled) -> dict:
  try:
    m = compiled.memory_analysis()
    return {"temp_bytes": int(m.temp_size_in_bytes), "argument_bytes": int(m.argument_size_in_bytes),
            "output_bytes": int(m.output_size_in_bytes)}
  except Exception as e:  # not every backend reports it
    return {"unavailable": str(e)}


def bench_train(config, ds, method, tx, hparams, state, steps: int) -> dict:
  sched = loop.schedule(config, ds.num_train_images, ds.k)
  mesh = mesh_lib.train_mesh(config.train.get("num_devices", 0), config.train.batch_size)
  fn = step_lib.make_train_step(method, tx, decay_steps=sched["decay_steps"],
                                decay_factor=config.train.lr_decay_factor,
                                steps_per_epoch=sched["steps_per_epoch"], mesh=mesh)
  it = ds.train_iterator(config.train.batch_size, seed=0)
  batch = mesh_lib.global_batch(next(it), mesh)
  state, hparams = mesh_lib.replicate(state, mesh), mesh_lib.replicate(hparams, mesh)
  t0 = time.perf_counter()
  compiled = fn.lower(state, batch, hparams).compile()
  compile_s = time.perf_counter() - t0
  state, _ = fn(state, batch, hparams)   # warm-up
  box = {"state": state}

  def run():
    box["state"], m = fn(box["state"], batch, hparams)
    return m["loss"]
  per_step = _median_time(run, steps)
  return {"batch_size": config.train.batch_size, "seconds_per_step": per_step,
          "steps_per_sec": 1.0 / per_step, "compile_seconds": compile_s,
          "memory": _memory(compiled)}


def bench_eval(config, ds, method, state, n_images: int) -> dict:
  variables = state_lib.variables_of(state)
  data = ds.eval_data(config.eval.split, config.eval.encode_batch_size, max_images=n_images)
  enc = {}
  for side, batches in (("image", data.image_batches), ("text", data.text_batches)):
    engine.encode_all(method, variables, batches(), side)     # compile
    t0 = time.perf_counter()
    reprs = engine.encode_all(method, variables, batches(), side)
    dt = time.perf_counter() - t0
    n = jax.tree.leaves(reprs)[0].shape[0]
    enc[side] = {"items": n, "items_per_sec": n / dt, "reprs": reprs}
  img, txt = enc["image"].pop("reprs"), enc["text"].pop("reprs")
  groups = config.eval.get("length_groups", 1)   # as the evaluation protocol scores
  small = jax.tree.map(lambda x: x[:config.eval.tile_images], img)
  engine.score_all(method, variables, small, txt, tile_images=config.eval.tile_images,
                   tile_texts=config.eval.tile_texts,
                   length_groups=groups)   # compile the row scorer of every length group
  t0 = time.perf_counter()
  scores = engine.score_all(method, variables, img, txt, tile_images=config.eval.tile_images,
                            tile_texts=config.eval.tile_texts, length_groups=groups)
  dt = time.perf_counter() - t0
  pairs = scores.shape[0] * scores.shape[1]
  return {"encode": enc, "score": {"pairs": pairs, "seconds": dt, "pairs_per_sec": pairs / dt,
                                   "tile": [config.eval.tile_images, config.eval.tile_texts],
                                   "length_groups": groups}}


def bench_extract(images_dir: str, n: int, batch: int = 32, size: int = 192) -> dict:
  """Backbone images/s, and decode + preprocess + backbone images/s, on ``n`` photos."""
  from xmr_jax.backbones import efficientnet_lite as lite
  from xmr_jax.data import captions
  names = captions.list_photos(images_dir)[:n]
  n = len(names) - len(names) % batch
  variables = lite.load_weights()
  t0 = time.perf_counter()
  x = np.stack([lite.preprocess(captions.load_photo(os.path.join(images_dir, f)), size)
                for f in names[:n]])
  decode = time.perf_counter() - t0
  jax.block_until_ready(lite.features(variables, x[:batch]))      # compile
  t0 = time.perf_counter()
  for i in range(0, n, batch):
    jax.block_until_ready(lite.features(variables, x[i:i + batch]))
  net = time.perf_counter() - t0
  return {"photos": n, "batch": batch, "size": size, "backbone_images_per_sec": n / net,
          "decode_preprocess_images_per_sec": n / decode,
          "pipeline_images_per_sec": n / (net + decode)}


def main(argv):
  del argv
  config = FLAGS.config
  result = {"device": str(jax.devices()[0]), "device_count": jax.device_count(),
            "jax": jax.__version__, "cpu_count": os.cpu_count(),
            "cpu": cpu_bf16_flags(), "load_average_start": os.getloadavg()}
  if FLAGS.extract_images:
    result["extract"] = bench_extract(FLAGS.extract_images, FLAGS.extract_n)
    print(json.dumps(result["extract"], indent=2))
  if config is None:
    if not FLAGS.extract_images:
      raise app.UsageError("give --config (and/or --extract_images)")
    with open(FLAGS.out, "w") as f:
      json.dump(result, f, indent=2, default=str)
    return
  ds, method, tx, hparams, state = loop.setup(config)
  result.update(config=config.to_dict(), method=method.name,
                model_dtype=config.model.get("dtype", "float32"))
  # Evaluation first: the train step donates (consumes) the state buffers.
  result["eval"] = bench_eval(config, ds, method, state, FLAGS.n_images)
  result["train"] = bench_train(config, ds, method, tx, hparams, state, FLAGS.steps)
  result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  result["load_average_end"] = os.getloadavg()
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump(result, f, indent=2, default=str)
  summary = {k: result["train"][k] for k in ("seconds_per_step", "steps_per_sec")}
  summary["model_dtype"] = result["model_dtype"]
  summary["score_pairs_per_sec"] = result["eval"]["score"]["pairs_per_sec"]
  summary["encode_images_per_sec"] = result["eval"]["encode"]["image"]["items_per_sec"]
  summary["encode_captions_per_sec"] = result["eval"]["encode"]["text"]["items_per_sec"]
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)
