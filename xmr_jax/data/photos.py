"""Photos as model input (``model.image_input=photos``): the resized photo store and the
training augmentation.

Store: ``{split}_photos.npy`` (N, S, S, 3) uint8 beside an extracted folder's features, row i
the photo of ``{split}_ids.txt`` line i resized exactly as the extractor resizes it for the
backbone (``registry.Backbone.resized``: EXIF-upright RGB, squashed to S x S with PIL
bilinear), so the backbone run on a stored photo gives the extracted features. It is written
once, on the first run that asks for photos (:func:`ensure_photos`), into the same cache entry
(same fingerprint: same photos, captions and backbone) under the entry's lock, atomically.

Augmentation (:func:`augment`): the training transform of the official PCME and VSE++
loaders, torchvision's ``RandomResizedCrop(S)`` (scale U(0.08, 1) of the area, log-uniform
aspect ratio in [3/4, 4/3], ten tries then the whole photo clamped to that ratio, centred)
followed by ``RandomHorizontalFlip`` (p = 0.5), drawn from a NumPy generator seeded by
``(seed, step, image)`` so a batch is a pure function of its step (an exact resume needs only
the step). The crop is taken from the stored S x S photo and resized back to S x S with PIL
bilinear; the official loaders crop the original photo, so small crops here have less detail
(the price of one decode per photo). Evaluation reads the stored photo as it is: the whole
photo at the extractor's size, as the features were made.
"""
import math
import os
from typing import Tuple

import numpy as np

from xmr_jax.data.errors import DataError

SCALE = (0.08, 1.0)            # torchvision RandomResizedCrop defaults
RATIO = (3.0 / 4.0, 4.0 / 3.0)
ATTEMPTS = 10
FLIP = 0.5


def crop_box(rng: np.random.Generator, height: int, width: int) -> Tuple[int, int, int, int]:
  """(top, left, h, w) of a random resized crop (torchvision ``RandomResizedCrop.get_params``
  with the default scale and ratio): up to ten draws of an area share and a log-uniform
  aspect ratio; when none fits, the whole image clamped to the ratio range, centred."""
  area = height * width
  log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
  for _ in range(ATTEMPTS):
    target = area * rng.uniform(*SCALE)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < RATIO[0]:
    w, h = width, int(round(width / RATIO[0]))
  elif in_ratio > RATIO[1]:
    h, w = height, int(round(height * RATIO[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def augment_one(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """(S, S, 3) uint8 -> (S, S, 3) uint8: a random resized crop back to S x S (PIL bilinear),
  then a horizontal flip with probability 0.5."""
  from PIL import Image
  size = photo.shape[0]
  top, left, h, w = crop_box(rng, photo.shape[0], photo.shape[1])
  out = Image.fromarray(photo).resize((size, size), Image.BILINEAR,
                                      box=(left, top, left + w, top + h))
  out = np.asarray(out, np.uint8)
  return out[:, ::-1] if rng.uniform() < FLIP else out


def augment(photos: np.ndarray, image_index: np.ndarray, *, seed: int, step: int) -> np.ndarray:
  """(B, S, S, 3) uint8 photos of training batch ``step`` -> augmented (B, S, S, 3) uint8,
  photo b drawn from ``np.random.default_rng([seed, step, image_index[b]])``: the same photo in
  the same step gets the same crop on every host and after a resume."""
  out = np.empty_like(photos)
  for b in range(len(photos)):   # per photo: PIL works on one image at a time
    out[b] = augment_one(photos[b], np.random.default_rng([seed, step, int(image_index[b])]))
  return np.ascontiguousarray(out)


def photos_path(data_dir: str, split: str) -> str:
  """The stored photos of ``split`` in the extracted folder ``data_dir``."""
  return os.path.join(data_dir, f"{split}_photos.npy")


def write_photos(data_dir: str, images_dir: str, backbone, size: int, bar=None) -> None:
  """``{split}_photos.npy`` for every split of the extracted folder ``data_dir`` that lacks
  one, each written to a temporary file and renamed when complete.

  Raises:
    DataError: a photo listed in ``{split}_ids.txt`` can no longer be read (it was read when
      the folder was extracted: the photo folder changed; delete the cache entry to extract
      again).
  """
  from xmr_jax.data import captions as captions_lib, precomp
  for split in precomp.find_splits(data_dir):
    out = photos_path(data_dir, split)
    if os.path.exists(out):
      continue
    files = precomp.read_lines(os.path.join(data_dir, f"{split}_ids.txt"))
    tmp = f"{out}.tmp-{os.getpid()}.npy"
    array = np.lib.format.open_memmap(tmp, "w+", np.uint8, (len(files), size, size, 3))
    for i, name in enumerate(files):
      try:
        array[i] = backbone.resized(captions_lib.load_photo(os.path.join(images_dir, name)),
                                    size)
      except DataError as e:
        os.remove(tmp)
        raise DataError(f"{e} (it was read when {data_dir} was extracted: the photo folder "
                        f"changed; delete {data_dir} to extract it again)") from None
      if bar is not None:
        bar.update(1)
    array.flush()
    del array
    os.replace(tmp, out)


def ensure_photos(data_dir: str, images_dir: str, backbone_name: str, size: int) -> None:
  """Writes the missing ``{split}_photos.npy`` of ``data_dir`` with a progress bar (the
  caller holds the cache entry's lock, ``images_cache.dataset_dir``)."""
  from tqdm import tqdm
  from xmr_jax.backbones import registry
  from xmr_jax.data import precomp
  missing = [s for s in precomp.find_splits(data_dir)
             if not os.path.exists(photos_path(data_dir, s))]
  if not missing:
    return
  total = sum(len(precomp.read_lines(os.path.join(data_dir, f"{s}_ids.txt"))) for s in missing)
  with tqdm(total=total, desc="photos", unit="img") as bar:
    write_photos(data_dir, images_dir, registry.get(backbone_name), size, bar)
