"""CUB-200-2011 with Reed et al.'s captions, split as PCME does: manual-dir reader and export.

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

This module reads and validates the manual directory (used by the TFDS builder in
:mod:`xmr_jax.data.tfds_cub`) and exports a built dataset to the SCAN precomp layout read by
:mod:`xmr_jax.data.precomp` (:func:`export_precomp`). Every problem raises one
:class:`~xmr_jax.data.precomp.DataError` naming the file and the line.

CLI (build, then export)::

  python -m xmr_jax.data.cub --manual-dir /data/cub_manual --data-dir /data/tfds \
      --out /data/cub_precomp [--variant pixels|regions] [--image-size 64]
"""
import dataclasses
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from xmr_jax.data.precomp import DataError, read_captions

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
  for line_no, line in enumerate(read_captions(path), 1):
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
  captions = read_captions(path)   # raises on non-UTF-8 and empty lines, naming the line
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
  for line_no, name in enumerate(read_captions(path), 1):
    if name not in class_ids:
      raise DataError(f"{path}: line {line_no}: class {name!r} is not in classes.txt.")
    out.add(class_ids[name] - 1)
  return out


def read_held_out(path: str, known: Set[str]) -> Set[str]:
  """Image filenames ("<class dir>/<file>.jpg") of ``seen_test_images.txt``."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found; copy seen_test_images.txt from naver-ai/pcme "
                    "datasets/annotations/cub/ (the seen-class images kept out of training).")
  names = read_captions(path)
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
    raise ValueError(f"split_set={split_set!r}; choose one of {sorted(SPLIT_SETS)}")
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
  from xmr_jax.data.precomp import open_npy  # pylint: disable=g-import-not-at-top
  feats = open_npy(path)
  want = (num_images, num_regions, feature_dim)
  if feats.shape != want or not np.issubdtype(feats.dtype, np.floating):
    raise DataError(f"{path}: expected float features of shape {want} (one row per line of "
                    f"images.txt, regions x dim as in the builder config), got "
                    f"{feats.shape} {feats.dtype}. Re-save them or build with "
                    "num_regions/feature_dim matching the file.")
  return feats


def pixel_grid_features(pixels: np.ndarray, grid: int = 4) -> np.ndarray:
  """(B, grid * grid, 3) float32 mean colours (0..1) of a grid x grid tiling of each image.

  The precomp reader needs region features even when a model reads pixels; these stand in for
  them (a weak colour-layout descriptor, still usable by a regions-only model).
  """
  b, h, w, c = pixels.shape
  rows = np.linspace(0, h, grid + 1).astype(int)
  cols = np.linspace(0, w, grid + 1).astype(int)
  x = pixels.astype(np.float64)
  sums = np.add.reduceat(np.add.reduceat(x, rows[:-1], axis=1), cols[:-1], axis=2)
  counts = np.diff(rows)[:, None] * np.diff(cols)[None, :]
  means = sums / counts[None, :, :, None] / 255.0
  return means.reshape(b, grid * grid, c).astype(np.float32)


# ----------------------------------------------------------------------------- precomp export


def open_built(builder_or_data_dir: Any, variant: Optional[str] = None):
  """A prepared ``cub_captions`` builder from a builder, its version dir, or a TFDS data_dir.

  Args:
    builder_or_data_dir: a prepared builder; a directory holding ``dataset_info.json``
      (``<data_dir>/cub_captions/<config>/<version>``); or a TFDS ``data_dir`` root, then
      ``variant`` names the config (e.g. ``pixels``, ``regions``).
    variant: config name; checked against the builder's when both are known.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not isinstance(builder_or_data_dir, (str, os.PathLike)):
    builder = builder_or_data_dir
  else:
    path = os.fspath(builder_or_data_dir)
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
      if variant is None:
        raise ValueError(f"{path}: a TFDS data_dir root needs variant= (the config name, "
                         "e.g. 'pixels' or 'regions').")
      from xmr_jax.data.tfds_cub import cub_captions  # pylint: disable=g-import-not-at-top
      path = os.path.join(path, "cub_captions", variant, str(cub_captions.CubCaptions.VERSION))
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
      raise DataError(f"{path}/dataset_info.json: not found; this is not a prepared "
                      "cub_captions dataset. Build it first with "
                      "xmr_jax.data.tfds_cub.build(manual_dir, data_dir, variant=...).")
    builder = tfds.builder_from_directory(path)
  if not builder.is_prepared():
    raise DataError(f"{builder.data_dir}: the dataset is not built; call "
                    "xmr_jax.data.tfds_cub.build(manual_dir, data_dir, variant=...) first.")
  name = builder.builder_config.name if builder.builder_config else None
  if variant is not None and name is not None and name != variant:
    raise ValueError(f"variant={variant!r} but the dataset's config is {name!r}.")
  return builder


def _decode_captions(ex: Dict[str, Any], where: str) -> List[str]:
  caps = list(ex["captions"])
  if len(caps) != CAPTIONS_PER_IMAGE:
    raise DataError(f"{where}: has {len(caps)} captions, expected {CAPTIONS_PER_IMAGE}; "
                    "rebuild the dataset.")
  out = []
  for j, c in enumerate(caps):
    try:
      text = c.decode("utf-8") if isinstance(c, bytes) else str(c)
    except UnicodeDecodeError as e:
      raise DataError(f"{where}: caption {j} is not valid UTF-8 ({e.reason}); "
                      "rebuild the dataset.") from e
    if not text.strip() or "\n" in text or "\r" in text:
      raise DataError(f"{where}: caption {j} is empty or spans lines: {text[:60]!r}.")
    out.append(text)
  return out


