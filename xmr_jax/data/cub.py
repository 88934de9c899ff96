"""CUB-200-2011 with Reed et al.'s captions, split as PCME does: the manual-dir reader.

PCME (Chun et al., CVPR 2021; naver-ai/pcme ``datasets/_dataloader.py``) uses the zero-shot
"proposed split" of Xian et al. (CVPR 2017): 150 train+val classes (``trainvalclasses.txt``)
and 50 unseen test classes (``testclasses.txt``); the 1,764 images of
``seen_test_images.txt`` (all of train classes) are left out of training and evaluated as the
"seen" split (the official ``val_in`` loader). ``cub_trainval{1,2,3}`` are the official
hyper-parameter-search folds (100 train / 50 validation classes). Every image has 10 captions.

Splits written here (per image, ordered as in ``images.txt``):

* ``train``: images of the train classes not listed in ``seen_test_images.txt``;
* ``dev``:   the listed images of the train classes (official ``val_in``, seen classes);
* ``test``:  every image of the held-out classes (official ``val``: what the paper reports).

This module reads and validates the manual directory and needs no TFDS. The dependency is
one-way: the TFDS builder :mod:`xmr_jax.data.tfds_cub` imports this module, and
:mod:`xmr_jax.data.cub_export` builds with it and exports the result to the SCAN precomp
layout read by :mod:`xmr_jax.data.precomp`. Every problem raises one
:class:`~xmr_jax.data.errors.DataError` naming the file and the line.

CLI (build, then export)::

  python -m xmr_jax.data.cub_export --manual-dir /data/cub_manual --data-dir /data/tfds \
      --out /data/cub_precomp [--variant pixels|regions] [--image-size 64]
"""
import dataclasses
import os
from typing import Dict, List, Sequence, Set, Tuple

import numpy as np

from xmr_jax.common.errors import ConfigError
from xmr_jax.data.errors import DataError
from xmr_jax.data.precomp import open_npy, read_captions, read_lines

CAPTIONS_PER_IMAGE = 10
NUM_CLASSES = 200
SPLITS = ("train", "dev", "test")
HELD_OUT_FILE = "seen_test_images.txt"
# (train classes, held-out classes) files per split set, as in the official
# _get_cub_file_paths (naver-ai/pcme datasets/_dataloader.py).
SPLIT_SETS = {
    "cub": ("trainvalclasses.txt", "testclasses.txt"),
    **{f"cub_trainval{i}": (f"trainclasses{i}.txt", f"valclasses{i}.txt") for i in (1, 2, 3)},
}
# The official transform resizes the shorter side to 256 and center-crops 224
# (datasets/_transforms.py imagenet_transform); a size-S crop keeps that ratio.
RESIZE_RATIO = 256 / 224


@dataclasses.dataclass(frozen=True)
class CubImage:
  """One CUB image and its captions."""
  image_id: int                 # 1-based id from images.txt
  row: int                      # 0-based line of images.txt (the row of features.npy)
  filename: str                 # "<class dir>/<file>.jpg", relative to images/
  label: int                    # 0-based class index (class id - 1)
  class_name: str               # e.g. "001.Black_footed_Albatross"
  bbox: Tuple[float, float, float, float]  # x, y, width, height in original pixels
  captions: Tuple[str, ...]     # CAPTIONS_PER_IMAGE captions


@dataclasses.dataclass(frozen=True)
class Layout:
  """Resolved paths inside a manual directory."""
  cub_dir: str       # holds images.txt, image_class_labels.txt, classes.txt, images/
  text_dir: str      # Reed et al.'s text_c10/
  splits_dir: str    # PCME's class split files


def _first_dir(root: str, candidates: Sequence[str], what: str) -> str:
  for c in candidates:
    path = os.path.join(root, c)
    if os.path.isdir(path):
      return path
  raise DataError(f"{os.path.join(root, candidates[0])}: directory not found ({what}); "
                  f"tried {list(candidates)} under {root}. See the manual-dir layout in "
                  "xmr_jax/data/tfds_cub/cub_captions.py.")


