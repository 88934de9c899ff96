"""Synthetic image–sentence retrieval benchmark, written in the SCAN precomp layout.

Every image is a *scene* of 2–5 objects. An object has a category (24), a colour (10), a size
(3) and a position; captions describe random subsets of a scene with ten templates that bind
attributes to objects and state spatial relations ("a small red dog left of a blue car",
"there is a green cup above a large bird", "a photo of a cat and a yellow tree", ...).

Why it is not a toy:

* **Hard negatives by construction.** A fraction of the images come in groups that share
  their category set but permute colours (never the identity), sizes and positions among the
  objects. A sibling therefore has exactly the same bag of caption words available while every
  attribute binding or relation may differ: bag-of-words matching cannot tell them apart.
* **Detector-like region features.** Each image has 36 regions of dimension 128. About two
  thirds of them are jittered, overlapping, sometimes partial boxes on the objects; the rest are
  clutter boxes on the background (weak false-positive category evidence). A region's feature is
  a fixed random two-layer tanh MLP (seeded by ``FEATURE_SEED``, independent of the scene seed,
  so all splits and seeds share one "detector") applied to the region's category, colour and
  size one-hots, its box geometry, visibility and a random appearance nuisance, plus Gaussian
  noise; colours are sometimes ambiguous. Region order is shuffled.
* **One-to-many.** Five captions per image, each about a different random subset of objects.

Files per split (``train``, ``dev``, ``test``), N images, C = 24 classes:

================================ ======================== =====================================
``{split}_ims.npy``              (N, 36, 128) float32     region features (SCAN layout)
``{split}_caps.txt``             5N lines, UTF-8          caption k belongs to image k // 5
``{split}_labels.npy``           (N, C) uint8             multi-hot categories in the image
``{split}_cap_labels.npy``       (5N, C) uint8            multi-hot categories a caption names
``{split}_deps.jsonl``           5N lines                 JSON list of [relation, head, dep]
``{split}_boxes.npy``            (N, 36, 4) float32       region boxes x0, y0, x1, y1 in [0, 1]
``{split}_pixels.npy``           (N, 64, 64, 3) uint8     rendered scene (``pixels=True`` only)
``{split}_objects.npy``          (N, 5, 3) int16          [category, colour, size], -1 = none
``{split}_object_boxes.npy``     (N, 5, 4) float32        object boxes (zeros for none)
``{split}_region_objects.npy``   (N, 36) int8             object slot of each region, -1 clutter
``{split}_groups.npy``           (N,) int32               hard-negative group id
``meta.json``                    —                        version, sizes, vocabularies, knobs
================================ ======================== =====================================

Image coordinates have y pointing down, so "above" means a smaller y. Generation is
deterministic: the same seed, sizes and knobs give byte-identical files on the same platform
and numpy version (float transcendental kernels may differ across CPUs).

CLI: ``python -m xmr_jax.data.synthetic --out DIR [--seed 0] [--n-train N] ... [--pixels]``.
"""
import argparse
import contextlib
import ctypes
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

VERSION = "1.0.0"
FEATURE_SEED = 271828          # seeds the fixed "detector" MLP; never the scene seed
NUM_REGIONS = 36
FEATURE_DIM = 128
MAX_OBJECTS = 5
MIN_OBJECTS = 2
IMAGE_SIZE = 64
CAPTIONS_PER_IMAGE = 5
SPLITS = ("train", "dev", "test")

CATEGORIES = ("dog", "cat", "bird", "horse", "cow", "sheep", "elephant", "giraffe",
              "car", "bus", "truck", "bicycle", "boat", "airplane", "train", "cup",
              "bottle", "chair", "table", "lamp", "tree", "flower", "ball", "clock")
COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown",
           "white", "black")
COLOUR_RGB = np.array([[220, 30, 30], [40, 180, 50], [40, 70, 220], [235, 220, 40],
                       [245, 140, 20], [140, 50, 180], [245, 130, 190], [130, 80, 30],
                       [245, 245, 245], [15, 15, 15]], np.uint8)
