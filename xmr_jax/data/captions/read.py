"""One entry point: choose the format, read, match against the photo folder, keep k captions.

:func:`read_caption_set` prints two lines to stderr (unless ``verbose=False``): the format
it chose and why, then :func:`~xmr_jax.data.captions.form.summary` (what was kept, counts
per drop reason). Every dropped item is in ``CaptionSet.dropped``, for ``write_dropped``.
"""
import dataclasses
import os
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from xmr_jax.common.errors import ConfigError
from xmr_jax.data.captions import json_formats, text_formats
from xmr_jax.data.captions.form import (MISSING_IMAGE, NO_CAPTION, UNREADABLE, CaptionSet,
                                        check_k, fault, keep_k, plural, summary, where)
from xmr_jax.data.captions.photos import check_photo, list_photos
from xmr_jax.data.captions.rows import group_rows
from xmr_jax.data.errors import DataError

def _json_reader(layout: str, read: Callable) -> Callable:
  def reader(path: str, doc: Optional[Dict[str, Any]], strict: bool, verbose: bool):
    del verbose
    return read(path, doc if doc is not None else json_formats.load_json(path, layout), strict)
  return reader


def _read_flickr(path: str, doc, strict: bool, verbose: bool) -> CaptionSet:
  del doc, verbose
  return text_formats.read_flickr(path, strict)


def _read_csv(path: str, doc, strict: bool, verbose: bool) -> CaptionSet:
  del doc
  rows, header = text_formats.csv_rows(path)
  if header is not None and verbose:
    print(f"xmr_jax captions: {path}: line 1 is not `name.jpg, caption`; skipped as a header: "
          f"{header[:80]!r}", file=sys.stderr)
  dropped: list = []
  return CaptionSet(group_rows(rows, strict, dropped), "csv", path, dropped=dropped)


def _is_karpathy(doc: Dict[str, Any]) -> bool:
  images = doc.get("images")
  return isinstance(images, list) and bool(images) and isinstance(images[0], dict) \
      and "sentences" in images[0]


@dataclasses.dataclass(frozen=True)
class CaptionFormat:
  """A caption-file format: everything the data room knows of it, in one entry.

  Attributes:
    name: ``format=`` / ``data.images.format`` value.
    patterns: file names a photo folder's caption file is found by (``data.name=images``).
    read: ``(path, loaded json or None, strict, verbose) -> CaptionSet``.
    why: what :func:`choose_format` says when it picks this format.
    json_test: for a json format, whether a loaded document has this layout.
    first_line: for a text format, a regular expression its first line matches; a text
      format with neither test is the fallback for any other text file.
    has_splits: the file assigns train/dev/test itself (otherwise a seeded split is drawn).
  """
  name: str
  patterns: Tuple[str, ...]
  read: Callable[[str, Optional[Dict[str, Any]], bool, bool], CaptionSet]
  why: str
  json_test: Optional[Callable[[Dict[str, Any]], bool]] = None
  first_line: Optional[str] = None
  has_splits: bool = False


# Adding a caption format: write its reader (into CaptionSet) and add one entry here.
CAPTION_FORMATS = (
    CaptionFormat("coco", ("captions.json",),
                  _json_reader(json_formats.COCO_LAYOUT, json_formats.coco_captions),
                  "json with annotations[]", json_test=lambda doc: "annotations" in doc),
    CaptionFormat("flickr", ("*.token",), _read_flickr, "first line is name#i<TAB>caption",
                  first_line=r"^\S+#\d+\t"),
    CaptionFormat("karpathy", ("dataset_*.json",),
                  _json_reader(json_formats.KARPATHY_LAYOUT, json_formats.karpathy_captions),
                  "json with images[].sentences", json_test=_is_karpathy, has_splits=True),
    CaptionFormat("csv", ("captions.txt", "*.csv", "*.tsv"), _read_csv,
                  "text lines not of the form name#i<TAB>caption"),
)
FORMATS = tuple(f.name for f in CAPTION_FORMATS)
CAPTION_PATTERNS = tuple(p for f in CAPTION_FORMATS for p in f.patterns)
_BY_NAME = {f.name: f for f in CAPTION_FORMATS}


def caption_format(name: str) -> CaptionFormat:
  """The table entry of format ``name``; ConfigError naming the choices otherwise."""
  if name not in _BY_NAME:
    raise ConfigError(f"format={name!r}; choose 'auto' or one of {list(FORMATS)}")
  return _BY_NAME[name]


