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

Modules: :mod:`.spec` (vocabularies, :class:`Difficulty`), :mod:`.scenes` (scene sampling,
relations), :mod:`.captions` (templates), :mod:`.features` (detector weights, region
features), :mod:`.render` (pixels, sprites), :mod:`.writer` (one split's files, meta),
:mod:`.store` (atomic generation, the cache), :mod:`.blas` (BLAS threading), :mod:`.cli`.
Every public name of each is importable from here, e.g. ``synthetic.get_or_create``.
"""
from xmr_jax.data.synthetic.captions import DEP_RELATIONS, REL_PHRASES, TEMPLATES, make_captions
from xmr_jax.data.synthetic.cli import main
from xmr_jax.data.synthetic.features import (FEATURE_DIM, FEATURE_SEED, NUM_REGIONS,
                                             detector_weights, region_features)
from xmr_jax.data.synthetic.render import (BACKGROUND_GREY, BACKGROUND_NOISE, COLOUR_RGB,
                                           IMAGE_SIZE, PATTERNS, SHAPES, STRIPE_SHADE,
                                           category_sprites, render)
from xmr_jax.data.synthetic.scenes import relation_matrix, sample_scenes
from xmr_jax.data.synthetic.spec import (CAPTIONS_PER_IMAGE, CATEGORIES, COLOURS, MAX_OBJECTS,
                                         MIN_OBJECTS, RELATIONS, SIZES, SPLITS, VERSION,
                                         Difficulty)
from xmr_jax.data.synthetic.store import dataset_name, default_cache_dir, generate, get_or_create
from xmr_jax.data.synthetic.writer import make_meta, write_split

__all__ = [
    "BACKGROUND_GREY", "BACKGROUND_NOISE", "CAPTIONS_PER_IMAGE", "CATEGORIES", "COLOURS",
    "COLOUR_RGB", "DEP_RELATIONS", "FEATURE_DIM", "FEATURE_SEED", "IMAGE_SIZE", "MAX_OBJECTS",
    "MIN_OBJECTS", "NUM_REGIONS", "PATTERNS", "RELATIONS", "REL_PHRASES", "SHAPES", "SIZES",
    "SPLITS", "STRIPE_SHADE", "TEMPLATES", "VERSION", "Difficulty", "category_sprites",
    "dataset_name", "default_cache_dir", "detector_weights", "generate", "get_or_create", "main",
    "make_captions", "make_meta", "region_features", "relation_matrix", "render",
    "sample_scenes", "write_split",
]