SIZES = ("small", "medium", "large")
RELATIONS = ("left_of", "right_of", "above", "below", "near")
DEP_RELATIONS = tuple(f"prep_{r}" for r in RELATIONS) + (
    "det", "amod", "nsubj", "expl", "conj_and", "prep_of", "prep_with", "prep_in", "vmod",
    "dobj")
# Two surface forms per relation; the dependency label stays the relation's.
REL_PHRASES = {"left_of": ("left of", "to the left of"),
               "right_of": ("right of", "to the right of"),
               "above": ("above", "over"), "below": ("below", "under"),
               "near": ("near", "next to")}
SHAPES = ("rectangle", "ellipse", "triangle", "diamond", "cross", "ring")   # category % 6
PATTERNS = ("solid", "hstripes", "vstripes", "checker")                      # category // 6
STRIPE_SHADE = 0.6             # darker stripes of patterned shapes
BACKGROUND_GREY = 128
BACKGROUND_NOISE = 12
_HALF_EXTENT = np.array([[0.06, 0.09], [0.10, 0.14], [0.15, 0.21]])   # per size: lo, hi
_NEAR = 0.1                    # centre distance under which two objects are just "near"


@dataclasses.dataclass(frozen=True)
class Difficulty:
  """Difficulty knobs (keyword arguments of :func:`generate`).

  Defaults aim at hard-but-learnable: a fragment model that reads each region's category and
  colour jointly can resolve captions, while mean-pooled (global) features mix the bindings of
  5 objects with 12 clutter regions and 60 % of test images have 3 siblings with the same
  caption vocabulary, so a global embedding should stay well below saturation.
  """
  feature_noise: float = 0.5         # std of additive feature noise (features have std ~1)
  nuisance: float = 1.0              # scale of the random appearance input of the MLP
  colour_confusion: float = 0.2      # P(region's colour evidence is blended with another)
  partial_frac: float = 0.3          # P(object region covers only part of the object)
  box_jitter: float = 0.12           # std of box-edge jitter, relative to the object extent
  object_region_frac: float = 2 / 3  # share of the 36 regions placed on objects
  clutter_strength: float = 0.35     # weight of false category evidence in clutter regions
  hard_negative_frac: float = 0.6    # share of images in groups of permuted siblings
  group_size: int = 4                # images per hard-negative group
  p_colour: float = 0.85             # P(caption states a mentioned object's colour)
  p_size: float = 0.4                # P(caption states a mentioned object's size)


# ----------------------------------------------------------------------------- scenes

def _permute_slots(rng: np.random.Generator, n_obj: np.ndarray, force: bool) -> np.ndarray:
  """Random permutation of the first n_obj slots of each row (padding stays in place).

  With ``force`` the permutation is never the identity (slots 0 and 1 are swapped when it
  would be), which guarantees a sibling's colour binding differs.
  """
  rows = n_obj.shape[0]
  keys = rng.random((rows, MAX_OBJECTS))
  keys[np.arange(MAX_OBJECTS)[None] >= n_obj[:, None]] = np.inf
  perm = np.argsort(keys, axis=1, kind="stable")
  if force:
    ident = np.all(perm == np.arange(MAX_OBJECTS)[None], axis=1)
    perm[ident, 0], perm[ident, 1] = 1, 0
  return perm


def _base_scenes(rng: np.random.Generator, n: int) -> Dict[str, np.ndarray]:
  """n independent scenes: distinct categories and colours, sizes with replacement."""
  n_obj = rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1, size=n)
  cats = np.argsort(rng.random((n, len(CATEGORIES))), axis=1)[:, :MAX_OBJECTS]
  cols = np.argsort(rng.random((n, len(COLOURS))), axis=1)[:, :MAX_OBJECTS]
  sizes = rng.integers(0, len(SIZES), size=(n, MAX_OBJECTS))
  centres = rng.uniform(0.15, 0.85, size=(n, MAX_OBJECTS, 2))
  return dict(n_obj=n_obj, cats=cats, cols=cols, sizes=sizes, centres=centres)


def _take(a: np.ndarray, perm: np.ndarray) -> np.ndarray:
  idx = perm.reshape(perm.shape + (1,) * (a.ndim - 2))
  return np.take_along_axis(a, idx, axis=1)


