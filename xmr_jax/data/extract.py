"""Photos + a caption file -> a dataset in the SCAN precomp layout, with a pretrained backbone.

  python -m xmr_jax.data.extract --images DIR --captions FILE --out DIR \\
      [--format auto|coco|flickr|karpathy|csv] [--instances instances.json] \\
      [--regions grid|boxes|grid+boxes] [--dev N --test N --seed S] \\
      [--backbone efficientnet_lite0|efficientnet_lite1|efficientnet_lite2] [--size S]

Per split (Karpathy's json gives them; otherwise a seeded split by image, ``--dev``/``--test``
images, train the rest) it writes

=============================== ============================================================
``{split}_ims.npy``             (N, R, 1280) float32 region features of the backbone
``{split}_caps.txt``            k captions per image, in file order
``{split}_ids.txt``             the photo file of each row
``{split}_pixels.npy``          (N, T, T, 3) uint8 thumbnails (retrieval-example pictures)
``{split}_boxes.npy``           (N, R, 4) float32 region boxes x0, y0, x1, y1 in [0, 1]
``{split}_labels.npy``          (N, C) multi-hot instance classes (with ``--instances``; an
                                image without instances is all zero, left out of PMRP)
``{split}_region_mask.npy``     (N, R) bool real regions (``boxes``, ``grid+boxes`` only)
``{split}_deps.jsonl``          dependency triples of English captions (spaCy; DeFrag)
``dropped.txt``, ``meta.json``  every dropped item with its reason; settings and counts
=============================== ============================================================

The backbone is an entry of ``xmr_jax.backbones.registry`` (``--backbone``, default
``efficientnet_lite0``); ``--size`` defaults to the entry's input side (Lite0 192, Lite1 240,
Lite2 260) and the map has ceil(S / 32) cells per side (6, 8, 9). ``meta.json`` names the
backbone, its input size, the sha256 of its weights and the feature-code version.

Regions: ``grid`` = the cells of the final map (36 for Lite0 at 192), row-major; ``boxes`` = the
largest ``--max-boxes`` instance boxes of a photo by area, plus the whole image, each the mean
of a 2 x 2 RoIAlign on the final map (aligned, sampling ratio 2; ``kernels.roi_align``), padded
to ``max_boxes + 1`` with a region mask; ``grid+boxes`` = both. The backbone runs jitted in
fixed-size batches (the last one padded) with a progress bar. Everything is written into a
temporary directory beside ``--out`` and moved into place when complete: an interrupted run
leaves nothing half-written.
"""
import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from xmr_jax.backbones import registry
from xmr_jax.common.errors import ConfigError, InputError
from xmr_jax.common.io import (atomic_write_bytes, atomic_write_json, make_public_dir,
                               shrink_npy_rows)
from xmr_jax.data import captions as captions_lib
from xmr_jax.data.captions.form import fault
from xmr_jax.kernels import roi_align

REGIONS = ("grid", "boxes", "grid+boxes")
VERSION = "extract-v1"


@dataclasses.dataclass(frozen=True)
class Settings:
  """What determines the extracted features (part of the cache key of ``data.name=images``)."""
  backbone: str = registry.DEFAULT
  size: int = 0                # 0: the backbone's default input side (resolved())
  regions: str = "grid"
  max_boxes: int = 36
  captions_per_image: int = 5
  n_dev: int = 0
  n_test: int = 0
  seed: int = 0
  format: str = "auto"
  strict: bool = False
  parse: str = "auto"          # auto (English captions + spaCy installed) | yes | no
  thumbnail: int = 64
  batch_size: int = 32

  def resolved(self) -> "Settings":
    """These settings with ``size`` 0 replaced by the backbone's default side."""
    return dataclasses.replace(self, size=self.size or registry.get(self.backbone).default_size)

  def check(self) -> None:
    """ConfigError naming the setting for an unknown backbone or region mode, a bad size."""
    registry.get(self.backbone)
    if self.regions not in REGIONS:
      raise ConfigError(f"regions={self.regions!r}; choose one of {list(REGIONS)}")
    if not isinstance(self.size, int) or (self.size and self.size < 32) or self.size < 0:
      raise ConfigError(f"size={self.size}: must be an integer >= 32 (or 0: the backbone's "
                        f"default)")
    if self.parse not in ("auto", "yes", "no"):
      raise ConfigError(f"parse={self.parse!r}; choose auto, yes or no")
    if self.max_boxes < 1 or self.batch_size < 1 or self.thumbnail < 8:
      raise ConfigError("max_boxes and batch_size must be >= 1 and thumbnail >= 8")


