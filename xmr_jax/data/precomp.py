"""Reader for the SCAN "precomp" dataset layout, with validation.

A dataset directory holds, per split (train / dev / test / testall):

* ``{split}_ims.npy``  (N, R, F) float region features (SCAN: R = 36, F = 2048);
* ``{split}_caps.txt`` k captions per image, one per line; caption c belongs to
  image c // k (k = 5 for Flickr30K / MS-COCO). UTF-8, with or without a
  byte-order mark, LF or CRLF line ends; each caption is put in Unicode NFC
  (:func:`normalize_caption`), and a line with no visible character is an error.

Optional extras (written by the synthetic benchmark):

* ``{split}_labels.npy``     (N, C) uint8 multi-hot image classes;
* ``{split}_cap_labels.npy`` (kN, C) uint8 multi-hot caption classes;
* ``{split}_deps.jsonl``     one JSON list of [relation, head, dependent] string
  triples per caption line;
* ``{split}_boxes.npy``      (N, R, 4) float32 region boxes;
* ``{split}_pixels.npy``     (N, H, W, 3) uint8 rendered images.
* ``{split}_photos.npy``     (N, S, S, 3) uint8 photos at the backbone's input size
  (``model.image_input=photos``; ``xmr_jax.data.photos``).

Feature files are memory-mapped (``np.load(mmap_mode="r", allow_pickle=False)``)
and never read whole at load time. Every problem the reader can detect is
raised as one :class:`DataError` naming the file, the line or index, and the
fix. Non-finite features are found when the batch holding them is gathered
(:func:`check_finite`, called by the pipelines), or up front with
``load_split(..., validate_all=True)`` (a chunked scan). The splits of one
dataset must agree with each other (:func:`check_agreement`: feature dtype,
dimension and region count, k, which extras exist, class count, pixel size).
"""
import dataclasses
import json
import os
import re
import unicodedata
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from xmr_jax.data.errors import DataError

SPLITS = ("train", "dev", "test", "testall")
Triple = Tuple[str, str, str]


@dataclasses.dataclass
class PrecompSplit:
  """One split of a precomp dataset; arrays are read-only memory maps."""
  images: np.ndarray                # (N, R, F) float, memory-mapped
  captions: List[str]               # k * N captions
  k: int                            # captions per image
  num_images: int
  data_dir: str
  split: str
  labels: Optional[np.ndarray] = None       # (N, C) multi-hot
  cap_labels: Optional[np.ndarray] = None   # (kN, C) multi-hot
  deps: Optional[List[List[Triple]]] = None  # kN lists of triples
  boxes: Optional[np.ndarray] = None        # (N, R, 4)
  pixels: Optional[np.ndarray] = None       # (N, H, W, 3) uint8
  photos: Optional[np.ndarray] = None       # (N, S, S, 3) uint8 backbone-sized photos
  region_mask: Optional[np.ndarray] = None  # (N, R) bool: real regions (variable counts)

  @property
  def num_captions(self) -> int:
    """Number of captions, k * N (caption c belongs to image c // k)."""
    return len(self.captions)

  @property
  def images_path(self) -> str:
    """Path of this split's ``{split}_ims.npy`` region features (for error messages)."""
    return os.path.join(self.data_dir, f"{self.split}_ims.npy")


def _path(data_dir: str, split: str, suffix: str) -> str:
  return os.path.join(data_dir, f"{split}_{suffix}")


def _missing_error(path: str) -> DataError:
  """Error for a missing required file, listing what the directory holds."""
  data_dir = os.path.dirname(path) or "."
  if not os.path.isdir(data_dir):
    return DataError(f"{path}: dataset directory {data_dir!r} does not exist; "
                     "pass the directory holding {split}_ims.npy and "
                     "{split}_caps.txt.")
  names = sorted(os.listdir(data_dir))
  shown = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
  return DataError(f"{path}: file not found. The directory holds: "
                   f"[{shown or 'nothing'}]. Each split needs <split>_ims.npy "
                   "and <split>_caps.txt (SCAN precomp layout); check the split "
                   "name and the data directory.")