def sample_scenes(rng: np.random.Generator, n: int, d: Difficulty) -> Dict[str, np.ndarray]:
  """Samples n scenes; a share come in groups of siblings with permuted attribute bindings.

  Returns arrays n_obj (n,), cats/cols/sizes (n, 5) (garbage beyond n_obj), boxes (n, 5, 4),
  valid (n, 5) bool and group (n,) — in shuffled image order.
  """
  g = max(int(d.group_size), 1)
  n_groups = int(n * d.hard_negative_frac) // g if g > 1 else 0
  n_single = n - n_groups * g
  base = _base_scenes(rng, n_groups + n_single)
  member = np.concatenate([np.tile(np.arange(g), n_groups), np.zeros(n_single, int)])
  src = np.concatenate([np.repeat(np.arange(n_groups), g),
                        n_groups + np.arange(n_single)])
  s = {k: v[src] for k, v in base.items()}
  sib = member > 0
  # Siblings: same categories, colours permuted (never identity), sizes and positions permuted.
  for key, force in (("cols", True), ("sizes", False), ("centres", False)):
    perm = _permute_slots(rng, s["n_obj"][sib], force)
    s[key][sib] = _take(s[key][sib], perm)
  wobble = rng.normal(0, 0.02, s["centres"].shape) * sib[:, None, None]
  s["centres"] = np.clip(s["centres"] + wobble, 0.1, 0.9)
  half = rng.uniform(_HALF_EXTENT[s["sizes"], 0:1].repeat(2, -1),
                     _HALF_EXTENT[s["sizes"], 1:2].repeat(2, -1))
  boxes = np.clip(np.concatenate([s["centres"] - half, s["centres"] + half], -1), 0.0, 1.0)
  valid = np.arange(MAX_OBJECTS)[None] < s["n_obj"][:, None]
  order = rng.permutation(n)
  out = dict(n_obj=s["n_obj"], cats=s["cats"], cols=s["cols"], sizes=s["sizes"],
             boxes=boxes * valid[..., None], valid=valid, group=src)
  return {k: v[order] for k, v in out.items()}


def relation_matrix(boxes: np.ndarray) -> np.ndarray:
  """(N, 5, 5) int relation index r[i, a, b]: object a is RELATIONS[r] object b.

  Dominant axis of the centre displacement decides left/right vs above/below (y points down);
  centres closer than ``_NEAR`` on both axes are "near".
  """
  c = (boxes[..., :2] + boxes[..., 2:]) / 2
  d = c[:, None, :, :] - c[:, :, None, :]          # centre of b minus centre of a
  dx, dy = d[..., 0], d[..., 1]
  horiz = np.abs(dx) >= np.abs(dy)
  rel = np.where(horiz, np.where(dx > 0, 0, 1), np.where(dy > 0, 2, 3))
  return np.where(np.maximum(np.abs(dx), np.abs(dy)) < _NEAR, 4, rel)


# ----------------------------------------------------------------------------- captions

def _noun_phrase(cat: str, size: Optional[str], colour: Optional[str]) -> Tuple[str, list]:
  """"a small red dog" and its triples det/amod (Stanford-style, head = the noun)."""
  adjs = [w for w in (size, colour) if w]
  det = "an" if (adjs + [cat])[0][0] in "aeiou" else "a"
  deps = [["det", cat, det]] + [["amod", cat, w] for w in adjs]
  return " ".join([det] + adjs + [cat]), deps


# Each template: (number of objects, builder(nps, cats, rel) -> (text, extra triples)), where
# nps are noun phrases, cats their head nouns and rel(a, b, slot) -> (phrase, relation label).
def _t_plain(n, c, rel):
  p, lab = rel(0, 1, 0)
  return f"{n[0]} {p} {n[1]}", [[f"prep_{lab}", c[0], c[1]]]


def _t_there(n, c, rel):
  p, lab = rel(0, 1, 0)
  return (f"there is {n[0]} {p} {n[1]}",
          [["expl", "is", "there"], ["nsubj", "is", c[0]], [f"prep_{lab}", c[0], c[1]]])