def grid_boxes(cells: int, size: int = 0, stride: int = 32) -> np.ndarray:
  """(cells^2, 4) float32 boxes in [0, 1] of the row-major grid cells.

  Cell i covers input pixels [stride i, stride (i + 1)) clipped to the input side ``size``
  (default ``cells * stride``): at 260 the last of 9 cells is [256, 260) of the input.
  """
  size = size or cells * stride
  edges = np.minimum(np.arange(cells + 1) * stride, size).astype(np.float32) / np.float32(size)
  y0, x0 = np.meshgrid(edges[:-1], edges[:-1], indexing="ij")
  y1, x1 = np.meshgrid(edges[1:], edges[1:], indexing="ij")
  return np.stack([x0, y0, x1, y1], -1).reshape(-1, 4)


def photo_boxes(image: captions_lib.CaptionedImage, width: int, height: int,
                max_boxes: int) -> np.ndarray:
  """(max_boxes + 1, 4) pixel boxes: the largest ``max_boxes`` instance boxes of the photo
  by area (fewer when it has fewer), then the whole image; rows after those repeat the whole
  image (they are masked)."""
  boxes = np.zeros((0, 4), np.float32) if image.boxes is None else np.asarray(image.boxes)
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  keep = boxes[np.argsort(-area, kind="stable")[:max_boxes]]
  whole = np.array([[0, 0, width, height]], np.float32)
  pad = np.repeat(whole, max_boxes - len(keep), 0)
  return np.concatenate([keep, whole, pad], 0).astype(np.float32)


def _region_fn(settings: Settings, variables):
  """Jitted (B, S, S, 3), (B, M, 4) map-unit boxes -> (B, R, 1280) regions for the mode."""
  backbone = registry.get(settings.backbone)
  cells = backbone.cells(settings.size)

  def fn(images, boxes):
    grid = backbone.features(variables, images)                      # (B, cells^2, 1280)
    if settings.regions == "grid":
      return grid
    maps = grid.reshape(grid.shape[0], cells, cells, grid.shape[-1])
    per_box = jax.vmap(lambda m, b: roi_align.box_features(m, b))(maps, boxes)
    return per_box if settings.regions == "boxes" else jnp.concatenate([grid, per_box], 1)
  return jax.jit(fn)


def _region_layout(settings: Settings, n_boxes: np.ndarray, norm_boxes: np.ndarray):
  """(boxes (R, 4) in [0, 1], mask (R,) bool) of one photo for the region mode."""
  backbone = registry.get(settings.backbone)
  grid = grid_boxes(backbone.cells(settings.size), settings.size, backbone.stride)
  if settings.regions == "grid":
    return grid, np.ones(len(grid), bool)
  mask = np.arange(settings.max_boxes + 1) < n_boxes
  if settings.regions == "boxes":
    return norm_boxes, mask
  return (np.concatenate([grid, norm_boxes], 0),
          np.concatenate([np.ones(len(grid), bool), mask], 0))


def _photo_inputs(settings: Settings, images_dir: str, item: captions_lib.CaptionedImage):
  """(input (S, S, 3) float32, thumbnail, map-unit boxes, [0,1] boxes, region count, the
  resized photo (S, S, 3) uint8 the input is normalised from)."""
  photo = captions_lib.load_photo(os.path.join(images_dir, item.file))
  width, height = photo.size
  thumb = np.asarray(photo.resize((settings.thumbnail,) * 2, resample=2), np.uint8)  # bilinear
  px = photo_boxes(item, width, height, settings.max_boxes)
  n = min(0 if item.boxes is None else len(item.boxes), settings.max_boxes) + 1
  backbone = registry.get(settings.backbone)
  map_boxes = np.asarray(roi_align.photo_boxes_to_map(px, (width, height), settings.size,
                                                      backbone.stride))
  norm = np.clip(px / np.array([width, height, width, height], np.float32), 0.0, 1.0)
  resized = backbone.resized(photo, settings.size)
  return (backbone.normalise_pixels(resized.astype(np.float32)), thumb, map_boxes, norm, n,
          resized)