def open_npy(path: str) -> np.ndarray:
  """Memory-maps a .npy file after checking its header against its size.

  Raises DataError for object (pickled) arrays and for files shorter than their
  header says (an interrupted download or copy).
  """
  if not os.path.isfile(path):
    raise _missing_error(path)
  with open(path, "rb") as f:
    try:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
      else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except ValueError as e:
      raise DataError(f"{path}: not a valid .npy file ({e}); re-save it with "
                      "np.save.") from e
    header_end = f.tell()
  if dtype.hasobject:
    raise DataError(f"{path}: holds Python objects (dtype={dtype}), which need "
                    "pickle and are never loaded. Re-save it as a numeric "
                    "array, e.g. np.save(path, np.asarray(x, np.float32)).")
  expected = header_end + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  actual = os.path.getsize(path)
  if actual < expected:
    raise DataError(f"{path}: truncated: the header says shape {shape} "
                    f"{dtype} ({expected} bytes) but the file has {actual} "
                    "bytes. Download or copy the file again.")
  return np.load(path, mmap_mode="r", allow_pickle=False)


# Unicode categories that show nothing: format characters (zero-width space and
# joiners U+200B-U+200D, word joiner U+2060, byte-order mark U+FEFF), controls
# (tab, CR) and space / line / paragraph separators. A caption made only of
# these looks blank in every editor, so it is treated as an empty line.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Zs", "Zl", "Zp"})


def _is_invisible(char: str) -> bool:
  return unicodedata.category(char) in _INVISIBLE_CATEGORIES


def strip_invisible(text: str) -> str:
  """``text`` without invisible characters (see ``_INVISIBLE_CATEGORIES``) at either end.

  Trims a byte-order mark, a CR of a CRLF line end, spaces and zero-width
  characters; "" when the text has no visible character. Inner characters are
  kept: a zero-width joiner inside an emoji or a word carries meaning.
  """
  start, stop = 0, len(text)
  while start < stop and _is_invisible(text[start]):
    start += 1
  while stop > start and _is_invisible(text[stop - 1]):
    stop -= 1
  return text[start:stop]


# Line and paragraph separators, tabs, vertical tab and form feed: not part of one line.
_INNER_BREAKS = re.compile("[ \t]*[\r\n\t\v\f\x85\u2028\u2029]+[ \t]*")


def normalize_caption(text: str) -> str:
  """The one normalisation of caption text, applied wherever captions enter.

  Unicode NFC (accented text arrives both composed and decomposed, e.g.
  the "ộ" of "Một" as U+1ED9 or as o + U+0323 + U+0302; NFC makes them one
  word), line breaks and tabs inside the caption become one space (a caption is
  one line of ``{split}_caps.txt``; COCO's json has captions with a newline in
  them), then :func:`strip_invisible`. Returns "" for a caption with no
  visible character.
  Idempotent, so tokenizers may apply it again to captions read from files.
  """
  text = _INNER_BREAKS.sub(" ", unicodedata.normalize("NFC", text))
  return strip_invisible(text)


def _empty_line_error(path: str, line_no: int, raw: str, what: str) -> DataError:
  """DataError for a blank line, naming any invisible characters it holds."""
  shown = sorted(set(raw) - set(" \t\r"))
  detail = ""
  if shown:
    names = ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, 'control')}"
                      for c in shown[:3]) + (", ..." if len(shown) > 3 else "")
    detail = f" (it holds only invisible characters: {names})"
  return DataError(f"{path}: line {line_no} is empty{detail}; every line must "
                   f"hold one {what} (remove the blank line or write the "
                   f"missing {what}).")


def _read_text_lines(path: str, clean: Callable[[str], str],
                     what: str) -> List[str]:
  """``clean(line)`` of every line of a UTF-8 text file; DataError if one is empty."""
  if not os.path.isfile(path):
    raise _missing_error(path)
  with open(path, "rb") as f:
    data = f.read()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line_start = data.rfind(b"\n", 0, e.start) + 1
    line = data.count(b"\n", 0, e.start) + 1
    raise DataError(f"{path}: line {line} is not valid UTF-8 (byte offset "
                    f"{e.start - line_start} in the line, {e.start} in the "
                    f"file: {e.reason}). Re-encode the file as UTF-8, e.g. "
                    "`iconv -f latin1 -t utf-8`.") from e
  # Lines end at "\n" only (as SCAN's readers split them); a CR before it and a
  # byte-order mark (U+FEFF, written by Notepad and pandas) before line 1 are
  # invisible characters, trimmed by ``clean``.
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  out = []
  for i, raw in enumerate(lines):
    line = clean(raw)
    if not line:
      raise _empty_line_error(path, i + 1, raw, what)
    out.append(line)
  return out