def _t_photo(n, c, rel):
  return (f"a photo of {n[0]} and {n[1]}",
          [["det", "photo", "a"], ["prep_of", "photo", c[0]], ["prep_of", "photo", c[1]],
           ["conj_and", c[0], c[1]]])


def _t_is(n, c, rel):
  p, lab = rel(0, 1, 0)
  return f"{n[0]} is {p} {n[1]}", [["nsubj", "is", c[0]], [f"prep_{lab}", c[0], c[1]]]


def _t_showing(n, c, rel):
  return (f"a picture showing {n[0]} , {n[1]} and {n[2]}",
          [["det", "picture", "a"], ["vmod", "picture", "showing"], ["dobj", "showing", c[0]],
           ["conj_and", c[0], c[1]], ["conj_and", c[0], c[2]]])


def _t_while(n, c, rel):
  p, lab = rel(0, 1, 0)
  q, lab2 = rel(2, 3, 1)
  return (f"{n[0]} is {p} {n[1]} while {n[2]} is {q} {n[3]}",
          [["nsubj", "is", c[0]], [f"prep_{lab}", c[0], c[1]], ["nsubj", "is", c[2]],
           [f"prep_{lab2}", c[2], c[3]]])


def _t_image(n, c, rel):
  return f"an image with {n[0]}", [["det", "image", "an"], ["prep_with", "image", c[0]]]


def _t_scene(n, c, rel):
  p, lab = rel(0, 1, 0)
  return (f"in this scene {n[0]} appears {p} {n[1]}",
          [["det", "scene", "this"], ["prep_in", "appears", "scene"],
           ["nsubj", "appears", c[0]], [f"prep_{lab}", c[0], c[1]]])


def _t_two_rel(n, c, rel):
  p, lab = rel(0, 1, 0)
  q, lab2 = rel(0, 2, 1)
  return (f"{n[0]} {p} {n[1]} and {q} {n[2]}",
          [[f"prep_{lab}", c[0], c[1]], [f"prep_{lab2}", c[0], c[2]]])


def _t_with_it(n, c, rel):
  p, lab = rel(1, 0, 0)
  return (f"{n[0]} with {n[1]} {p} it",
          [["prep_with", c[0], c[1]], [f"prep_{lab}", c[1], c[0]]])


TEMPLATES = ((2, _t_plain), (2, _t_there), (2, _t_photo), (2, _t_is), (3, _t_showing),
             (4, _t_while), (1, _t_image), (2, _t_scene), (3, _t_two_rel), (2, _t_with_it))


def make_captions(rng: np.random.Generator, scenes: Dict[str, np.ndarray],
                  d: Difficulty) -> Tuple[List[str], List[list], np.ndarray]:
  """Five captions per image: texts, dependency triples and (5N, C) multi-hot labels.

  Random draws are vectorised up front; the per-caption string assembly is a Python loop
  (run once at generation, never per training step).
  """
  n = scenes["n_obj"].shape[0]
  shape = (n, CAPTIONS_PER_IMAGE)
  need = np.array([k for k, _ in TEMPLATES])
  # Uniform over the templates that fit the scene's object count.
  fits = need[None, :] <= scenes["n_obj"][:, None]                        # (n, T)
  scores = np.where(fits[:, None, :], rng.random(shape + (len(TEMPLATES),)), -1.0)
  tmpl = scores.argmax(-1)
  keys = rng.random(shape + (MAX_OBJECTS,))
  keys[~np.broadcast_to(scenes["valid"][:, None], keys.shape)] = np.inf
  order = np.argsort(keys, axis=-1)
  say_colour = rng.random(shape + (MAX_OBJECTS,)) < d.p_colour
  say_size = rng.random(shape + (MAX_OBJECTS,)) < d.p_size
  variant = rng.integers(0, 2, size=shape + (2,))
  rels = relation_matrix(scenes["boxes"])
  texts, deps = [], []
  cap_labels = np.zeros((n * CAPTIONS_PER_IMAGE, len(CATEGORIES)), np.uint8)
  for i in range(n):
    for j in range(CAPTIONS_PER_IMAGE):
      k, build = TEMPLATES[tmpl[i, j]]
      objs = order[i, j, :k]
      nps, cats, triples = [], [], []
      for o in objs:
        cat = CATEGORIES[scenes["cats"][i, o]]
        size = SIZES[scenes["sizes"][i, o]] if say_size[i, j, o] else None
        col = COLOURS[scenes["cols"][i, o]] if say_colour[i, j, o] else None
        phrase, t = _noun_phrase(cat, size, col)
        nps.append(phrase), cats.append(cat), triples.extend(t)

      def rel(a, b, slot, i=i, j=j, objs=objs):
        label = RELATIONS[rels[i, objs[a], objs[b]]]
        return REL_PHRASES[label][variant[i, j, slot]], label

      text, extra = build(nps, cats, rel)
      texts.append(text)
      deps.append(triples + extra)
      cap_labels[i * CAPTIONS_PER_IMAGE + j, scenes["cats"][i, objs]] = 1
  return texts, deps, cap_labels


