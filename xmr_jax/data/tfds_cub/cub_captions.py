"""``cub_captions``: CUB-200-2011 images with Reed et al.'s 10 captions, split as PCME does.

One example per image, splits ``train`` / ``dev`` / ``test`` (see :mod:`xmr_jax.data.cub`:
150 seen classes minus PCME's held-out images / those held-out seen-class images / 50 unseen
classes). Built from a manual directory (nothing is downloaded) into ``array_record`` files, so
it is built and read (``tfds.data_source``) without TensorFlow. Two variants:

* ``pixels`` (config ``pixels``, or ``pixels<S>`` for another size): ``pixels`` (S, S, 3)
  uint8, the shorter side resized to S * 256/224 then center-cropped (the official
  Resize(256) + CenterCrop(224) at any S; S = 64 by default, 224 for the paper's ResNet);
* ``regions`` (config ``regions``, or ``regions<R>x<F>``): ``regions`` (R, F) float32, row
  ``row`` of ``features.npy`` in the manual dir (default R = 49, F = 2048: a ResNet-50 7 x 7
  grid, what the official image encoder pools and attends over).

Every example also has ``label`` (0-based class), ``class_name``, ``captions`` (10,) str,
``image_id`` (1-based, images.txt), ``filename`` (``<class dir>/<file>.jpg``) and ``bbox``
(x, y, w, h). Example::

  builder = build("/data/cub_manual", "/data/tfds", variant="pixels")
  test = tfds.data_source("cub_captions", split="test", data_dir="/data/tfds",
                          builder_kwargs={"config": builder.builder_config}, download=False)
  test[0]["captions"]   # (10,) bytes
"""
import dataclasses
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from xmr_jax.data import cub

_INSTRUCTIONS = """\
Nothing is downloaded. Put these under the manual directory (download_config=
tfds.download.DownloadConfig(manual_dir=DIR)):

  DIR/CUB_200_2011/            the CUB-200-2011 release (Caltech; CUB_200_2011.tgz), holding
      images.txt               "<image id> <class dir>/<file>.jpg"
      image_class_labels.txt   "<image id> <class id>"
      classes.txt              "<class id> <class dir>"
      bounding_boxes.txt       "<image id> <x> <y> <width> <height>"
      images/<class dir>/<file>.jpg
    (the files may also sit directly in DIR)
  DIR/text_c10/<class dir>/<file>.txt    Reed et al. (reedscot/cvpr2016, cvpr2016_cub/
                                         text_c10; DIR/cvpr2016_cub/text_c10 also works):
                                         10 captions per image, one a line, UTF-8
  DIR/splits/                  PCME's files (naver-ai/pcme datasets/annotations/cub/):
      trainvalclasses.txt      150 train classes, one class dir a line
      testclasses.txt          50 unseen test classes
      seen_test_images.txt     train-class images kept out of training ("<class dir>/<file>.jpg")
      trainclasses{1,2,3}.txt, valclasses{1,2,3}.txt   only for split_set=cub_trainval{1,2,3}
  DIR/features.npy             regions variant only: float (11788, R, F), row i = line i+1 of
                               images.txt (e.g. a ResNet-50 7x7x2048 grid of the 224 center
                               crop, reshaped to (49, 2048))
"""


@dataclasses.dataclass(eq=False)
class CubCaptionsConfig(tfds.core.BuilderConfig):
  """Which variant and split set to build (the name should encode them; see make_config)."""
  variant: str = "pixels"             # pixels | regions
  image_size: int = 64                # pixels: side S of the stored crop
  num_regions: int = 49               # regions: R of features.npy
  feature_dim: int = 2048             # regions: F of features.npy
  features_file: str = "features.npy"  # regions: path relative to the manual dir
  split_set: str = "cub"              # cub | cub_trainval1 | cub_trainval2 | cub_trainval3


def config_name(variant: str, image_size: int = 64, num_regions: int = 49,
                feature_dim: int = 2048, split_set: str = "cub") -> str:
  """E.g. ``pixels``, ``pixels224``, ``regions``, ``regions36x2048_trainval1``."""
  if variant == "pixels":
    name = "pixels" + ("" if image_size == 64 else str(image_size))
  elif variant == "regions":
    name = "regions" + ("" if (num_regions, feature_dim) == (49, 2048)
                        else f"{num_regions}x{feature_dim}")
  else:
    raise ValueError(f"variant={variant!r}; use 'pixels' or 'regions'")
  return name + ("" if split_set == "cub" else "_" + split_set[len("cub_"):])