def find_layout(manual_dir: str) -> Layout:
  """Locates the CUB release, the captions and the split files under ``manual_dir``."""
  if not os.path.isdir(manual_dir):
    raise DataError(f"{manual_dir}: manual directory does not exist.")
  cub_dir = (os.path.join(manual_dir, "CUB_200_2011")
             if os.path.isdir(os.path.join(manual_dir, "CUB_200_2011")) else manual_dir)
  text_dir = _first_dir(manual_dir, ("text_c10", os.path.join("cvpr2016_cub", "text_c10")),
                        "Reed et al. captions, reedscot/cvpr2016 cvpr2016_cub/text_c10")
  splits_dir = _first_dir(manual_dir, ("splits",),
                          "PCME class splits, naver-ai/pcme datasets/annotations/cub")
  return Layout(cub_dir, text_dir, splits_dir)


def read_table(path: str, num_fields: int) -> Dict[int, List[str]]:
  """Reads ``<id> <field> ...`` lines (CUB metadata files) into {id: fields}."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found; it is part of the CUB_200_2011 release.")
  table = {}
  for line_no, line in enumerate(read_lines(path), 1):
    parts = line.split()
    if len(parts) != num_fields + 1 or not parts[0].isdigit():
      raise DataError(f"{path}: line {line_no} should be '<id>' and {num_fields} "
                      f"field(s) separated by spaces, got {line[:80]!r}.")
    if int(parts[0]) in table:
      raise DataError(f"{path}: line {line_no} repeats id {parts[0]}.")
    table[int(parts[0])] = parts[1:]
  return table


def read_caption_file(path: str, k: int = CAPTIONS_PER_IMAGE) -> Tuple[str, ...]:
  """The k captions of one image (one per line, UTF-8, none empty)."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: caption file not found; every image needs "
                    f"text_c10/<class dir>/<image name>.txt with {k} captions.")
  captions = read_captions(path)   # DataError on non-UTF-8 or empty lines, naming the line
  if len(captions) != k:
    raise DataError(f"{path}: has {len(captions)} captions (lines) but every CUB image needs "
                    f"exactly {k}, one per line; line {min(len(captions), k) + 1} is where "
                    "the count goes wrong.")
  return tuple(captions)


def read_class_split(path: str, class_ids: Dict[str, int]) -> Set[int]:
  """0-based class indices listed (one class dir name a line) in a split file."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: split file not found; copy it from naver-ai/pcme "
                    "datasets/annotations/cub/.")
  out = set()
  for line_no, name in enumerate(read_lines(path), 1):
    if name not in class_ids:
      raise DataError(f"{path}: line {line_no}: class {name!r} is not in classes.txt.")
    out.add(class_ids[name] - 1)
  return out


def read_held_out(path: str, known: Set[str]) -> Set[str]:
  """Image filenames ("<class dir>/<file>.jpg") of ``seen_test_images.txt``."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found; copy seen_test_images.txt from naver-ai/pcme "
                    "datasets/annotations/cub/ (the seen-class images kept out of training).")
  names = read_lines(path)
  for line_no, name in enumerate(names, 1):
    if name not in known:
      raise DataError(f"{path}: line {line_no}: image {name!r} is not in images.txt.")
  return set(names)


def _read_images(layout: Layout) -> List[CubImage]:
  """Every image of images.txt with its class, box and captions, validated."""
  p = lambda name: os.path.join(layout.cub_dir, name)
  files = read_table(p("images.txt"), 1)
  labels = read_table(p("image_class_labels.txt"), 1)
  classes = read_table(p("classes.txt"), 1)
  boxes = read_table(p("bounding_boxes.txt"), 4)
  for name, table in (("image_class_labels.txt", labels), ("bounding_boxes.txt", boxes)):
    missing = sorted(set(files) - set(table))
    if missing:
      raise DataError(f"{p(name)}: no line for image id {missing[0]} of images.txt "
                      f"({len(missing)} ids missing).")
  images = []
  for row, image_id in enumerate(files):
    filename, class_id = files[image_id][0], int(labels[image_id][0])
    if class_id not in classes or not 1 <= class_id <= NUM_CLASSES:
      raise DataError(f"{p('image_class_labels.txt')}: image id {image_id} has class "
                      f"{class_id}, not an id of classes.txt in 1..{NUM_CLASSES}.")
    class_name = classes[class_id][0]
    if os.path.dirname(filename) != class_name:
      raise DataError(f"{p('images.txt')}: image id {image_id} ({filename}) is not in the "
                      f"directory of its class {class_name!r} (image_class_labels.txt).")
    txt = os.path.join(layout.text_dir, os.path.splitext(filename)[0] + ".txt")
    images.append(CubImage(image_id=image_id, row=row, filename=filename, label=class_id - 1,
                           class_name=class_name,
                           bbox=tuple(float(v) for v in boxes[image_id]),
                           captions=read_caption_file(txt)))
  return images