# ----------------------------------------------------------------------------- regions

_HIDDEN = 256
_NUISANCE_DIM = 8
# Input blocks of the detector MLP and the scale of their first-layer weights: category and
# colour dominate, geometry is weaker, appearance nuisance weaker still.
_BLOCKS = (("cat", len(CATEGORIES), 1.0), ("colour", len(COLOURS), 1.0),
           ("size", len(SIZES), 0.7), ("geometry", 8, 0.5), ("flags", 2, 0.5),
           ("nuisance", _NUISANCE_DIM, 0.3))
_OUT_SCALE = 1.32              # brings the MLP output to roughly unit std per dimension


def detector_weights() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The fixed random two-layer MLP (W1, b1, W2), seeded by ``FEATURE_SEED`` only."""
  rng = np.random.default_rng(FEATURE_SEED)
  scale = np.concatenate([np.full(dim, s) for _, dim, s in _BLOCKS])
  w1 = rng.standard_normal((scale.size, _HIDDEN)) * scale[:, None]
  b1 = rng.normal(0.0, 0.3, _HIDDEN)
  w2 = rng.standard_normal((_HIDDEN, FEATURE_DIM)) * (_OUT_SCALE / np.sqrt(_HIDDEN))
  return w1.astype(np.float32), b1.astype(np.float32), w2.astype(np.float32)


def _onehot(idx: np.ndarray, n: int) -> np.ndarray:
  return (idx[..., None] == np.arange(n)).astype(np.float32)


def _region_boxes(rng, obj_box, is_obj, d: Difficulty):
  """Jittered (sometimes partial) boxes on objects, random boxes elsewhere; visibility."""
  shape = is_obj.shape
  wh = np.concatenate([obj_box[..., 2:] - obj_box[..., :2]] * 2, -1)
  jit = obj_box + rng.normal(0.0, d.box_jitter, shape + (4,)) * wh
  # A partial region keeps a fraction v of the object along one side (left/top/right/bottom).
  partial = rng.random(shape) < d.partial_frac
  v = np.where(partial, rng.uniform(0.35, 0.8, shape), 1.0)
  side = rng.integers(0, 4, shape)
  x0, y0, x1, y1 = np.moveaxis(jit, -1, 0)
  w, h = x1 - x0, y1 - y0
  x1 = np.where(side == 0, x0 + v * w, x1)
  y1 = np.where(side == 1, y0 + v * h, y1)
  x0 = np.where(side == 2, x1 - v * w, x0)
  y0 = np.where(side == 3, y1 - v * h, y0)
  centre = rng.uniform(0.0, 1.0, shape + (2,))
  half = rng.uniform(0.03, 0.2, shape + (2,))
  clutter = np.concatenate([centre - half, centre + half], -1)
  box = np.where(is_obj[..., None], np.stack([x0, y0, x1, y1], -1), clutter)
  box = np.clip(box, 0.0, 1.0)
  # Keep boxes non-degenerate after clipping (at least 1/64 of the image per side).
  box[..., 2:] = np.maximum(box[..., 2:], np.minimum(box[..., :2] + 1 / 64, 1.0))
  box[..., :2] = np.minimum(box[..., :2], box[..., 2:] - 1 / 64)
  return box.astype(np.float32), np.where(is_obj, v, 0.0).astype(np.float32)


def region_features(rng: np.random.Generator, scenes: Dict[str, np.ndarray], d: Difficulty,
                    weights=None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(features (N, 36, 128) f32, boxes (N, 36, 4) f32, region object slot (N, 36) int8)."""
  w1, b1, w2 = detector_weights() if weights is None else weights
  n = scenes["n_obj"].shape[0]
  shape = (n, NUM_REGIONS)
  n_obj_regions = int(round(NUM_REGIONS * d.object_region_frac))
  slot = np.arange(NUM_REGIONS)[None]
  is_obj = np.broadcast_to(slot < n_obj_regions, shape)
  obj = np.where(is_obj, slot % scenes["n_obj"][:, None], -1)       # round-robin on objects
  safe = np.maximum(obj, 0)
  pick = lambda a: np.take_along_axis(a, safe, axis=1)
  obj_box = np.take_along_axis(scenes["boxes"], safe[..., None], axis=1)
  box, vis = _region_boxes(rng, obj_box, is_obj, d)
  rand_cat = rng.integers(0, len(CATEGORIES), shape)
  rand_col = rng.integers(0, len(COLOURS), shape)
  cat_in = np.where(is_obj[..., None], _onehot(pick(scenes["cats"]), len(CATEGORIES))
                    * vis[..., None], _onehot(rand_cat, len(CATEGORIES)) * d.clutter_strength)
  # Ambiguous colour: the true colour's evidence is blended with a random one.
  confused = (rng.random(shape) < d.colour_confusion)[..., None]
  true_col = _onehot(pick(scenes["cols"]), len(COLOURS))
  col_obj = np.where(confused, 0.5 * true_col + 0.5 * _onehot(rand_col, len(COLOURS)), true_col)
  col_in = np.where(is_obj[..., None], col_obj, 0.5 * _onehot(rand_col, len(COLOURS)))
  size_in = _onehot(pick(scenes["sizes"]), len(SIZES)) * vis[..., None]
  geom = np.concatenate([box, (box[..., :2] + box[..., 2:]) / 2, box[..., 2:] - box[..., :2]],
                        -1) * 2 - 1
  flags = np.stack([vis, (~is_obj).astype(np.float32)], -1)
  nuis = rng.standard_normal(shape + (_NUISANCE_DIM,), dtype=np.float32) * d.nuisance
  x = np.concatenate([cat_in, col_in, size_in, geom, flags, nuis], -1).astype(np.float32)
  feats = np.tanh(x @ w1 + b1) @ w2
  feats += rng.standard_normal(feats.shape, dtype=np.float32) * np.float32(d.feature_noise)
  # Detectors return regions in no particular object order.
  perm = np.argsort(rng.random(shape), axis=1)
  feats = np.take_along_axis(feats, perm[..., None], axis=1)
  box = np.take_along_axis(box, perm[..., None], axis=1)
  obj = np.take_along_axis(obj, perm, axis=1)
  return feats.astype(np.float32), box, obj.astype(np.int8)