def read_captions(path: str) -> List[str]:
  """Reads one caption per line (UTF-8), each through :func:`normalize_caption`.

  A final newline, CRLF line ends and a byte-order mark are accepted.

  Raises:
    DataError: the file is missing, is not UTF-8 (naming the line and byte), or
      a line has no visible character (naming the line).
  """
  return _read_text_lines(path, normalize_caption, "caption")


def read_lines(path: str) -> List[str]:
  """Reads a UTF-8 metadata file (ids, class or file names), one item per line.

  Like :func:`read_captions` but without NFC: the items name files, and a
  file name must keep the bytes it has on disk.
  """
  return _read_text_lines(path, strip_invisible, "entry")


def read_deps(path: str, num_captions: int) -> List[List[Triple]]:
  """Reads ``{split}_deps.jsonl``: one list of string triples per caption.

  A byte-order mark and CRLF line ends are accepted (as in caption files).
  """
  deps = []
  with open(path, "rb") as f:
    for i, line in enumerate(f):
      try:
        text = line.decode("utf-8")
        # json.loads rejects a byte-order mark (U+FEFF) before line 1's list.
        triples = json.loads(text.removeprefix("\ufeff") if i == 0 else text)
      except UnicodeDecodeError as e:
        raise DataError(f"{path}: line {i + 1} is not valid UTF-8 (byte offset "
                        f"{e.start} in the line); re-encode the file as "
                        "UTF-8.") from e
      except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {i + 1} is not valid JSON ({e.msg}); "
                        "each line must be a JSON list of [relation, head, "
                        "dependent] triples.") from e
      if not isinstance(triples, list) or not all(
          isinstance(t, list) and len(t) == 3 and
          all(isinstance(s, str) for s in t) for t in triples):
        raise DataError(f"{path}: line {i + 1} must be a JSON list of "
                        "[relation, head, dependent] string triples, got "
                        f"{line.strip()[:80].decode('utf-8')!r}.")
      deps.append([tuple(t) for t in triples])
  if len(deps) != num_captions:
    raise DataError(f"{path}: has {len(deps)} lines but the captions file has "
                    f"{num_captions}; write exactly one line per caption.")
  return deps


def _infer_k(caps_path: str, num_captions: int, num_images: int,
             captions_per_image: Optional[int]) -> int:
  """Captions per image: given, or num_captions / num_images."""
  if num_images == 0:
    raise DataError(f"{caps_path}: the image features hold no images.")
  if captions_per_image is not None:
    if num_captions != captions_per_image * num_images:
      raise DataError(
          f"{caps_path}: has {num_captions} captions but {num_images} images "
          f"x {captions_per_image} captions per image = "
          f"{captions_per_image * num_images} are expected; fix the files or "
          "the captions_per_image setting.")
    return captions_per_image
  if num_captions % num_images:
    raise DataError(
        f"{caps_path}: has {num_captions} captions, not a multiple of the "
        f"{num_images} images in the features file; caption c must belong to "
        "image c // k. Check that both files come from the same split.")
  return num_captions // num_images


def _check_features(path: str, images: np.ndarray) -> None:
  if images.ndim != 3:
    raise DataError(f"{path}: features must have shape (N, regions, dim), got "
                    f"shape {images.shape}; re-save as a rank-3 array.")
  if not np.issubdtype(images.dtype, np.floating):
    raise DataError(f"{path}: features must be floating point, got dtype "
                    f"{images.dtype}; re-save with .astype(np.float32).")


def _check_rows(path: str, array: np.ndarray, rows: int, what: str,
                rank: int) -> None:
  if array.ndim != rank or array.shape[0] != rows:
    raise DataError(f"{path}: expected rank {rank} with {rows} rows (one per "
                    f"{what}), got shape {array.shape}.")


def _rgb_rows(path: str, n: int, what: str) -> Optional[np.ndarray]:
  """The (N, H, W, 3) uint8 file at ``path`` memory-mapped, None when absent; DataError
  naming ``what`` was expected for another row count, shape or dtype."""
  if not os.path.isfile(path):
    return None
  array = open_npy(path)
  _check_rows(path, array, n, "image", 4)
  if array.shape[-1] != 3 or array.dtype != np.uint8:
    raise DataError(f"{path}: expected {what}, got {array.shape} {array.dtype}.")
  return array


