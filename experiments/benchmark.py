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
measures feature extraction (``xmr_jax.data.extract``'s backbone, ``--backbone``: one or more
names of ``xmr_jax.backbones.registry``, comma-separated, default efficientnet_lite0 at its
S = 192; each at its default input side, batch 32): images/s of the backbone alone and of
decode + preprocess + backbone. With several backbones the JSON has ``extract_by_backbone``
(name -> result) and ``extract`` is the first one's.
In the same run, where ``--torch_python`` (default /work/torchvenv/bin/python) exists, the
same network in PyTorch on the same inputs (experiments/torch_effnet_lite.py in a child
process, 2 threads, float32 NCHW and channels-last, bfloat16 autocast), its feature parity
with JAX and the JAX/torch ratio; and (``--extract_variants``, on by default) the JAX
backbone at batch 8/32/64, in bfloat16, and every convolution timed alone in both
frameworks, summed by kind (stem, expand, depthwise, project, head):

  python experiments/benchmark.py --extract_images=../shared/real/uitviic/images \
      --out=/tmp/bench_extract.json [--torch_python=/work/torchvenv/bin/python] \
      [--backbone=efficientnet_lite0,efficientnet_lite1,efficientnet_lite2]
With ``--startup_n_train=29000`` it times process start -> first train step of
``configs/vsepp.py:data=f30k`` on a dataset of Flickr30K's size (experiments/bench_startup.py):
a cold start, one with the token ids cached, and a resume.
With ``--loop_steps=N`` it also times the trainer's own loop (``loop.train``: data
iterator, prefetch, NaN guard, logging) for N steps with a host sync after every step (the loop
before issue 15: metrics read every step, no prefetch) and without (metrics read once, 2
batches prefetched).
With ``--search_n=100000`` it times one text query against an index of that many photos
(``xmr_jax.search.topk``: chunked matrix product + ``lax.top_k`` over a memory-mapped .npy):
random unit vectors of ``--search_dim`` (1024) float32 and bfloat16, milliseconds per query
after compilation (median of ``--search_repeats``), checked against a full numpy sort.
With photos as the input (``configs/vsepp.py:data=photos``: the backbone fine-tuned inside the
model) ``train`` also has the training augmentation's photos/s and, where ``--torch_python``
exists, ``train.torch``: the same fine-tuning step (EfficientNet-Lite + VSE++'s head and
summed hinge loss, Adam with the backbone's learning-rate scale, gradient clipping) in
PyTorch on the same batch (experiments/torch_vsepp_photos.py, a child process, 2 threads)
and ``jax_over_torch`` (> 1: JAX faster), and ``train.frozen_phase``: the step of
``train.backbone_frozen_epochs`` (backbone gradient stopped) with its speedup and memory, and
``train.backbone``: the backbone alone on the step's photos, forward and gradient seconds:

  python experiments/benchmark.py --config=configs/vsepp.py:data=photos \
      --config.data.dir=../shared/real/coco_mini --config.data.split_sizes='(50, 50)' \
      --steps=3 --out=/tmp/bench_finetune.json
With a frozen pretrained text tower (``model.text_frozen``, ``model.text_cache``) the train
step reads the tower's vectors from the data; ``train.text_cache`` then times the same step
with the tower run inside it (``model.text_cache=false``) and gives the ratio.
Absolute times on shared machines are noisy: compare ratios measured in one run.
``--config.model.dtype=bfloat16`` times mixed precision (bfloat16 matmul operands, float32
accumulation); the JSON records ``model_dtype`` and the CPU's bfloat16 flags (``cpu``:
``avx512_bf16``, ``amx_bf16``).
"""
import copy
import functools
import json
import os
import resource
import subprocess
import tempfile
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from xmr_jax.common import mesh as mesh_lib
from xmr_jax.common.hardware import cpu_bf16_flags
from xmr_jax.evaluation import engine
from xmr_jax.models import image_tower
from xmr_jax.models.precision import read_dtype
from xmr_jax.training import loop, state as state_lib, step as step_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (as for xmr_jax.main).")
flags.DEFINE_string("out", "benchmark.json", "Where to write the JSON.")
flags.DEFINE_integer("steps", 20, "Timed train steps.")
flags.DEFINE_integer("n_images", 1000, "Images in the scoring benchmark (5 captions each).")
flags.DEFINE_string("extract_images", "", "A folder of photos: also benchmark extraction.")
flags.DEFINE_integer("loop_steps", 0, "> 0: also time the trainer's loop for this many "
                     "steps with and without a host sync per step (issue 15).")
flags.DEFINE_integer("extract_n", 256, "Photos used by the extraction benchmark.")
flags.DEFINE_integer("startup_n_train", 0, "> 0: also time process start -> first train step "
                     "on a Flickr30K-size dataset with this many training images "
                     "(experiments/bench_startup.py: cold, cached token ids, resume).")
flags.DEFINE_integer("search_n", 0, "> 0: also time one query against an index of this many "
                     "synthetic photo embeddings (xmr_jax.search.topk; float32 and bfloat16).")
flags.DEFINE_integer("search_dim", 1024, "Embedding dimension of the --search_n index.")
flags.DEFINE_integer("search_repeats", 20, "Timed queries per dtype for --search_n.")
DEFAULT_TORCH_PYTHON = "/work/torchvenv/bin/python"
flags.DEFINE_string("torch_python", DEFAULT_TORCH_PYTHON,
                    "Python of a separate torch venv: with --extract_images also time the same "
                    "network in PyTorch (experiments/torch_effnet_lite.py). Skipped, with a "
                    "note in the JSON, when that file does not exist or the flag is empty.")
flags.DEFINE_bool("extract_variants", True,
                  "With --extract_images also time the JAX backbone at batch 8/32/64, in "
                  "bfloat16, and each convolution alone (JAX and torch); false: float32 "
                  "only (no torch bfloat16 autocast, slow without AVX512-BF16).")
flags.DEFINE_list("backbone", ["efficientnet_lite0"],
                  "With --extract_images: the backbones to time (xmr_jax.backbones.registry).")
TORCH_THREADS = 2   # torch.set_num_threads in the child, as official_bench.py
LAYER_REPEATS = 3


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
  out = {"batch_size": config.train.batch_size, "seconds_per_step": per_step,
         "steps_per_sec": 1.0 / per_step,
         "images_per_sec": config.train.batch_size / per_step, "compile_seconds": compile_s,
         "memory": _memory(compiled)}
  frozen = image_tower.frozen_phase(method)
  # The step of train.backbone_frozen_epochs (no backbone backward), timed with this run's
  # optimiser: Adam still moves the backbone from its moments here, where a frozen run holds
  # it; an elementwise update, negligible beside the step.
  if frozen is not None:
    ffn = step_lib.make_train_step(frozen, tx, decay_steps=sched["decay_steps"],
                                   decay_factor=config.train.lr_decay_factor,
                                   steps_per_epoch=sched["steps_per_epoch"], mesh=mesh)
    fmem = _memory(ffn.lower(box["state"], batch, hparams).compile())
    box["state"], _ = ffn(box["state"], batch, hparams)   # warm-up

    def run_frozen():
      box["state"], m = ffn(box["state"], batch, hparams)
      return m["loss"]
    frozen_s = _median_time(run_frozen, steps)
    out["frozen_phase"] = {"seconds_per_step": frozen_s, "speedup": per_step / frozen_s,
                           "memory": fmem}
  if "photos" in method.inputs:
    out["augment"] = _augment_rate(ds, config.train.batch_size, steps)
    out["backbone"] = _backbone_alone(ds.info.backbone, read_dtype(config.model),
                                      np.asarray(batch["photos"]), steps)
    if method.name == "vsepp":     # the torch twin (experiments/torch_vsepp_photos.py) is VSE++'s
      out["torch"] = _torch_finetune(FLAGS.torch_python, config, ds, batch, steps)
      if "seconds_per_step" in out["torch"]:
        out["jax_over_torch"] = out["torch"]["seconds_per_step"] / per_step
  if "text_states" in batch:    # a frozen text tower read from the data: time running it
    bare = {k: v for k, v in batch.items() if k != "text_states"}
    box["state"], _ = fn(box["state"], bare, hparams)   # compile + warm-up

    def run_tower():
      box["state"], m = fn(box["state"], bare, hparams)
      return m["loss"]
    every = _median_time(run_tower, steps)
    out["text_cache"] = {"seconds_per_step_tower_every_step": every,
                         "speedup": every / per_step,
                         "tower": method.text_states[0], "caption_tokens": batch["tokens"].shape[1]}
  return out


def _torch_finetune(torch_python: str, config, ds, batch, steps: int) -> dict:
  """The same VSE++ fine-tuning step in PyTorch on ``batch`` (its augmented photos and
  token ids), in a child process under ``torch_python``; ``{"skipped": why}`` without it."""
  from xmr_jax.backbones import registry
  if not torch_python or not os.path.exists(torch_python):
    return {"skipped": f"torch venv not found: {torch_python!r}"}
  bb = registry.get(ds.info.backbone)
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_vsepp_photos.py")
  mask = np.asarray(batch["token_mask"])
  with tempfile.TemporaryDirectory() as tmp:
    files = {"photos": np.asarray(batch["photos"]),
             "tokens": np.asarray(batch["tokens"]).astype(np.int64),
             "lengths": mask.sum(axis=1).astype(np.int64)}
    req = {k: os.path.join(tmp, f"{k}.npy") for k in files}
    for k, v in files.items():
      np.save(req[k], v)
    req.update(weights=bb.weights_path(), width=bb.width, depth=bb.depth,
               vocab_size=int(ds.info.vocab_size), word_dim=int(config.model.word_dim),
               embed_dim=int(config.model.embed_dim), margin=float(config.hparams.margin),
               learning_rate=float(config.hparams.learning_rate),
               backbone_lr_scale=float(config.train.backbone_lr_scale),
               grad_clip=float(config.train.grad_clip), steps=steps, threads=TORCH_THREADS)
    with open(os.path.join(tmp, "request.json"), "w") as f:
      json.dump(req, f)
    before = os.getloadavg()
    proc = subprocess.run([torch_python, script, os.path.join(tmp, "request.json")],
                          capture_output=True, text=True, timeout=3600)
  if proc.returncode != 0:
    return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:]}
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  out.update(load_average_before=before, load_average_after=os.getloadavg(),
             photos_shape=list(files["photos"].shape), tokens_shape=list(files["tokens"].shape))
  return out


def _backbone_alone(backbone: str, dtype: str, photos: np.ndarray, repeats: int) -> dict:
  """Where a fine-tuning step's time goes: the image tower alone (pretrained weights, the
  step's photos), its forward pass and its parameters' gradient (of a fixed random linear
  function of the grid), seconds each."""
  from xmr_jax.backbones import registry
  v = registry.get(backbone).feature_variables()
  tower = image_tower.PhotoTower(backbone, dtype=dtype)
  variables = {"params": {"net": v["params"]}, "batch_stats": {"net": v["batch_stats"]}}
  # The photos and the probe are arguments, not constants XLA could fold into the program.
  forward = jax.jit(lambda p, x: tower.apply(dict(variables, params=p), x))
  params, photos = variables["params"], jax.device_put(photos)
  probe = jax.device_put(np.random.default_rng(0).normal(
      size=forward(params, photos).shape).astype(np.float32))
  grad = jax.jit(jax.grad(lambda p, x, r: (forward(p, x) * r).sum()))
  jax.block_until_ready(grad(params, photos, probe))    # compile outside the timing
  return {"backbone": backbone, "photos": int(photos.shape[0]),
          "forward_seconds": _median_time(lambda: forward(params, photos), repeats),
          "gradient_seconds": _median_time(lambda: grad(params, photos, probe), repeats)}


def _augment_rate(ds, batch_size: int, repeats: int) -> dict:
  """Training photo augmentation alone (random resized crop + flip, one thread, as each
  grain reader thread runs it): photos/s over the batch of stored photos."""
  from xmr_jax.data import photos as photos_lib
  split = ds.split(ds.data_config.train_split)
  index = np.arange(min(batch_size, split.num_images))
  stored = np.asarray(split.photos[index])
  step = [0]

  def run():
    step[0] += 1
    return photos_lib.augment(stored, index, seed=0, step=step[0])
  per_batch = _median_time(run, repeats)
  return {"photos": len(index), "photo_side": int(stored.shape[1]),
          "seconds_per_batch": per_batch, "photos_per_sec": len(index) / per_batch}


def bench_loop(config, steps: int) -> dict:
  """The trainer's own loop (``loop.train``), steps/s with and without a host sync per step.

  "sync_every_step" is the loop as it was before issue 15: metrics read after every step
  (``log_every_steps=1``) and no batch prefetched ahead (``prefetch=1``), so the host's data
  preparation and the device's step alternate. "async" reads metrics once and keeps 2 batches
  on the device ahead of the step. Setup, compilation and the end-of-run checkpoint and dev
  evaluation are removed by timing a 1-step run of each and taking the difference.
  """
  out = {}
  for name, log_every, prefetch in (("sync_every_step", 1, 1), ("async", 10 ** 9, 2)):
    times = {}
    for n in (1, steps + 1):
      c = copy.deepcopy(config)
      c.train.update(num_steps=n, log_every_steps=log_every, prefetch=prefetch,
                     checkpoint_every_steps=10 ** 9, eval_every_epochs=10 ** 6)
      c.eval.dev_max_images = min(c.eval.dev_max_images, 100)
      with tempfile.TemporaryDirectory() as w:
        t0 = time.perf_counter()
        run = loop.start(c, w)
        loop.train(run)
        loop.close(run)
        times[n] = time.perf_counter() - t0
    out[name] = {"steps": steps, "steps_per_sec": steps / (times[steps + 1] - times[1])}
  out["async_over_sync"] = out["async"]["steps_per_sec"] / out["sync_every_step"]["steps_per_sec"]
  return out


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


def _conv_specs(size: int, width: float = 1.0, depth: float = 1.0) -> list:
  """Every convolution of EfficientNet-Lite (``width``/``depth``; Lite0 by default) at input
  side ``size``, in order, as dicts
  {"name", "kind" (stem/expand/depthwise/project/head), "c_in", "c_out", "k", "stride",
  "groups", "hw" (input side)}: the per-layer breakdown's shapes, shared with the torch child."""
  from xmr_jax.backbones import efficientnet_lite as lite
  specs = [dict(name="stem", kind="stem", c_in=3, c_out=32, k=3, stride=2, groups=1, hw=size)]
  hw = -(-size // 2)
  blocks = lite.block_configs(width, depth)
  for i, (k, stride, expand, c_in, c_out) in enumerate(blocks):
    mid = c_in * expand
    if expand != 1:
      specs.append(dict(name=f"blocks_{i}.expand", kind="expand", c_in=c_in, c_out=mid, k=1,
                        stride=1, groups=1, hw=hw))
    specs.append(dict(name=f"blocks_{i}.depthwise", kind="depthwise", c_in=mid, c_out=mid,
                      k=k, stride=stride, groups=mid, hw=hw))
    hw = -(-hw // stride)
    specs.append(dict(name=f"blocks_{i}.project", kind="project", c_in=mid, c_out=c_out, k=1,
                      stride=1, groups=1, hw=hw))
  specs.append(dict(name="head", kind="head", c_in=blocks[-1][-1], c_out=lite.FEATURES, k=1,
                    stride=1, groups=1, hw=hw))
  return specs


def _jax_layer_times(specs: list, batch: int, repeats: int, dtype=np.float32,
                     impl=None) -> list:
  """Median seconds of each convolution alone on random inputs of its shape: lax.conv_general
  _dilated (NHWC / HWIO, TF "SAME" padding, as flax.linen.Conv calls it), depthwise layers
  as the package computes them (or ``impl(x, w, stride)``)."""
  rng = np.random.default_rng(0)
  out = []
  for spec in specs:
    x = jax.numpy.asarray(rng.standard_normal((batch, spec["hw"], spec["hw"], spec["c_in"]),
                                              np.float32), dtype)
    w = jax.numpy.asarray(rng.standard_normal(
        (spec["k"], spec["k"], spec["c_in"] // spec["groups"], spec["c_out"]), np.float32),
        dtype)
    if impl is not None or spec["kind"] == "depthwise":   # (x, w, stride)
      conv = jax.jit(functools.partial(impl or _depthwise_package, stride=spec["stride"]))
    else:
      conv = jax.jit(functools.partial(
          jax.lax.conv_general_dilated, window_strides=(spec["stride"],) * 2,
          padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
          feature_group_count=spec["groups"]))
    jax.block_until_ready(conv(x, w))
    out.append({"name": spec["name"], "seconds": _median_time(lambda: conv(x, w), repeats)})
  return out


def _by_kind(specs: list, times: list) -> dict:
  kinds = {}
  for spec, t in zip(specs, times):
    kinds[spec["kind"]] = kinds.get(spec["kind"], 0.0) + t["seconds"]
  return kinds


def _rel_err(ref: np.ndarray, other: np.ndarray) -> dict:
  ref, other = np.asarray(ref, np.float64), np.asarray(other, np.float64)
  return {"max_abs": float(np.abs(ref - other).max()),
          "max_abs_over_max": float(np.abs(ref - other).max() / np.abs(ref).max()),
          "rel_l2": float(np.linalg.norm(ref - other) / np.linalg.norm(ref))}


def _images_per_sec(fn, x: np.ndarray, batch: int) -> float:
  """One pass over ``x`` in batches (compiled and warmed up on the first batch first)."""
  n = len(x) - len(x) % batch
  jax.block_until_ready(fn(x[:batch]))
  t0 = time.perf_counter()
  for i in range(0, n, batch):
    jax.block_until_ready(fn(x[i:i + batch]))
  return n / (time.perf_counter() - t0)


def _depthwise_package(x, w, stride: int):
  """The package's depthwise layer (efficientnet_lite.DepthwiseConv: k^2 shifted slices times
  per-channel weights, summed). x (B, H, W, C), w (k, k, 1, C)."""
  from xmr_jax.backbones import efficientnet_lite as lite
  return lite.DepthwiseConv(w.shape[0], stride).apply({"params": {"kernel": w}}, x)


def _depthwise_lax(x, w, stride: int):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=x.shape[-1])


@functools.partial(jax.jit, static_argnames=("depthwise", "width", "depth"))
def _functional_features(variables, images, depthwise: str = "grouped", width: float = 1.0,
                         depth: float = 1.0):
  """EfficientNet-Lite0's feature map written with plain lax ops on the Flax variables, with
  a choice of depthwise implementation ("grouped": lax grouped convolution, as
  flax.linen.Conv(feature_group_count=C) computes it, what the package used before;
  "shifted": the package's DepthwiseConv). (B, S, S, 3) -> (B, (S/32)^2, 1280)."""
  from xmr_jax.backbones import efficientnet_lite as lite
  p, st = variables["params"], variables["batch_stats"]
  dw = {"grouped": _depthwise_lax, "shifted": _depthwise_package}[depthwise]

  def conv(x, w, stride=1):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def bn(x, params, stats):
    scale = params["scale"] * jax.lax.rsqrt(stats["var"] + 1e-3)
    return (x - stats["mean"]) * scale + params["bias"]

  h = jax.nn.relu6(bn(conv(images, p["conv_stem"]["kernel"], 2), p["bn0"], st["bn0"]))
  for i, (_, stride, expand, c_in, c_out) in enumerate(lite.block_configs(width, depth)):
    bp, bs, x = p[f"blocks_{i}"], st[f"blocks_{i}"], h
    if expand != 1:
      h = jax.nn.relu6(bn(conv(h, bp["expand_conv"]["kernel"]), bp["bn0"], bs["bn0"]))
    h = jax.nn.relu6(bn(dw(h, bp["depthwise_conv"]["kernel"], stride), bp["bn1"], bs["bn1"]))
    h = bn(conv(h, bp["project_conv"]["kernel"]), bp["bn2"], bs["bn2"])
    if stride == 1 and c_in == c_out:
      h = h + x
  h = jax.nn.relu6(bn(conv(h, p["conv_head"]["kernel"]), p["bn1"], st["bn1"]))
  return h.reshape(h.shape[0], -1, lite.FEATURES)


def _torch_extract(torch_python: str, weights: str, x: np.ndarray, batch: int,
                   n_parity: int, specs: list, layer_repeats: int, width: float = 1.0,
                   depth: float = 1.0, bf16: bool = True) -> dict:
  """Runs experiments/torch_effnet_lite.py under the torch venv's python on the same inputs
  (float32 NCHW and channels-last; with ``bf16`` also bfloat16 autocast, slow without
  AVX512-BF16/AMX)."""
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_effnet_lite.py")
  with tempfile.TemporaryDirectory() as tmp:
    req = {"weights": weights, "width": width, "depth": depth,
           "inputs": os.path.join(tmp, "inputs.npy"),
           "features_out": os.path.join(tmp, "features.npy"),
           "bf16_features_out": os.path.join(tmp, "features_bf16.npy") if bf16 else "",
           "n_parity": n_parity, "batch": batch, "threads": TORCH_THREADS, "repeats": 1,
           "variants": ["float32_nchw", "float32_channels_last"] + (
               ["bfloat16_channels_last"] if bf16 else []),
           "layers": specs, "layer_repeats": layer_repeats}
    np.save(req["inputs"], x)
    with open(os.path.join(tmp, "request.json"), "w") as f:
      json.dump(req, f)
    proc = subprocess.run([torch_python, script, os.path.join(tmp, "request.json")],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
      return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["features"] = np.load(req["features_out"])
    if bf16:
      result["features_bf16"] = np.load(req["bf16_features_out"])
  return result


def bench_extract(images_dir: str, n: int, batch: int = 32, size: int = 0,
                  torch_python: str = "", variants: bool = True,
                  backbone: str = "efficientnet_lite0") -> dict:
  """Backbone images/s, and decode + preprocess + backbone images/s, on ``n`` photos.

  With ``torch_python`` (a python that has torch) also the same network in PyTorch on the
  same inputs (experiments/torch_effnet_lite.py in a child process, 2 threads), its parity
  with the JAX features and the ratio; with ``variants`` the JAX backbone at batch 8/32/64,
  in bfloat16, and each convolution alone (JAX and torch) summed by kind. ``backbone``: a
  name of ``xmr_jax.backbones.registry``, at input side ``size`` (0: its default).
  """
  from xmr_jax.backbones import efficientnet_lite as lite, registry
  from xmr_jax.data import captions
  bb = registry.get(backbone)
  size, arch = bb.size(size), dict(width=bb.width, depth=bb.depth)
  names = captions.list_photos(images_dir)[:n]
  n = len(names) - len(names) % batch
  variables = bb.load_weights()
  t0 = time.perf_counter()
  x = np.stack([bb.preprocess(captions.load_photo(os.path.join(images_dir, f)), size)
                for f in names[:n]])
  decode = time.perf_counter() - t0
  jax.block_until_ready(bb.features(variables, x[:batch]))      # compile

  def backbone_pass():
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, n, batch):
      jax.block_until_ready(bb.features(variables, x[i:i + batch]))
    return time.perf_counter() - t0, time.process_time() - c0
  net, net_cpu = backbone_pass()
  result = {"backbone": bb.describe(size), "photos": n, "batch": batch, "size": size,
            "backbone_images_per_sec": n / net,
            "backbone_cpu_seconds_per_image": net_cpu / n,
            "decode_preprocess_images_per_sec": n / decode,
            "pipeline_images_per_sec": n / (net + decode)}
  specs = _conv_specs(size, **arch) if variants else []
  n_parity = min(8, n)
  jax_feats = np.asarray(bb.features(variables, x[:n_parity]))
  if not torch_python:
    result["torch"] = {"skipped": "no --torch_python given"}
  elif not os.path.exists(torch_python):
    result["torch"] = {"skipped": f"torch venv not found: {torch_python} (see README: "
                                  "python3 -m venv /work/torchvenv ...)"}
  else:
    result["load_average_before_torch"] = os.getloadavg()
    t = _torch_extract(torch_python, bb.weights_path(), x, batch, n_parity, specs,
                       LAYER_REPEATS, bf16=variants, **arch)
    # The machine is shared: time JAX again right after torch and compare torch with the
    # mean of the two JAX passes (and with CPU seconds, which contention inflates less).
    again, again_cpu = backbone_pass()
    result["backbone_images_per_sec_after_torch"] = n / again
    jax_ips = 2 * n / (net + again)
    jax_cpu = (net_cpu + again_cpu) / (2 * n)
    result["load_average_after_torch"] = os.getloadavg()
    if "error" not in t:
      t["parity_vs_jax_float32"] = _rel_err(jax_feats, t.pop("features"))
      if "features_bf16" in t:
        t["bf16_parity_vs_jax_float32"] = _rel_err(jax_feats, t.pop("features_bf16"))
      f32 = {k: v["images_per_sec"] for k, v in t["variants"].items()
             if k.startswith("float32")}
      best = max(f32, key=f32.get)
      t["best_float32"] = best
      cpu = t["variants"][best].get("cpu_seconds_per_image")
      result["jax_over_torch"] = {
          "jax_images_per_sec_mean_of_before_and_after": jax_ips,
          "vs_best_float32": jax_ips / f32[best],
          "vs_float32_nchw": jax_ips / f32["float32_nchw"],
          "cpu_seconds_per_image_torch_best_over_jax": cpu / jax_cpu if cpu else None}
      if "layers" in t:
        t["layer_seconds_by_kind"] = _by_kind(specs, t["layers"])
    result["torch"] = t
  if variants:
    feats = functools.partial(bb.features, variables)
    result["jax_batch_sizes"] = {str(b): _images_per_sec(feats, x, b) for b in (8, 32, 64)}
    vars_bf16 = jax.tree.map(lambda a: a.astype(jax.numpy.bfloat16), variables)

    def feats_bf16(images):
      return lite._feature_map(vars_bf16, jax.numpy.asarray(images, jax.numpy.bfloat16),
                               **arch)
    result["jax_bfloat16"] = {
        "batch": batch, "images_per_sec": _images_per_sec(feats_bf16, x, batch),
        "parity_vs_float32": _rel_err(jax_feats, np.asarray(
            feats_bf16(x[:n_parity]), np.float32).reshape(jax_feats.shape))}
    result["jax_depthwise"] = {"batch": batch}
    for impl in ("grouped", "shifted"):
      fn = functools.partial(_functional_features, variables, depthwise=impl, **arch)
      result["jax_depthwise"][f"{impl}_network_images_per_sec"] = _images_per_sec(fn, x, batch)
      result["jax_depthwise"][f"{impl}_parity_vs_package"] = _rel_err(
          jax_feats, np.asarray(fn(x[:n_parity])))
    dw_specs = [s for s in specs if s["kind"] == "depthwise"]
    for impl, fn in (("grouped", _depthwise_lax), ("shifted", _depthwise_package)):
      result["jax_depthwise"][f"{impl}_layers_seconds"] = sum(
          t["seconds"] for t in _jax_layer_times(dw_specs, batch, LAYER_REPEATS, impl=fn))
    layers = _jax_layer_times(specs, batch, LAYER_REPEATS)
    result["jax_layers"] = {"batch": batch, "seconds_by_kind": _by_kind(specs, layers),
                            "per_layer": layers,
                            "network_seconds_per_batch": net / (n // batch)}
    layers16 = _jax_layer_times(specs, batch, LAYER_REPEATS, jax.numpy.bfloat16)
    result["jax_layers_bfloat16"] = {"seconds_by_kind": _by_kind(specs, layers16)}
  return result


def _unit_rows(path: str, n: int, dim: int, dtype: str, seed: int = 0) -> None:
  """An (n, dim) .npy of random unit vectors (the same for both dtypes), written in blocks;
  ``bfloat16`` is stored as an index stores it (uint16 bit patterns)."""
  import jax.numpy as jnp
  rng = np.random.default_rng(seed)
  out = np.lib.format.open_memmap(path, "w+", np.uint16 if dtype == "bfloat16" else np.float32,
                                  (n, dim))
  for start in range(0, n, 8192):
    x = rng.standard_normal((min(8192, n - start), dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out[start:start + len(x)] = x.astype(jnp.bfloat16).view(np.uint16) \
        if dtype == "bfloat16" else x
  out.flush()


def bench_search(n: int, dim: int, repeats: int, k: int = 10) -> dict:
  """ms per query of ``search.topk.top_k`` over n memory-mapped unit vectors, per dtype."""
  from xmr_jax.search import topk
  out = {"n": n, "dim": dim, "k": k, "chunk": topk.DEFAULT_CHUNK, "repeats": repeats}
  query = np.random.default_rng(1).standard_normal((1, dim)).astype(np.float32)
  query /= np.linalg.norm(query)
  with tempfile.TemporaryDirectory() as tmp:
    for dtype in ("float32", "bfloat16"):
      path = os.path.join(tmp, f"{dtype}.npy")
      _unit_rows(path, n, dim, dtype)
      matrix = np.load(path, mmap_mode="r")
      t0 = time.perf_counter()
      _, rows = topk.top_k(matrix, query, k)     # compiles; reads the file into the page cache
      first = time.perf_counter() - t0
      times = []
      for _ in range(repeats):
        t0 = time.perf_counter()
        topk.top_k(matrix, query, k)
        times.append(time.perf_counter() - t0)
      full = topk.as_device_dtype(np.asarray(matrix)).astype(np.float32) @ query[0]
      exact = bool((rows[0] == np.argsort(-full, kind="stable")[:k]).all())
      out[dtype] = {"ms_per_query_median": 1000 * float(np.median(times)),
                    "ms_min": 1000 * float(np.min(times)), "first_call_ms": 1000 * first,
                    "index_bytes": int(matrix.nbytes), "equals_numpy_sort": exact}
      del matrix
  return out


def _summary(extract: dict) -> dict:
  """The extraction result without its per-layer lists (those stay in the JSON file)."""
  out = {k: v for k, v in extract.items() if k != "jax_layers"}
  if "jax_layers" in extract:
    out["jax_layers"] = {k: v for k, v in extract["jax_layers"].items() if k != "per_layer"}
  if isinstance(extract.get("torch"), dict):
    out["torch"] = {k: v for k, v in extract["torch"].items() if k != "layers"}
  return out


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)   # as main.py: orbax logs every save at INFO
  config = FLAGS.config
  result = {"device": str(jax.devices()[0]), "device_count": jax.device_count(),
            "jax": jax.__version__, "cpu_count": os.cpu_count(),
            "cpu": cpu_bf16_flags(), "load_average_start": os.getloadavg()}
  if FLAGS.extract_images:
    by_backbone = {}
    for name in FLAGS.backbone:
      by_backbone[name] = bench_extract(FLAGS.extract_images, FLAGS.extract_n,
                                        torch_python=FLAGS.torch_python,
                                        variants=FLAGS.extract_variants, backbone=name)
      print(json.dumps({name: _summary(by_backbone[name])}, indent=2), flush=True)
    result["extract"] = by_backbone[FLAGS.backbone[0]]
    if len(by_backbone) > 1:
      result["extract_by_backbone"] = by_backbone
    result["load_average_end"] = os.getloadavg()
  if FLAGS.startup_n_train:
    import bench_startup   # experiments/ is on sys.path: this file's folder
    result["startup"] = bench_startup.run(FLAGS.startup_n_train)
    print(json.dumps({k: result["startup"][k] for k in ("cold", "cached_ids", "resume")},
                     indent=2))
  if FLAGS.search_n:
    result["search"] = bench_search(FLAGS.search_n, FLAGS.search_dim, FLAGS.search_repeats)
    result["load_average_end"] = os.getloadavg()
    print(json.dumps(result["search"], indent=2), flush=True)
  if config is None:
    if not (FLAGS.extract_images or FLAGS.startup_n_train or FLAGS.search_n):
      raise app.UsageError("give --config (and/or --extract_images, --startup_n_train, "
                           "--search_n)")
    with open(FLAGS.out, "w") as f:
      json.dump(result, f, indent=2, default=str)
    return
  ds, method, tx, hparams, state = loop.setup(config)
  result.update(config=config.to_dict(), method=method.name,
                model_dtype=read_dtype(config.model))   # "auto" as it resolved here
  # Evaluation first: the train step donates (consumes) the state buffers.
  result["eval"] = bench_eval(config, ds, method, state, FLAGS.n_images)
  result["train"] = bench_train(config, ds, method, tx, hparams, state, FLAGS.steps)
  if FLAGS.loop_steps:
    result["loop"] = bench_loop(config, FLAGS.loop_steps)
    print(json.dumps(result["loop"], indent=2))
  result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  result["load_average_end"] = os.getloadavg()
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump(result, f, indent=2, default=str)
  summary = {k: result["train"][k] for k in ("seconds_per_step", "steps_per_sec")}
  summary["model_dtype"] = result["model_dtype"]
  summary["train_images_per_sec"] = result["train"]["images_per_sec"]
  if "augment" in result["train"]:
    summary["augment_photos_per_sec"] = result["train"]["augment"]["photos_per_sec"]
  if "jax_over_torch" in result["train"]:
    summary["torch_train_images_per_sec"] = result["train"]["torch"]["images_per_sec"]
    summary["jax_over_torch"] = result["train"]["jax_over_torch"]
  summary["score_pairs_per_sec"] = result["eval"]["score"]["pairs_per_sec"]
  summary["encode_images_per_sec"] = result["eval"]["encode"]["image"]["items_per_sec"]
  summary["encode_captions_per_sec"] = result["eval"]["encode"]["text"]["items_per_sec"]
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)
