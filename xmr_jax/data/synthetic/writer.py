"""One split's arrays and text files, and the ``meta.json`` content.

Each stage (scenes, captions, regions, pixels) draws from its own random stream keyed by
(seed, split, stage, chunk), so one stage's output does not depend on whether another ran:
region features are the same with or without ``pixels``.
"""
import dataclasses
import json
import os
from typing import Any, Dict, Sequence

import numpy as np

from xmr_jax.data.synthetic.captions import DEP_RELATIONS, TEMPLATES, make_captions
from xmr_jax.data.synthetic.features import (FEATURE_DIM, FEATURE_SEED, NUM_REGIONS,
                                             detector_weights, region_features)
from xmr_jax.data.synthetic.render import IMAGE_SIZE, PATTERNS, SHAPES, render
from xmr_jax.data.synthetic.scenes import sample_scenes
from xmr_jax.data.synthetic.spec import (CAPTIONS_PER_IMAGE, CATEGORIES, COLOURS, MAX_OBJECTS,
                                         RELATIONS, SIZES, SPLITS, VERSION, Difficulty)

_CHUNK = 1000                  # images per feature/pixel block (fixed: part of the RNG layout)
_STREAM_SCENES, _STREAM_CAPTIONS, _STREAM_REGIONS, _STREAM_PIXELS = range(4)


def _rng(seed: int, split: str, stream: int, chunk: int = 0) -> np.random.Generator:
  return np.random.default_rng([seed, SPLITS.index(split), stream, chunk])


def _save(path: str, array: np.ndarray) -> None:
  with open(path, "wb") as f:
    np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def _write_lines(path: str, lines: Sequence[str]) -> None:
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    f.write("".join(line + "\n" for line in lines))


def write_split(out_dir: str, split: str, n: int, seed: int, pixels: bool,
                d: Difficulty) -> None:
  """Generates one split of n images and writes its files into out_dir."""
  scenes = sample_scenes(_rng(seed, split, _STREAM_SCENES), n, d)
  texts, deps, cap_labels = make_captions(_rng(seed, split, _STREAM_CAPTIONS), scenes, d)
  weights = detector_weights()
  feats, boxes, region_obj, imgs = [], [], [], []
  for c, start in enumerate(range(0, n, _CHUNK)):
    part = {k: v[start:start + _CHUNK] for k, v in scenes.items()}
    f, b, o = region_features(_rng(seed, split, _STREAM_REGIONS, c), part, d, weights)
    feats.append(f), boxes.append(b), region_obj.append(o)
    if pixels:
      imgs.append(render(_rng(seed, split, _STREAM_PIXELS, c), part))
  cat = lambda xs, shape, dt: np.concatenate(xs) if xs else np.zeros(shape, dt)
  p = lambda name: os.path.join(out_dir, f"{split}_{name}")
  _save(p("ims.npy"), cat(feats, (0, NUM_REGIONS, FEATURE_DIM), np.float32))
  _save(p("boxes.npy"), cat(boxes, (0, NUM_REGIONS, 4), np.float32))
  _save(p("region_objects.npy"), cat(region_obj, (0, NUM_REGIONS), np.int8))
  if pixels:
    _save(p("pixels.npy"), cat(imgs, (0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
  _write_lines(p("caps.txt"), texts)
  _write_lines(p("deps.jsonl"), [json.dumps(t) for t in deps])
  labels = np.zeros((n, len(CATEGORIES)), np.uint8)
  np.put_along_axis(labels, np.where(scenes["valid"], scenes["cats"], 0), 1, axis=1)
  labels[:, 0] = np.any(scenes["valid"] & (scenes["cats"] == 0), axis=1)
  _save(p("labels.npy"), labels)
  _save(p("cap_labels.npy"), cap_labels)
  objects = np.stack([scenes["cats"], scenes["cols"], scenes["sizes"]], -1)
  _save(p("objects.npy"), np.where(scenes["valid"][..., None], objects, -1).astype(np.int16))
  _save(p("object_boxes.npy"), scenes["boxes"].astype(np.float32))
  _save(p("groups.npy"), scenes["group"].astype(np.int32))


def make_meta(seed: int, sizes: Dict[str, int], pixels: bool, d: Difficulty) -> Dict[str, Any]:
  """The ``meta.json`` content: everything a reader needs besides the arrays."""
  return dict(
      name="synthetic", version=VERSION, seed=seed, sizes=sizes, pixels=pixels,
      captions_per_image=CAPTIONS_PER_IMAGE, num_regions=NUM_REGIONS, feature_dim=FEATURE_DIM,
      image_size=[IMAGE_SIZE, IMAGE_SIZE] if pixels else None, max_objects=MAX_OBJECTS,
      categories=list(CATEGORIES), colours=list(COLOURS), sizes_vocab=list(SIZES),
      relations=list(RELATIONS), dep_relations=list(DEP_RELATIONS), shapes=list(SHAPES),
      patterns=list(PATTERNS), num_templates=len(TEMPLATES), feature_seed=FEATURE_SEED,
      difficulty=dataclasses.asdict(d))