def make_config(variant: str = "pixels", *, image_size: int = 64, num_regions: int = 49,
                feature_dim: int = 2048, features_file: str = "features.npy",
                split_set: str = "cub", name: Optional[str] = None) -> CubCaptionsConfig:
  """A config named after its parameters (pass ``name`` to tell feature files apart)."""
  if split_set not in cub.SPLIT_SETS:
    raise ValueError(f"split_set={split_set!r}; choose one of {sorted(cub.SPLIT_SETS)}")
  if image_size < 1 or num_regions < 1 or feature_dim < 1:
    raise ValueError("image_size, num_regions and feature_dim must be positive")
  auto = config_name(variant, image_size, num_regions, feature_dim, split_set)
  what = (f"{image_size}x{image_size} pixels" if variant == "pixels"
          else f"{num_regions}x{feature_dim} region features from {features_file}")
  return CubCaptionsConfig(
      name=name or auto, variant=variant, image_size=image_size, num_regions=num_regions,
      feature_dim=feature_dim, features_file=features_file, split_set=split_set,
      description=f"CUB-200-2011 + Reed captions, PCME split {split_set}, {what}")


class CubCaptions(tfds.core.GeneratorBasedBuilder):
  """CUB-200-2011 birds with 10 captions per image (Reed et al. 2016), PCME's class splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: pixels and regions variants, PCME splits."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIGS = [make_config("pixels"), make_config("pixels", image_size=224),
                     make_config("regions")]

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    feats = dict(
        label=tfds.features.ClassLabel(num_classes=cub.NUM_CLASSES),
        class_name=tfds.features.Tensor(shape=(), dtype=np.str_),
        captions=tfds.features.Tensor(shape=(cub.CAPTIONS_PER_IMAGE,), dtype=np.str_),
        image_id=tfds.features.Scalar(dtype=np.int32),
        filename=tfds.features.Tensor(shape=(), dtype=np.str_),
        bbox=tfds.features.Tensor(shape=(4,), dtype=np.float32))
    if cfg.variant == "pixels":
      s = cfg.image_size
      feats["pixels"] = tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8)
    else:
      feats["regions"] = tfds.features.Tensor(shape=(cfg.num_regions, cfg.feature_dim),
                                              dtype=np.float32)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(feats),
        homepage="https://www.vision.caltech.edu/datasets/cub_200_2011/",
        description=__doc__.split("\n")[0],
        disable_shuffling=True,   # example k of a split is its k-th image in images.txt order
        citation="Wah et al., CUB-200-2011 (2011); Reed et al., CVPR 2016; "
                 "Chun et al., CVPR 2021 (PCME).")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    manual_dir = os.fspath(dl_manager.manual_dir)
    # Validate every metadata, split and caption file before writing anything.
    index = cub.read_index(manual_dir, cfg.split_set)
    cub_dir = cub.find_layout(manual_dir).cub_dir
    features = None
    if cfg.variant == "regions":
      features = cub.open_features(os.path.join(manual_dir, cfg.features_file),
                                   len(cub.read_table(os.path.join(cub_dir, "images.txt"), 1)),
                                   cfg.num_regions, cfg.feature_dim)
    images_dir = os.path.join(cub_dir, "images")
    return {split: self._generate_examples(items, images_dir, features)
            for split, items in index.items()}

  def _generate_examples(self, items: List[cub.CubImage], images_dir: str,
                         features: Optional[np.ndarray]
                         ) -> Iterator[Tuple[int, Dict[str, Any]]]:
    cfg = self.builder_config
    for k, im in enumerate(items):
      ex = dict(label=im.label, class_name=im.class_name,
                captions=np.array(im.captions, dtype=object), image_id=np.int32(im.image_id),
                filename=im.filename, bbox=np.asarray(im.bbox, np.float32))
      if features is None:
        ex["pixels"] = cub.load_pixels(os.path.join(images_dir, im.filename), cfg.image_size)
      else:
        ex["regions"] = np.asarray(features[im.row], np.float32)
      yield k, ex


def build(manual_dir: str, data_dir: str, variant: str = "pixels", **config) -> CubCaptions:
  """Builds (or reuses) the array_record dataset under ``data_dir``; returns the builder.

  Args:
    manual_dir: see ``CubCaptions.MANUAL_DOWNLOAD_INSTRUCTIONS``.
    data_dir: TFDS data dir (the dataset lands in ``data_dir/cub_captions/<config>/1.0.0``).
    variant: ``pixels`` or ``regions``.
    **config: :func:`make_config` keywords (image_size, num_regions, feature_dim,
      features_file, split_set, name).
  """
  cfg = make_config(variant, **config)
  # TFDS insists on the registered object when a name matches one of BUILDER_CONFIGS.
  registered = CubCaptions.builder_configs.get(cfg.name)
  if registered is not None and _same(registered, cfg):
    cfg = registered
  elif registered is not None:
    raise ValueError(f"config name {cfg.name!r} is taken by a registered config with other "
                     "settings; pass name= to tell them apart.")
  builder = CubCaptions(config=cfg, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def _same(a: CubCaptionsConfig, b: CubCaptionsConfig) -> bool:
  keys = ("variant", "image_size", "num_regions", "feature_dim", "features_file", "split_set")
  return all(getattr(a, k) == getattr(b, k) for k in keys)