def _load_extras(split_obj: PrecompSplit) -> None:
  """Loads and shape-checks whichever optional extras exist."""
  d, s, n = split_obj.data_dir, split_obj.split, split_obj.num_images
  p = _path(d, s, "labels.npy")
  if os.path.isfile(p):
    split_obj.labels = open_npy(p)
    _check_rows(p, split_obj.labels, n, "image", 2)
  p = _path(d, s, "cap_labels.npy")
  if os.path.isfile(p):
    split_obj.cap_labels = open_npy(p)
    _check_rows(p, split_obj.cap_labels, split_obj.num_captions, "caption", 2)
  p = _path(d, s, "boxes.npy")
  if os.path.isfile(p):
    split_obj.boxes = open_npy(p)
    _check_rows(p, split_obj.boxes, n, "image", 3)
    if split_obj.boxes.shape[1:] != (split_obj.images.shape[1], 4):
      raise DataError(f"{p}: expected shape (N, {split_obj.images.shape[1]}, "
                      f"4), got {split_obj.boxes.shape}.")
  split_obj.pixels = _rgb_rows(_path(d, s, "pixels.npy"), n, "(N, H, W, 3) uint8 pixels")
  split_obj.photos = _rgb_rows(_path(d, s, "photos.npy"), n, "(N, S, S, 3) uint8 photos")
  p = _path(d, s, "deps.jsonl")
  if os.path.isfile(p):
    split_obj.deps = read_deps(p, split_obj.num_captions)
  _load_region_mask(split_obj)


def _load_region_mask(split_obj: PrecompSplit) -> None:
  """``{split}_region_mask.npy`` (N, R) bool: a dataset whose images have different numbers of
  regions (e.g. detected boxes + the whole image) pads R and marks the real ones. Every image
  needs at least one real region (a masked mean over none is undefined)."""
  p = _path(split_obj.data_dir, split_obj.split, "region_mask.npy")
  if not os.path.isfile(p):
    return
  mask = open_npy(p)
  _check_rows(p, mask, split_obj.num_images, "image", 2)
  if mask.dtype != np.bool_ or mask.shape[1] != split_obj.images.shape[1]:
    raise DataError(f"{p}: expected (N, {split_obj.images.shape[1]}) bool, got {mask.shape} "
                    f"{mask.dtype}.")
  empty = np.flatnonzero(~np.asarray(mask).any(axis=1))
  if empty.size:
    raise DataError(f"{p}: image {int(empty[0])} (and {empty.size - 1} more) has no real region;"
                    f" every image needs at least one (e.g. the whole-image region).")
  split_obj.region_mask = mask


def load_split(data_dir: str, split: str,
               captions_per_image: Optional[int] = None, *,
               validate_all: bool = False) -> PrecompSplit:
  """Opens one split of a SCAN precomp dataset directory and validates it.

  Args:
    data_dir: directory holding ``{split}_ims.npy`` and ``{split}_caps.txt``.
    split: train / dev / test / testall (any name present works).
    captions_per_image: k; inferred as num_captions / num_images when None.
    validate_all: also scan every feature value for NaN/Inf (chunked; slow on
      multi-GB files, which is why the pipelines check each batch instead).

  Returns:
    A PrecompSplit whose arrays are read-only memory maps.
  """
  ims_path = _path(data_dir, split, "ims.npy")
  caps_path = _path(data_dir, split, "caps.txt")
  images = open_npy(ims_path)
  _check_features(ims_path, images)
  captions = read_captions(caps_path)
  k = _infer_k(caps_path, len(captions), images.shape[0], captions_per_image)
  out = PrecompSplit(images=images, captions=captions, k=k,
                     num_images=images.shape[0], data_dir=data_dir, split=split)
  _load_extras(out)
  if validate_all:
    scan_finite(images, ims_path)
  return out


def find_splits(data_dir: str) -> List[str]:
  """Names of the splits in ``data_dir``: every ``{split}_ims.npy``, sorted."""
  if not os.path.isdir(data_dir):
    return []
  return sorted(name[:-len("_ims.npy")] for name in os.listdir(data_dir)
                if name.endswith("_ims.npy") and len(name) > len("_ims.npy"))


