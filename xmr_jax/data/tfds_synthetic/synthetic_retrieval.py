"""``synthetic_retrieval``: the synthetic benchmark as a TFDS dataset, one example per image.

The builder lives inside a package and writes ``array_record`` files, so it is built and read
(``tfds.data_source``, random access for grain) without TensorFlow. The examples are the
arrays of :mod:`xmr_jax.data.synthetic` for the same parameters, which it generates (or reuses)
through :func:`xmr_jax.data.synthetic.get_or_create`.

Example::

  builder = build("/tmp/tfds", seed=0, n_train=1000, n_dev=100, n_test=200, pixels=False)
  test = tfds.data_source("synthetic_retrieval", split="test", data_dir="/tmp/tfds",
                          builder_kwargs={"config": builder.builder_config}, download=False)
  test[0]["captions"]   # (5,) bytes
"""
import dataclasses
import os
from typing import Any, Dict, Iterator, Tuple

import numpy as np
import tensorflow_datasets as tfds

from xmr_jax.data import synthetic

_CAPS = synthetic.CAPTIONS_PER_IMAGE
_C = len(synthetic.CATEGORIES)


@dataclasses.dataclass(eq=False)
class SyntheticRetrievalConfig(tfds.core.BuilderConfig):
  """Size parameters of the benchmark (the name should encode them; see ``config_name``)."""
  seed: int = 0
  n_train: int = 10000
  n_dev: int = 500
  n_test: int = 1000
  pixels: bool = True


def config_name(seed: int, n_train: int, n_dev: int, n_test: int, pixels: bool) -> str:
  """Canonical config name, e.g. ``s0_10000_500_1000_px``."""
  return f"s{seed}_{n_train}_{n_dev}_{n_test}" + ("_px" if pixels else "")


def make_config(*, seed: int = 0, n_train: int = 10000, n_dev: int = 500, n_test: int = 1000,
                pixels: bool = True) -> SyntheticRetrievalConfig:
  """A config whose name encodes its parameters (so several sizes share one data_dir)."""
  return SyntheticRetrievalConfig(
      name=config_name(seed, n_train, n_dev, n_test, pixels), seed=seed, n_train=n_train,
      n_dev=n_dev, n_test=n_test, pixels=pixels,
      description=f"synthetic benchmark {synthetic.VERSION}, seed {seed}, "
                  f"{n_train}/{n_dev}/{n_test} images" + (", pixels" if pixels else ""))


class SyntheticRetrieval(tfds.core.GeneratorBasedBuilder):
  """Synthetic image–sentence retrieval scenes: region features, boxes, 5 captions."""

  VERSION = tfds.core.Version(synthetic.VERSION)
  RELEASE_NOTES = {synthetic.VERSION: "First release (matches xmr_jax.data.synthetic)."}
  BUILDER_CONFIGS = [make_config(), make_config(n_train=1000, n_dev=100, n_test=200),
                     make_config(n_train=20, n_dev=5, n_test=5, pixels=False)]

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    feats = dict(
        regions=tfds.features.Tensor(shape=(synthetic.NUM_REGIONS, synthetic.FEATURE_DIM),
                                     dtype=np.float32),
        boxes=tfds.features.Tensor(shape=(synthetic.NUM_REGIONS, 4), dtype=np.float32),
        labels=tfds.features.Tensor(shape=(_C,), dtype=np.uint8),
        cap_labels=tfds.features.Tensor(shape=(_CAPS, _C), dtype=np.uint8),
        captions=tfds.features.Tensor(shape=(_CAPS,), dtype=np.str_),
        deps=tfds.features.Tensor(shape=(_CAPS,), dtype=np.str_),   # JSON triples per caption
        image_index=tfds.features.Scalar(dtype=np.int32))
    if cfg.pixels:
      size = synthetic.IMAGE_SIZE
      feats["pixels"] = tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(feats),
        homepage="https://github.com/",   # generated locally; no upstream page
        description=__doc__.split("\n")[0],
        disable_shuffling=True)   # keep image order: example k of a split is image k

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    path = synthetic.get_or_create(seed=cfg.seed, n_train=cfg.n_train, n_dev=cfg.n_dev,
                                   n_test=cfg.n_test, pixels=cfg.pixels)
    return {split: self._generate_examples(path, split) for split in synthetic.SPLITS}

  def _generate_examples(self, path: str, split: str) -> Iterator[Tuple[int, Dict[str, Any]]]:
    load = lambda name: np.load(os.path.join(path, f"{split}_{name}.npy"), mmap_mode="r",
                                allow_pickle=False)
    regions, boxes, labels, cap_labels = (load(k) for k in ("ims", "boxes", "labels",
                                                             "cap_labels"))
    pixels = load("pixels") if self.builder_config.pixels else None
    with open(os.path.join(path, f"{split}_caps.txt"), encoding="utf-8") as f:
      caps = f.read().splitlines()
    with open(os.path.join(path, f"{split}_deps.jsonl"), encoding="utf-8") as f:
      deps = f.read().splitlines()
    for i in range(regions.shape[0]):
      sl = slice(i * _CAPS, (i + 1) * _CAPS)
      ex = dict(regions=np.asarray(regions[i]), boxes=np.asarray(boxes[i]),
                labels=np.asarray(labels[i]), cap_labels=np.asarray(cap_labels[sl]),
                captions=np.array(caps[sl], dtype=object), deps=np.array(deps[sl], dtype=object),
                image_index=np.int32(i))
      if pixels is not None:
        ex["pixels"] = np.asarray(pixels[i])
      yield i, ex


def build(data_dir: str, *, seed: int = 0, n_train: int = 10000, n_dev: int = 500,
          n_test: int = 1000, pixels: bool = True) -> SyntheticRetrieval:
  """Builds (or reuses) the array_record dataset under data_dir; returns the builder.

  Read it back with ``builder.as_data_source(split)`` or ``tfds.data_source(...,
  builder_kwargs={"config": builder.builder_config})``.
  """
  cfg = make_config(seed=seed, n_train=n_train, n_dev=n_dev, n_test=n_test, pixels=pixels)
  # TFDS insists on the registered object when a name matches one of BUILDER_CONFIGS.
  cfg = SyntheticRetrieval.builder_configs.get(cfg.name, cfg)
  builder = SyntheticRetrieval(config=cfg, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(file_format="array_record")
  return builder