def _decoded(settings: Settings, images_dir: str, items, rows, dropped: list) -> list:
  """(row, _photo_inputs) of the rows whose photo decodes. A photo whose header reads but
  whose data is corrupt is found only here: it is dropped and listed as UNREADABLE (a
  DataError under ``settings.strict``)."""
  out = []
  for i in rows:
    try:
      out.append((i, _photo_inputs(settings, images_dir, items[i])))
    except captions_lib.DataError as e:
      fault(settings.strict, dropped, captions_lib.UNREADABLE,
                              f"{items[i].file} ({e})", str(e))
  return out


@dataclasses.dataclass(frozen=True)
class PhotoBatch:
  """One batch of decoded photos through the backbone (:func:`photo_batches`).

  Attributes:
    rows: (n,) indices into the ``items`` given of the photos that decoded, in order.
    regions: (n, R, F) float32 region features (F the backbone's feature dimension); None
      when no backbone was given.
    pixels: (n, T, T, 3) uint8 thumbnails (T = ``Settings.thumbnail``).
    boxes: (n, R, 4) float32 region boxes x0, y0, x1, y1 in [0, 1].
    masks: (n, R) bool real regions.
    photos: (n, S, S, 3) uint8 the resized photos (``model.image_input=photos`` reads them).
  """
  rows: List[int]
  regions: Optional[np.ndarray]
  pixels: np.ndarray
  boxes: np.ndarray
  masks: np.ndarray
  photos: np.ndarray


@functools.lru_cache(maxsize=2)
def region_extractor(settings: Settings):
  """The jitted ``(images (B, S, S, 3), map boxes (B, M, 4)) -> (B, R, F)`` region function
  of resolved ``settings`` with the backbone's pretrained weights (loaded, sha256-checked).
  Kept for the last two settings: encoding more photos later reuses the compiled network."""
  return _region_fn(settings, registry.get(settings.backbone).load_weights())


def photo_batches(settings: Settings, images_dir: str, items, fn, dropped: list,
                  bar=None) -> Iterator[PhotoBatch]:
  """The photos of ``items`` through the backbone ``fn`` (:func:`region_extractor`), in
  batches of ``settings.batch_size`` (one compiled shape: the last batch is padded and the
  padding cut off). Photos that cannot be decoded are appended to ``dropped`` as
  UNREADABLE (a DataError under ``settings.strict``); ``bar`` (tqdm) counts every photo.
  ``fn`` None: decoded photos only (``PhotoBatch.regions`` None), for a model that runs its
  own backbone on them."""
  n, b = len(items), settings.batch_size
  for start in range(0, n, b):
    decoded = _decoded(settings, images_dir, items, range(start, min(start + b, n)), dropped)
    if bar is not None:
      bar.update(min(start + b, n) - start)
    if not decoded:
      continue
    parts = [p for _, p in decoded]
    out = None
    if fn is not None:
      pad = [parts[-1]] * (b - len(parts))       # fixed batch: one compiled shape
      batch = np.stack([p[0] for p in parts + pad])
      out = np.asarray(fn(batch, np.stack([p[2] for p in parts + pad])))[:len(parts)]
    layouts = [_region_layout(settings, p[4], p[3]) for p in parts]
    yield PhotoBatch([i for i, _ in decoded], out,
                     np.stack([p[1] for p in parts]), np.stack([l[0] for l in layouts]),
                     np.stack([l[1] for l in layouts]), np.stack([p[5] for p in parts]))