# ----------------------------------------------------------------------------- pixels

def _shape_mask(shape_id: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Inside-test of each SHAPES entry in box coordinates u, v in [0, 1] (broadcast)."""
  a, b = 2 * u - 1, 2 * v - 1
  r2 = a * a + b * b
  masks = (np.ones_like(r2, bool), r2 <= 1, v >= np.abs(a), np.abs(a) + np.abs(b) <= 1,
           (np.abs(a) <= 0.35) | (np.abs(b) <= 0.35), (r2 <= 1) & (r2 >= 0.45))
  return np.choose(shape_id, masks)


def _dark(pattern: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """True where a PATTERNS entry is drawn dark (stripes/checks); solid is never dark."""
  h = np.floor(v * 4) % 2 == 1
  w = np.floor(u * 4) % 2 == 1
  c = (np.floor(u * 3) + np.floor(v * 3)) % 2 == 1
  return np.choose(pattern, (np.zeros_like(h), h, w, c))


_SPRITE = 64                   # resolution of the per-category sprite in box coordinates


def category_sprites() -> np.ndarray:
  """(C, 64, 64) uint8 sprite per category in box coordinates: 0 out, 1 light, 2 dark."""
  t = (np.arange(_SPRITE) + 0.5) / _SPRITE
  u, v = t[None, None, :], t[None, :, None]
  cats = np.arange(len(CATEGORIES))[:, None, None]
  inside = _shape_mask(cats % len(SHAPES), u, v)
  dark = _dark(cats // len(SHAPES), u, v)
  return (inside * (1 + dark)).astype(np.uint8)


def render(rng: np.random.Generator, scenes: Dict[str, np.ndarray]) -> np.ndarray:
  """(N, 64, 64, 3) uint8: grey noisy background, objects painted large-to-small.

  Pixel (row i, col j) samples the point ((j + .5) / 64, (i + .5) / 64); an object covers a
  pixel only inside its box, so the boxes in ``object_boxes`` bound every painted pixel. Each
  object is its category's sprite (shape = category % 6, stripe pattern = category // 6)
  stretched to its box, in its colour (stripes darker by ``STRIPE_SHADE``).
  """
  n = scenes["n_obj"].shape[0]
  grid = (np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5) / IMAGE_SIZE
  sprites = category_sprites()
  # Painter's order: larger size first, so small objects stay visible; padding last (skipped).
  key = np.where(scenes["valid"], -scenes["sizes"] * MAX_OBJECTS + np.arange(MAX_OBJECTS), 99)
  draw = np.argsort(key, axis=1, kind="stable")
  rows = np.arange(n)[:, None, None]
  top = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.int8)   # 0 = background, else palette index
  for step in range(MAX_OBJECTS):
    o = draw[:, step][:, None, None]
    x0, y0, x1, y1 = (scenes["boxes"][rows[:, :, 0], o[:, :, 0], k][:, :, None]
                      .astype(np.float32) for k in range(4))
    u = (grid[None, None, :] - x0) / np.maximum(x1 - x0, 1e-6)
    v = (grid[None, :, None] - y0) / np.maximum(y1 - y0, 1e-6)
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1) & scenes["valid"][rows, o]
    iu = np.clip((u * _SPRITE).astype(np.int32), 0, _SPRITE - 1)
    iv = np.clip((v * _SPRITE).astype(np.int32), 0, _SPRITE - 1)
    val = sprites[scenes["cats"][rows, o], iv, iu]
    top = np.where(inside & (val > 0), 2 * step + val, top).astype(np.int8)
  rgb = COLOUR_RGB[np.take_along_axis(scenes["cols"], draw, axis=1)].astype(np.float32)
  shades = np.stack([rgb, np.floor(rgb * STRIPE_SHADE)], 2).reshape(n, 2 * MAX_OBJECTS, 3)
  grey = np.full((n, 1, 3), BACKGROUND_GREY, np.float32)
  palette = np.concatenate([grey, shades], 1).astype(np.uint8)            # (n, 11, 3)
  img = palette[rows, top]
  bg = (BACKGROUND_GREY + rng.integers(-BACKGROUND_NOISE, BACKGROUND_NOISE + 1,
                                       (n, IMAGE_SIZE, IMAGE_SIZE))).astype(np.uint8)
  return np.where((top == 0)[..., None], bg[..., None], img)


# ----------------------------------------------------------------------------- writing

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


def _publish(tmp: str, out: str, overwrite: bool) -> None:
  """Renames the finished tmp dir to out atomically; FileExistsError if out is taken."""
  if os.path.exists(out) and overwrite:
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    os.rename(out, os.path.join(old, "x"))
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return
  if os.path.exists(out) and os.listdir(out):
    raise FileExistsError(f"{out} already exists; pass overwrite=True or pick another --out")
  try:
    os.rename(tmp, out)       # atomic; fails if another process published a non-empty dir
  except OSError as e:
    raise FileExistsError(f"{out} was created concurrently") from e


def _openblas_thread_api():
  """(get, set) of the OpenBLAS numpy loaded, found like threadpoolctl does; else None."""
  try:
    with open("/proc/self/maps", encoding="utf-8") as f:
      libs = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
  except OSError:            # not Linux: leave BLAS threading alone
    return None
  for path in sorted(libs):
    try:
      lib = ctypes.CDLL(path)
    except OSError:
      continue
    for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""),
                           ("openblas", "64_"), ("openblas", "")):
      get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
      put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
      if get is not None and put is not None:
        return get, put
  return None


@contextlib.contextmanager
def _single_threaded_blas():
  """One BLAS thread while generating.

  The matmuls here are small per call; on a shared machine OpenBLAS's spinning worker threads
  cost ~4x the CPU time (measured: 25 s vs 6 s user time for the default size with pixels).
  Results do not depend on the thread count (OpenBLAS splits rows/columns, not the sum).
  """
  api = _openblas_thread_api()
  if api is None:
    yield
    return
  get, put = api
  before = get()
  put(1)
  try:
    yield
  finally:
    put(before)


def generate(out_dir: str, *, seed: int = 0, n_train: int = 10000, n_dev: int = 500,
             n_test: int = 1000, pixels: bool = False, overwrite: bool = False,
             **difficulty) -> str:
  """Writes the benchmark into out_dir (atomically, via a temp dir beside it); returns it.

  ``difficulty`` holds :class:`Difficulty` fields (unknown names raise TypeError).
  """
  d = Difficulty(**difficulty)
  out = os.path.abspath(os.path.expanduser(out_dir))
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
  try:
    os.chmod(tmp, 0o755)
    sizes = dict(train=n_train, dev=n_dev, test=n_test)
    with _single_threaded_blas():
      for split, n in sizes.items():
        write_split(tmp, split, int(n), seed, pixels, d)
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
      json.dump(make_meta(seed, sizes, pixels, d), f, indent=1, sort_keys=True)
    _publish(tmp, out, overwrite)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def dataset_name(*, seed: int, n_train: int, n_dev: int, n_test: int, pixels: bool,
                 **difficulty) -> str:
  """Cache subdirectory name: version, seed, sizes, pixels and a hash of non-default knobs."""
  d = dataclasses.asdict(Difficulty(**difficulty))
  changed = {k: v for k, v in d.items() if v != getattr(Difficulty, k)}
  name = f"synthetic-v{VERSION}-seed{seed}-{n_train}-{n_dev}-{n_test}" + ("-px" if pixels else "")
  if changed:
    digest = hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:10]
    name += f"-d{digest}"
  return name


def default_cache_dir() -> str:
  """``$XMR_DATA_DIR`` or ``~/.cache/xmr_jax``."""
  return os.environ.get("XMR_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "xmr_jax")


def get_or_create(*, seed: int = 0, n_train: int = 10000, n_dev: int = 500, n_test: int = 1000,
                  pixels: bool = True, cache_dir: Optional[str] = None, **difficulty) -> str:
  """Path of the cached benchmark for these parameters, generating it only if absent.

  Safe under races: each process generates into its own temp dir; the first rename wins and
  the others discard their copy and use the winner's.
  """
  params = dict(seed=seed, n_train=n_train, n_dev=n_dev, n_test=n_test, pixels=pixels)
  path = os.path.join(cache_dir or default_cache_dir(), dataset_name(**params, **difficulty))
  if os.path.isfile(os.path.join(path, "meta.json")):
    return path
  try:
    return generate(path, **params, **difficulty)
  except FileExistsError:
    if os.path.isfile(os.path.join(path, "meta.json")):
      return path
    raise


def main(argv: Optional[Sequence[str]] = None) -> str:
  """CLI entry point (see the module docstring)."""
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True, help="dataset directory to create")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--n-train", type=int, default=10000)
  ap.add_argument("--n-dev", type=int, default=500)
  ap.add_argument("--n-test", type=int, default=1000)
  ap.add_argument("--pixels", action="store_true", help="also render 64x64 RGB scenes")
  ap.add_argument("--overwrite", action="store_true")
  for field in dataclasses.fields(Difficulty):
    ap.add_argument("--" + field.name.replace("_", "-"), type=type(field.default),
                    default=field.default, help="difficulty knob")
  args = vars(ap.parse_args(argv))
  knobs = {f.name: args.pop(f.name) for f in dataclasses.fields(Difficulty)}
  path = generate(args.pop("out"), **args, **knobs)
  print(path)
  return path


if __name__ == "__main__":
  main()