def read_index(manual_dir: str, split_set: str = "cub") -> Dict[str, List[CubImage]]:
  """Reads and validates the manual directory; returns {split: images in images.txt order}.

  Args:
    manual_dir: the directory described in ``tfds_cub.cub_captions.MANUAL_DOWNLOAD_INSTRUCTIONS``.
    split_set: ``cub`` (150 / 50 classes, the paper's benchmark) or ``cub_trainval{1,2,3}``.
  """
  if split_set not in SPLIT_SETS:
    raise ConfigError(f"split_set={split_set!r}; choose one of {sorted(SPLIT_SETS)}")
  layout = find_layout(manual_dir)
  images = _read_images(layout)
  class_ids = {row[0]: cid for cid, row in
               read_table(os.path.join(layout.cub_dir, "classes.txt"), 1).items()}
  train_file, test_file = (os.path.join(layout.splits_dir, f) for f in SPLIT_SETS[split_set])
  train_classes = read_class_split(train_file, class_ids)
  test_classes = read_class_split(test_file, class_ids)
  if train_classes & test_classes:
    raise DataError(f"{test_file}: classes {sorted(c + 1 for c in train_classes & test_classes)}"
                    f" are also in {train_file}; train and test classes must be disjoint.")
  held_out = read_held_out(os.path.join(layout.splits_dir, HELD_OUT_FILE),
                           {im.filename for im in images})
  splits = {s: [] for s in SPLITS}
  for im in images:
    if im.label in test_classes:
      splits["test"].append(im)
    elif im.label in train_classes:
      splits["dev" if im.filename in held_out else "train"].append(im)
  for split, items in splits.items():
    if not items:
      raise DataError(f"{layout.splits_dir}: split {split!r} has no images with "
                      f"{os.path.basename(train_file)}, {os.path.basename(test_file)} and "
                      f"{HELD_OUT_FILE}; check the split files.")
  return splits


def load_pixels(path: str, size: int) -> np.ndarray:
  """(size, size, 3) uint8: shorter side resized to size * 256/224, then center-cropped.

  Follows the official evaluation transform (Resize(256) + CenterCrop(224), bilinear) at any
  output size; the official training transform is the same (no random crop for CUB).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as f:
      im = f.convert("RGB")
  except FileNotFoundError as e:
    raise DataError(f"{path}: image not found (listed in images.txt).") from e
  except OSError as e:
    raise DataError(f"{path}: cannot decode the image ({e}); re-extract the CUB "
                    "release.") from e
  w, h = im.size
  short = int(round(size * RESIZE_RATIO))
  # torchvision Resize(int): the shorter side becomes `short`, the other keeps the aspect.
  new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
  im = im.resize((new_w, new_h), Image.BILINEAR)
  left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
  return np.asarray(im.crop((left, top, left + size, top + size)), np.uint8)


def open_features(path: str, num_images: int, num_regions: int,
                  feature_dim: int) -> np.ndarray:
  """Memory-maps ``features.npy`` (one row per line of images.txt) after checking its shape."""
  feats = open_npy(path)
  want = (num_images, num_regions, feature_dim)
  if feats.shape != want or not np.issubdtype(feats.dtype, np.floating):
    raise DataError(f"{path}: expected float features of shape {want} (one row per line of "
                    f"images.txt, regions x dim as in the builder config), got "
                    f"{feats.shape} {feats.dtype}. Re-save them or build with "
                    "num_regions/feature_dim matching the file.")
  return feats


if __name__ == "__main__":
  # The build + export CLI needs the TFDS builder, which imports this module; running it from
  # here would make the dependency two-way again, so point at its new home instead.
  raise SystemExit("The CUB build + export CLI is now `python -m xmr_jax.data.cub_export "
                   "--manual-dir M --data-dir D --out DIR [--variant pixels|regions]`.")