# Optional per-split files (attribute of PrecompSplit -> file suffix). Present in one split,
# they must be present in all: a model sized or evaluated on one split reads them on another.
EXTRAS = {"labels": "labels.npy", "cap_labels": "cap_labels.npy", "boxes": "boxes.npy",
          "pixels": "pixels.npy", "photos": "photos.npy", "deps": "deps.jsonl",
          "region_mask": "region_mask.npy"}


def _agreement(split: PrecompSplit):
  """(suffix, what, value) for everything that must agree across the splits of a dataset."""
  ims = split.images
  yield "ims.npy", "feature dtype", str(ims.dtype)
  yield "ims.npy", "feature dimension", int(ims.shape[2])
  yield "ims.npy", "region count per image", int(ims.shape[1])
  yield "caps.txt", "captions per image (k)", split.k
  for name, suffix in EXTRAS.items():
    yield suffix, "file", "present" if getattr(split, name) is not None else "missing"
  for name in ("labels", "cap_labels"):
    if getattr(split, name) is not None:
      yield EXTRAS[name], "class count", int(getattr(split, name).shape[1])
  if split.pixels is not None:
    yield "pixels.npy", "image size (H, W)", tuple(int(x) for x in split.pixels.shape[1:3])
  if split.photos is not None:
    yield "photos.npy", "photo size (S, S)", tuple(int(x) for x in split.photos.shape[1:3])


def check_agreement(reference: PrecompSplit, split: PrecompSplit) -> None:
  """Raises DataError unless ``split`` agrees with ``reference`` (the training split).

  Compared: feature dtype, feature dimension F and region count R of ``{split}_ims.npy``
  (a model's parameters are sized by the training split; a dataset with variable region
  counts pads R and declares the real regions in ``{split}_region_mask.npy``, so R is equal
  there too), captions per image k, which optional extras exist
  (:data:`EXTRAS`), the class count C of labels / caption labels and the (H, W) of pixels.
  Only headers and presence are read (the arrays are memory maps), so this is cheap.

  Raises:
    DataError: naming ``split``'s file, the value expected from ``reference``'s file and
      the value found.
  """
  for (suffix, what, expected), (_, _, found) in zip(_agreement(reference), _agreement(split)):
    if expected == found:
      continue
    path, ref_path = _path(split.data_dir, split.split, suffix), _path(
        reference.data_dir, reference.split, suffix)
    if what == "file":
      has = "has" if expected == "present" else "has no"
      fix = (f"write it, or remove the {suffix} file of every split" if found == "missing"
             else f"remove it, or write {reference.split}_{suffix} and the other splits' too")
      raise DataError(f"{path}: {found}, but the training split {has} {ref_path}; every "
                      f"split of a dataset must carry the same optional files: {fix}.")
    raise DataError(f"{path}: {what} is {found}, but the training split has {expected} "
                    f"({ref_path}); every split of a dataset must agree on it (one feature "
                    "extractor, one caption layout, one label set). Re-export this split "
                    "like the training split, or point data.dir at a dataset whose splits "
                    "agree.")


def check_finite(features: np.ndarray, indices: Sequence[int],
                 path: str) -> None:
  """Raises DataError if a gathered feature batch holds NaN or Inf.

  Args:
    features: (B, ...) rows gathered from the file at ``path``.
    indices: (B,) the row (image) index in the file of each gathered row.
    path: the file the rows came from, for the message.
  """
  finite = np.isfinite(features).reshape(features.shape[0], -1).all(axis=1)
  if not finite.all():
    bad = np.flatnonzero(~finite)
    rows = [int(indices[i]) for i in bad[:5]]
    raise DataError(f"{path}: image index {rows[0]} has NaN or Inf features "
                    f"(bad rows in this batch: {rows}"
                    f"{' ...' if len(bad) > 5 else ''}). Recompute or replace "
                    "those rows; `load_split(..., validate_all=True)` lists "
                    "the first bad row of the whole file.")


def scan_finite(images: np.ndarray, path: str, chunk_rows: int = 256) -> None:
  """Checks every row of a (memory-mapped) feature array, chunk by chunk."""
  for start in range(0, images.shape[0], chunk_rows):
    stop = min(start + chunk_rows, images.shape[0])
    check_finite(np.asarray(images[start:stop]), np.arange(start, stop), path)
