"""Caption templates: five captions per scene, their dependency triples and class labels."""
from typing import Dict, List, Optional, Tuple

import numpy as np

from xmr_jax.data.synthetic.scenes import relation_matrix
from xmr_jax.data.synthetic.spec import (CAPTIONS_PER_IMAGE, CATEGORIES, COLOURS, MAX_OBJECTS,
                                         RELATIONS, SIZES, Difficulty)

DEP_RELATIONS = tuple(f"prep_{r}" for r in RELATIONS) + (
    "det", "amod", "nsubj", "expl", "conj_and", "prep_of", "prep_with", "prep_in", "vmod",
    "dobj")
# Two surface forms per relation; the dependency label stays the relation's.
REL_PHRASES = {"left_of": ("left of", "to the left of"),
               "right_of": ("right of", "to the right of"),
               "above": ("above", "over"), "below": ("below", "under"),
               "near": ("near", "next to")}


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

