"""Exports a built ``cub_captions`` TFDS dataset to the SCAN precomp layout, and the CLI.

The dependency is one-way: :mod:`xmr_jax.data.cub` reads the manual directory (no TFDS
needed), :mod:`xmr_jax.data.tfds_cub` builds the dataset from it, and this module builds and
exports. The precomp directory is what the trainer reads (``data.name=precomp``).

CLI (build, then export)::

  python -m xmr_jax.data.cub_export --manual-dir /data/cub_manual --data-dir /data/tfds \
      --out /data/cub_precomp [--variant pixels|regions] [--image-size 64]
"""
import argparse
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from xmr_jax.data import tfds_cub
from xmr_jax.data.cub import CAPTIONS_PER_IMAGE, NUM_CLASSES, SPLIT_SETS, SPLITS
from xmr_jax.data.errors import DataError
from xmr_jax.data.precomp import normalize_caption


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


def open_built(builder_or_data_dir: Any, variant: Optional[str] = None):
  """A prepared ``cub_captions`` builder from a builder, its version dir, or a TFDS data_dir.

  Args:
    builder_or_data_dir: a prepared builder; a directory holding ``dataset_info.json``
      (``<data_dir>/cub_captions/<config>/<version>``); or a TFDS ``data_dir`` root, then
      ``variant`` names the config (e.g. ``pixels``, ``regions``).
    variant: config name; checked against the builder's when both are known.
  """
  if not isinstance(builder_or_data_dir, (str, os.PathLike)):
    builder = builder_or_data_dir
  else:
    path = os.fspath(builder_or_data_dir)
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
      if variant is None:
        raise ValueError(f"{path}: a TFDS data_dir root needs variant= (the config name, "
                         "e.g. 'pixels' or 'regions').")
      path = os.path.join(path, "cub_captions", variant, str(tfds_cub.CubCaptions.VERSION))
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
    # A dataset built before captions were normalised may hold other forms.
    text = normalize_caption(text)
    if not text or "\n" in text or "\r" in text:
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