def _choose_json(path: str) -> Tuple[str, str, Dict[str, Any]]:
  layouts = f"{json_formats.COCO_LAYOUT} or {json_formats.KARPATHY_LAYOUT}"
  doc = json_formats.load_json(path, layouts)
  for f in CAPTION_FORMATS:
    if f.json_test is not None and f.json_test(doc):
      return f.name, f.why, doc
  raise DataError(f"{path}: a json file with neither annotations[] nor images[].sentences "
                  f"(its keys: {sorted(doc)[:10]}); expected {layouts}")


def _first_bytes(path: str, size: int = 65536) -> bytes:
  with open(path, "rb") as f:
    return f.read(size)


def choose_format(path: str) -> Tuple[str, str, Optional[Dict[str, Any]]]:
  """(format, why, the loaded json or None), decided by the file name and first line/keys.

  A ``.json`` name (or a file starting with "{") is read as JSON and the first format of
  :data:`CAPTION_FORMATS` whose layout test accepts it is chosen (``annotations``: COCO,
  ``images[].sentences``: Karpathy). Otherwise the first line with a visible character
  decides: the first text format whose pattern it matches (Flickr: ``^\\S+#\\d+\\t``), else
  the fallback text format (CSV).

  Raises:
    DataError: missing file, invalid JSON, or JSON of neither layout.
  """
  if os.path.isdir(path):
    raise DataError(f"{path}: is a folder; pass the caption file in it (captions.json, "
                    "captions.txt, dataset_coco.json, Flickr8k.token.txt, ...)")
  if not os.path.isfile(path):
    raise DataError(f"{path}: caption file not found; check the path")
  head = _first_bytes(path).lstrip(b"\xef\xbb\xbf \t\r\n")
  if path.lower().endswith(".json") or head.startswith(b"{"):
    return _choose_json(path)
  # Only the start of the file is read here; undecodable bytes are the reader's to report.
  first = head.decode("utf-8", errors="replace").split("\n", 1)[0]
  text = [f for f in CAPTION_FORMATS if f.json_test is None]
  for f in text:
    if f.first_line is not None and re.match(f.first_line, first):
      return f.name, f.why, None
  fallback = next(f for f in text if f.first_line is None)
  return fallback.name, fallback.why, None


def detect_format(path: str) -> str:
  """The format ``format="auto"`` picks for ``path``: "coco", "karpathy", "flickr" or "csv"."""
  return choose_format(path)[0]


def _loose(name: str) -> str:
  # Names equal up to case and leading zeros ("0000046.jpg" vs "000046.jpg") are shown as
  # likely matches in messages; they are never matched silently.
  return re.sub(r"\d+", lambda m: str(int(m.group())), name.lower())


def _similar(name: str, index: Dict[str, List[str]]) -> str:
  others = [n for n in index.get(_loose(name), []) if n != name]
  return f"; similar name: {others[0]!r}" if others else ""


def _check_present(captions: CaptionSet, images_dir: str, photos: List[str], strict: bool,
                   check_images: bool, dropped: list) -> list:
  """The images whose photo is in the folder (and readable); faults for the others."""
  present, by_loose = set(photos), {}
  for photo in photos:
    by_loose.setdefault(_loose(photo), []).append(photo)
  kept = []
  for image in captions.images:
    n, spot = len(image.captions), where(image)
    if image.file not in present:
      hint = _similar(image.file, by_loose)
      fault(strict, dropped, MISSING_IMAGE, f"{image.file} ({plural(n, 'caption')}; {spot}{hint})",
            f"{spot}: names photo {image.file!r}, which is not in {images_dir}{hint}; fix the "
            "name in the caption file or add the photo")
      continue
    why = check_photo(os.path.join(images_dir, image.file)) if check_images else None
    if why:
      fault(strict, dropped, UNREADABLE, f"{image.file} ({why}; {plural(n, 'caption')})",
            f"{os.path.join(images_dir, image.file)}: {why}; replace it with a whole copy, or "
            f"remove it and its captions ({spot})")
      continue
    kept.append(image)
  return kept