def settings_of_folder(data_dir: str) -> Optional[Settings]:
  """The resolved :class:`Settings` an extracted folder was made with (its ``meta.json``),
  None for a folder this module did not write."""
  path = os.path.join(data_dir, "meta.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    meta = json.load(f)
  if not isinstance(meta, dict) or meta.get("version") != VERSION:
    return None
  names = {f.name for f in dataclasses.fields(Settings)}
  return Settings(**{k: v for k, v in meta["settings"].items() if k in names}).resolved()


def _write_features(settings: Settings, images_dir: str, items, tmp: str, split: str,
                    fn, bar, dropped: list) -> List[int]:
  """{split}_ims/pixels/boxes[/region_mask].npy, filled batch by batch (memory-mapped).

  Returns the indices into ``items`` of the photos written (in order); the others could not
  be decoded and were appended to ``dropped``.
  """
  n, backbone = len(items), registry.get(settings.backbone)
  cells, whole_and_boxes = backbone.cells(settings.size) ** 2, settings.max_boxes + 1
  r = {"grid": cells, "boxes": whole_and_boxes, "grid+boxes": cells + whole_and_boxes}[
      settings.regions]
  path = lambda suffix: os.path.join(tmp, f"{split}_{suffix}")
  ims = np.lib.format.open_memmap(path("ims.npy"), "w+", np.float32,
                                  (n, r, backbone.feature_dim))
  pixels = np.zeros((n, settings.thumbnail, settings.thumbnail, 3), np.uint8)
  boxes, masks = np.zeros((n, r, 4), np.float32), np.zeros((n, r), bool)
  kept: List[int] = []
  for out in photo_batches(settings, images_dir, items, fn, dropped, bar):
    rows = slice(len(kept), len(kept) + len(out.rows))   # written densely, in order
    ims[rows], pixels[rows], boxes[rows], masks[rows] = (out.regions, out.pixels, out.boxes,
                                                         out.masks)
    kept += out.rows
  ims.flush()
  del ims
  if len(kept) < n:
    shrink_npy_rows(path("ims.npy"), len(kept))
  m = len(kept)
  np.save(path("pixels.npy"), pixels[:m])
  np.save(path("boxes.npy"), boxes[:m])
  if settings.regions != "grid":
    np.save(path("region_mask.npy"), masks[:m])
  return kept


def _write_text(items: Sequence[captions_lib.CaptionedImage], tmp: str, split: str,
                labels: Optional[np.ndarray], triples) -> None:
  caps = [c for it in items for c in it.captions]
  atomic_write_bytes(os.path.join(tmp, f"{split}_caps.txt"),
                     "".join(c + "\n" for c in caps).encode("utf-8"))
  atomic_write_bytes(os.path.join(tmp, f"{split}_ids.txt"),
                     "".join(it.file + "\n" for it in items).encode("utf-8"))
  if labels is not None:
    np.save(os.path.join(tmp, f"{split}_labels.npy"), labels)
  if triples is not None:
    from xmr_jax.data import parse   # spaCy only when parsing
    parse.write_deps(os.path.join(tmp, f"{split}_deps.jsonl"), triples(caps))


def _parser(settings: Settings, caption_set: captions_lib.CaptionSet):
  """``captions -> triples`` with spaCy, or None: ``auto`` parses English (ASCII) captions
  when the ``parse`` extra is installed, and says which it chose."""
  if settings.parse == "no":
    return None
  text = "".join(c for it in caption_set.images for c in it.captions)
  english = sum(ch.isascii() for ch in text) >= 0.98 * max(len(text), 1)
  from xmr_jax.data import parse
  if settings.parse == "auto":
    try:
      nlp = parse.load_parser() if english else None
    except InputError as e:
      print(f"xmr_jax extract: no dependency triples ({e})", file=sys.stderr)
      return None
    if nlp is None:
      print("xmr_jax extract: captions are not English: no dependency triples (DeFrag can "
            "use bigram fragments)", file=sys.stderr)
      return None
  else:
    nlp = parse.load_parser()
  return lambda caps: parse.caption_triples(nlp, caps)


def read_captions(images_dir: str, captions_path: str, settings: Settings,
                  instances: Optional[str] = None) -> captions_lib.CaptionSet:
  """The caption set with k captions per kept image and a split for every image."""
  cs = captions_lib.read_caption_set(captions_path, images_dir, format=settings.format,
                                     instances=instances,
                                     captions_per_image=settings.captions_per_image,
                                     strict=settings.strict)
  if any(it.split is None for it in cs.images):
    cs = captions_lib.split_images(cs, settings.n_dev, settings.n_test, settings.seed)
  return cs


def extract(images_dir: str, captions_path: str, out_dir: str, settings: Settings = Settings(),
            instances: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
  """Writes the dataset into ``out_dir`` (which must not exist) atomically; returns meta.

  Raises:
    ConfigError: bad settings, or ``out_dir`` already exists.
    DataError: unreadable caption/instance files, or any fault under ``settings.strict``.
  """
  settings.check()
  settings = settings.resolved()
  if os.path.exists(out_dir):
    raise ConfigError(f"--out {out_dir} already exists; choose a new directory (nothing is "
                      f"overwritten)")
  cs = read_captions(images_dir, captions_path, settings, instances)
  triples = _parser(settings, cs)
  fn = region_extractor(settings)
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=".extract-")
  make_public_dir(tmp)
  try:
    dropped = list(cs.dropped)
    meta = _write_all(cs, images_dir, tmp, settings, fn, triples, progress, dropped)
    captions_lib.write_dropped(os.path.join(tmp, "dropped.txt"), dropped)
    atomic_write_json(os.path.join(tmp, "meta.json"), meta)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if len(dropped) > len(cs.dropped):
    print(f"xmr_jax extract: {len(dropped) - len(cs.dropped)} photo(s) passed the reader's "
          f"check but could not be decoded; dropped from their split", file=sys.stderr)
  print(f"xmr_jax extract: wrote {out_dir} ({meta['images_per_split']}); every dropped item "
        f"is listed in {os.path.join(out_dir, 'dropped.txt')}", file=sys.stderr)
  return meta


def _write_all(cs, images_dir, tmp, settings, fn, triples, progress,
               dropped: list) -> Dict[str, Any]:
  labels = captions_lib.multi_hot(cs) if cs.class_names is not None else None
  counts = {}
  with tqdm(total=len(cs.images), desc="extract", unit="img", disable=not progress) as bar:
    for split in sorted({it.split for it in cs.images}):
      rows = [i for i, it in enumerate(cs.images) if it.split == split]
      items = [cs.images[i] for i in rows]
      kept = _write_features(settings, images_dir, items, tmp, split, fn, bar, dropped)
      rows = [rows[i] for i in kept]
      _write_text([items[i] for i in kept], tmp, split,
                  None if labels is None else labels[rows], triples)
      counts[split] = len(rows)
  return {"version": VERSION, "settings": dataclasses.asdict(settings),
          "images_per_split": counts, "captions_file": os.path.abspath(cs.path),
          "format": cs.format, "class_names": cs.class_names,
          "backbone": registry.get(settings.backbone).describe(settings.size),
          "dropped": captions_lib.count_dropped(dropped)}


def _instances(given: Optional[str], captions: str) -> Optional[str]:
  """``--instances``, else an ``instances.json`` beside the caption file (as
  ``data.name=images`` finds it), said on stderr; None when there is neither."""
  if given:
    return given
  beside = os.path.join(os.path.dirname(os.path.abspath(captions)), "instances.json")
  if not os.path.isfile(beside):
    return None
  print(f"xmr_jax extract: using {beside} for boxes and classes (found beside the captions; "
        f"--instances names another)", file=sys.stderr)
  return beside


def main(argv: Optional[List[str]] = None) -> int:
  """CLI; bad input is one line on stderr and exit status 2."""
  p = argparse.ArgumentParser(prog="python -m xmr_jax.data.extract",
                              description=__doc__.splitlines()[0])
  p.add_argument("--images", required=True, help="folder of the photos")
  p.add_argument("--captions", required=True, help="caption file (any supported format)")
  p.add_argument("--out", required=True, help="new directory for the dataset")
  p.add_argument("--instances", default=None, help="COCO instances json (boxes, classes); "
                 "default: instances.json beside the caption file, if there is one")
  p.add_argument("--format", default="auto", choices=["auto", *captions_lib.FORMATS])
  p.add_argument("--regions", default="grid", choices=REGIONS)
  p.add_argument("--dev", type=int, default=0)
  p.add_argument("--test", type=int, default=0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--backbone", default=registry.DEFAULT, choices=registry.NAMES,
                 help="image network (xmr_jax.backbones.registry)")
  p.add_argument("--size", type=int, default=0,
                 help="input side S (default: the backbone's: 192 / 240 / 260)")
  p.add_argument("--captions-per-image", type=int, default=5)
  p.add_argument("--strict", action="store_true")
  p.add_argument("--parse", default="auto", choices=["auto", "yes", "no"])
  a = p.parse_args(argv)
  settings = Settings(backbone=a.backbone, size=a.size, regions=a.regions, captions_per_image=a.captions_per_image,
                      n_dev=a.dev, n_test=a.test, seed=a.seed, format=a.format,
                      strict=a.strict, parse=a.parse)
  try:
    meta = extract(a.images, a.captions, a.out, settings, _instances(a.instances, a.captions))
  except InputError as e:
    print(f"xmr_jax: error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(meta["images_per_split"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