def _export_split(source, split: str, tmp: str, grid: int, chunk: int = 256) -> None:
  """Writes one split's precomp files into ``tmp`` (arrays through memory maps)."""
  n = len(source)
  first = source[0]
  pixels_in = "pixels" in first
  ims_shape = (grid * grid, 3) if pixels_in else tuple(first["regions"].shape)
  path = lambda suffix: os.path.join(tmp, f"{split}_{suffix}")
  ims = np.lib.format.open_memmap(path("ims.npy"), "w+", np.float32, (n,) + ims_shape)
  pix = (np.lib.format.open_memmap(path("pixels.npy"), "w+", np.uint8,
                                   (n,) + tuple(first["pixels"].shape)) if pixels_in else None)
  labels = np.zeros((n, NUM_CLASSES), np.uint8)
  captions, names = [], []
  for start in range(0, n, chunk):
    stop = min(start + chunk, n)
    exs = [source[i] for i in range(start, stop)]
    for i, ex in enumerate(exs, start):
      captions += _decode_captions(ex, f"split {split!r} example {i}")
      names.append(ex["filename"].decode("utf-8") if isinstance(ex["filename"], bytes)
                   else str(ex["filename"]))
    labels[np.arange(start, stop), [int(ex["label"]) for ex in exs]] = 1   # one-hot classes
    if pixels_in:
      batch = np.stack([ex["pixels"] for ex in exs])
      pix[start:stop] = batch
      ims[start:stop] = pixel_grid_features(batch, grid)
    else:
      ims[start:stop] = np.stack([ex["regions"] for ex in exs])
  ims.flush()
  del ims
  if pix is not None:
    pix.flush()
    del pix
  np.save(path("labels.npy"), labels)
  for suffix, lines in (("caps.txt", captions), ("filenames.txt", names)):
    with open(path(suffix), "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")


def export_precomp(builder_or_data_dir: Any, out_dir: str, variant: Optional[str] = None, *,
                   grid: int = 4, splits: Sequence[str] = SPLITS) -> str:
  """Writes a built ``cub_captions`` dataset in the SCAN precomp layout; returns ``out_dir``.

  Per split: ``{split}_caps.txt`` (10 captions per image, caption c of image c // 10),
  ``{split}_labels.npy`` (N, 200) uint8 one-hot classes (PMRP with one label per image is
  PCME's class R-Precision), ``{split}_filenames.txt``, and ``{split}_ims.npy``: the (N, R, F)
  region features of the ``regions`` variant, or for ``pixels`` (N, grid * grid, 3) mean colours
  beside ``{split}_pixels.npy`` (N, S, S, 3) uint8. Read it with
  ``precomp.load_split(out_dir, split, captions_per_image=10)``.

  Args:
    builder_or_data_dir: see :func:`open_built`.
    out_dir: created if needed; files are written to a temporary directory inside it, then
      moved into place, so an interrupted export leaves no half-written split.
    variant: the config name (needed when ``builder_or_data_dir`` is a TFDS data_dir root).
    grid: side of the colour grid standing in for regions in the pixels variant.
    splits: which splits to export.
  """
  builder = open_built(builder_or_data_dir, variant)
  os.makedirs(out_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".export-", dir=out_dir)
  try:
    for split in splits:
      if split not in builder.info.splits:
        raise DataError(f"{builder.data_dir}: no split {split!r} (has "
                        f"{sorted(builder.info.splits)}).")
      _export_split(builder.as_data_source(split), split, tmp, grid)
    for name in sorted(os.listdir(tmp)):
      os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out_dir


def main(argv: Optional[Sequence[str]] = None) -> str:
  """CLI: build the TFDS dataset from a manual dir, then export it as a precomp dir."""
  import argparse  # pylint: disable=g-import-not-at-top
  from xmr_jax.data import tfds_cub  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=main.__doc__)
  p.add_argument("--manual-dir", required=True, help="CUB_200_2011/, text_c10/, splits/")
  p.add_argument("--data-dir", required=True, help="TFDS data dir to build into")
  p.add_argument("--out", required=True, help="precomp directory to write")
  p.add_argument("--variant", default="pixels", choices=("pixels", "regions"))
  p.add_argument("--image-size", type=int, default=64)
  p.add_argument("--num-regions", type=int, default=49)
  p.add_argument("--feature-dim", type=int, default=2048)
  p.add_argument("--split-set", default="cub", choices=sorted(SPLIT_SETS))
  a = p.parse_args(argv)
  builder = tfds_cub.build(a.manual_dir, a.data_dir, a.variant, image_size=a.image_size,
                           num_regions=a.num_regions, feature_dim=a.feature_dim,
                           split_set=a.split_set)
  out = export_precomp(builder, a.out)
  print(f"wrote {out}: --config.data.name=precomp --config.data.dir={out} "
        "--config.data.captions_per_image=10")
  return out


if __name__ == "__main__":
  main()