def _check_uncaptioned(captions: CaptionSet, images_dir: str, photos: List[str],
                       strict: bool, dropped: list) -> None:
  """NO_CAPTION faults for photos no caption names (unless the reader listed them already)."""
  named = {image.file for image in captions.images}
  listed = {d.item for d in dropped if d.reason == NO_CAPTION}
  missing: Dict[str, List[str]] = {}
  for file in named - set(photos):
    missing.setdefault(_loose(file), []).append(file)
  for photo in photos:
    if photo in named or photo in listed:
      continue
    hint = _similar(photo, missing).replace("similar name", "a caption names")
    fault(strict, dropped, NO_CAPTION, photo + (f" ({hint[2:]})" if hint else ""),
          f"{os.path.join(images_dir, photo)}: photo without any caption in "
          f"{captions.path}{hint}; add its captions or move it out of the folder")


def check_files(captions: CaptionSet, images_dir: str, strict: bool = False,
                check_images: bool = True) -> CaptionSet:
  """``captions`` matched against the photos in ``images_dir``.

  Drops (and lists) every image whose photo is not in the folder (MISSING_IMAGE), every
  photo that :func:`~xmr_jax.data.captions.photos.check_photo` finds unreadable or
  truncated (UNREADABLE; skipped with ``check_images=False``), and lists every photo in the
  folder that no caption names (NO_CAPTION). File names must match exactly; a name equal
  up to case and leading zeros is shown in the message, never used.

  Raises:
    DataError: under ``strict``, the first fault (naming the file and line); always, a
      missing images folder or one that holds none of the photos (the wrong folder).
  """
  photos = list_photos(images_dir)
  if captions.images and not set(photos) & {image.file for image in captions.images}:
    raise DataError(f"{images_dir}: holds none of the {len(captions.images):,} photos "
                    f"{captions.path} names (e.g. {captions.images[0].file!r}; the folder has "
                    f"{len(photos):,} photos{', e.g. ' + repr(photos[0]) if photos else ''}); "
                    "pass the folder those file names are relative to")
  dropped = list(captions.dropped)
  kept = _check_present(captions, images_dir, photos, strict, check_images, dropped)
  _check_uncaptioned(captions, images_dir, photos, strict, dropped)
  return dataclasses.replace(captions, images=kept, dropped=dropped)


def read_caption_set(path: str, images_dir: Optional[str] = None, *, format: str = "auto",
                     instances: Optional[str] = None, captions_per_image: Optional[int] = None,
                     strict: bool = False, check_images: bool = True,
                     verbose: bool = True) -> CaptionSet:
  """Reads a caption file into a :class:`CaptionSet`, dropping and listing its faults.

  Args:
    path: the caption file (COCO json, Karpathy json, Flickr token file or CSV/TSV).
    images_dir: the folder of the photos; None skips every check on photos.
    format: "auto" (see :func:`choose_format`) or one of FORMATS.
    instances: a COCO instances json giving boxes and classes (:func:`attach_instances`).
    captions_per_image: k: images with more keep their first k, with fewer are dropped
      (:func:`keep_k`); None keeps every caption.
    strict: every fault is a DataError (naming the file and line) instead of a drop.
    check_images: check each photo's header (:func:`check_photo`); about 30 ms per
      thousand photos from a warm disk cache.
    verbose: print the chosen format and the summary line to stderr.

  Faults are found in this order (the first one is the error under ``strict``): those of
  the caption file itself (unknown image ids, empty captions, listed images without
  caption), then missing and unreadable photos, then photos without caption, then k.

  Returns:
    The kept images in the file's order, with ``format`` set and ``dropped`` listing every
    left-out item; the caller writes it with ``write_dropped``.

  Raises:
    ConfigError: an unknown ``format`` or a bad ``captions_per_image``.
    DataError: a file that cannot be read as the format at all; any fault under ``strict``.
  """
  if format != "auto":
    caption_format(format)
  if captions_per_image is not None:
    check_k(captions_per_image)   # before reading: a typo should not cost a long read
  if format == "auto":
    fmt, why, doc = choose_format(path)
  else:
    fmt, why, doc = format, "as asked", None
  if verbose:
    print(f"xmr_jax captions: {path}: reading as {fmt} ({why}); choose another of "
          f"{list(FORMATS)} with --format (extract) or --config.data.images.format",
          file=sys.stderr)
  captions = caption_format(fmt).read(path, doc, strict, verbose)
  if instances:
    captions = json_formats.attach_instances(captions, instances)
  if images_dir is not None:
    captions = check_files(captions, images_dir, strict, check_images)
  if captions_per_image is not None:
    captions = keep_k(captions, captions_per_image, strict)
  if verbose:
    print(summary(captions), file=sys.stderr)
  return captions
