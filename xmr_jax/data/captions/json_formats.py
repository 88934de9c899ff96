"""JSON caption files: COCO captions (+ COCO instances for boxes and classes) and Karpathy's
split files (dataset_coco.json, dataset_flickr8k.json, dataset_flickr30k.json).

A file without the layout's keys is a DataError naming the file, the entry
(``annotations[17]``) and the layout expected.
"""
import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from xmr_jax.data.captions.form import (MISSING_IMAGE, NO_CAPTION, REPEATED_ID, CaptionSet,
                                        Dropped, fault, plural)
from xmr_jax.data.captions.rows import Row, group_rows
from xmr_jax.data.errors import DataError

COCO_LAYOUT = ('COCO captions json: {"images": [{"id": ..., "file_name": ...}], '
               '"annotations": [{"image_id": ..., "caption": ...}]}')
INSTANCES_LAYOUT = ('COCO instances json: {"images": [{"id", "file_name"}], "annotations": '
                    '[{"image_id", "category_id", "bbox": [x, y, w, h]}], '
                    '"categories": [{"id", "name"}]}')
KARPATHY_LAYOUT = ('Karpathy split json: {"images": [{"filename": ..., "filepath": (optional), '
                   '"split": "train"|"val"|"test"|"restval", "sentences": [{"raw": ...}]}]}')
# Karpathy's split names -> ours. restval (30,504 COCO val2014 images outside the 5k val and
# 5k test) is trained on, as SCAN and VSE++ do (SCAN's COCO train is train + restval,
# 113,287 images); val is the dev split.
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "dev", "test": "test"}


def load_json(path: str, layout: str) -> Dict[str, Any]:
  """The top-level object of a JSON file.

  Raises:
    DataError: missing file, invalid JSON (naming the line and column) or a top level that
      is not an object, each with ``layout``.
  """
  try:
    with open(path, "rb") as f:
      return _object(json.loads(f.read().decode("utf-8-sig")), path, layout)
  except FileNotFoundError as e:
    raise DataError(f"{path}: file not found; check the path") from e
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}); expected "
                    f"{layout}") from e
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                    f"expected {layout}") from e


def _object(doc: Any, path: str, layout: str) -> Dict[str, Any]:
  if not isinstance(doc, dict):
    raise DataError(f"{path}: the top level is a {type(doc).__name__}, not an object; "
                    f"expected {layout}")
  return doc


def _entries(doc: Dict[str, Any], key: str, path: str, layout: str) -> List[Dict[str, Any]]:
  """``doc[key]``, checked to be a list of objects."""
  value = doc.get(key)
  if not isinstance(value, list):
    raise DataError(f"{path}: no {key}[] list; expected {layout}")
  for i, entry in enumerate(value):
    if not isinstance(entry, dict):
      raise DataError(f"{path}: {key}[{i}] is a {type(entry).__name__}, not an object; "
                      f"expected {layout}")
  return value


def _field(entry: Dict[str, Any], name: str, kinds: tuple, where: str, layout: str) -> Any:
  value = entry.get(name)
  if isinstance(value, bool) or not isinstance(value, kinds):
    raise DataError(f"{where} has no {name} of type {'/'.join(k.__name__ for k in kinds)} "
                    f"(found {value!r}); expected {layout}")
  return value


def _id_to_file(path: str, doc: Dict[str, Any], layout: str) -> Dict[Any, str]:
  """{images[].id: images[].file_name}; DataError on a missing field or a repeated id."""
  out: Dict[Any, str] = {}
  for i, image in enumerate(_entries(doc, "images", path, layout)):
    where = f"{path}: images[{i}]"
    image_id = _field(image, "id", (int, str), where, layout)
    if image_id in out:
      raise DataError(f"{where}: id {image_id!r} is used twice; each image needs its own id")
    out[image_id] = _field(image, "file_name", (str,), where, layout)
  return out


def coco_captions(path: str, doc: Dict[str, Any], strict: bool) -> CaptionSet:
  """:func:`read_coco` on an already loaded ``doc`` (format detection loads it once)."""
  id_to_file = _id_to_file(path, doc, COCO_LAYOUT)
  rows, unknown, dropped = [], {}, []
  notes = _entries(doc, "annotations", path, COCO_LAYOUT)
  if not notes:
    raise DataError(f"{path}: annotations[] is empty: no caption; expected {COCO_LAYOUT}")
  first_with_id: Dict[Any, int] = {}
  for j, note in enumerate(notes):
    where = f"{path}: annotations[{j}]"
    image_id = _field(note, "image_id", (int, str), where, COCO_LAYOUT)
    caption = _field(note, "caption", (str,), where, COCO_LAYOUT)
    note_id = note.get("id")
    if isinstance(note_id, (int, str)) and not isinstance(note_id, bool):
      if note_id in first_with_id:
        # A repeated entry (a merged or re-saved file) would be a second copy of a caption
        # and push one of the image's real captions past k.
        first = first_with_id[note_id]
        fault(strict, dropped, REPEATED_ID, f"annotations[{j}] (id {note_id!r}, first at "
              f"annotations[{first}])", f"{where}: id {note_id!r} was already given to "
              f"annotations[{first}]; each caption needs its own id (remove the repeated entry)")
        continue
      first_with_id[note_id] = j
    if image_id not in id_to_file:
      unknown.setdefault(image_id, []).append(where)
      continue
    rows.append(Row(id_to_file[image_id], caption, where, j))
  if unknown and not rows:   # a mismatch of the whole file, not a few faulty entries
    raise DataError(f"{path}: no annotations[].image_id is an images[].id (e.g. image_id "
                    f"{next(iter(unknown))!r} vs id {next(iter(id_to_file), None)!r}); "
                    f"expected {COCO_LAYOUT}")
  for image_id, places in unknown.items():
    fault(strict, dropped, MISSING_IMAGE,
          f"image_id {image_id!r} ({plural(len(places), 'caption')}; {places[0]})",
          f"{places[0]}: image_id {image_id!r} is not an id in images[]; add the image to "
          "images[] or remove its captions")
  images = group_rows(rows, strict, dropped)
  captioned = {image.file for image in images}
  for file in id_to_file.values():
    if file not in captioned:
      fault(strict, dropped, NO_CAPTION, file,
            f"{path}: images[] lists {file!r} but no annotation gives it a caption; add its "
            "captions or remove it from images[]")
  return CaptionSet(images, "coco", path, dropped=dropped)


def read_coco(path: str, instances: Optional[str] = None, strict: bool = False) -> CaptionSet:
  """Reads a COCO captions json (captions_train2017.json layout; see COCO_LAYOUT).

  Each ``annotations[]`` entry is one caption of the image whose ``images[].id`` is its
  ``image_id``; an image's captions keep annotation order. With ``instances`` (the matching
  instances_*.json) each image also gets its boxes and classes (:func:`attach_instances`).
  A caption for an unknown image id is MISSING_IMAGE and an image without captions
  NO_CAPTION: dropped and listed, or a DataError under ``strict``.

  Raises:
    DataError: missing or invalid file, or an entry without the layout's fields.
  """
  out = coco_captions(path, load_json(path, COCO_LAYOUT), strict)
  return attach_instances(out, instances) if instances else out


def _box(note: Dict[str, Any], where: str) -> List[float]:
  """COCO's [x, y, w, h] as [x0, y0, x1, y1]; DataError unless 4 finite numbers, w, h >= 0."""
  box = note.get("bbox")
  if (not isinstance(box, list) or len(box) != 4
      or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                 for v in box) or box[2] < 0 or box[3] < 0):
    raise DataError(f"{where}: bbox {box!r} is not [x, y, width, height] (4 finite numbers, "
                    f"width and height >= 0); expected {INSTANCES_LAYOUT}")
  x, y, w, h = box
  return [x, y, x + w, y + h]


def read_instances(path: str) -> Tuple[Dict[str, Tuple[np.ndarray, np.ndarray]], List[str]]:
  """COCO instance annotations by photo: ({file name: (boxes, classes)}, class names).

  ``boxes`` is (n, 4) float32 x0, y0, x1, y1 in the photo's pixels (COCO's [x, y, w, h]
  converted), ``classes`` (n,) int32: a category's index in ``categories[]`` (COCO's 80
  category ids 1..90 become 0..79 in file order). Photos are keyed by the base name of
  ``file_name``. Crowd boxes (iscrowd=1) are kept: they still say which classes are present.

  Raises:
    DataError: missing or invalid file, an unknown image or category id, a bad bbox.
  """
  doc = load_json(path, INSTANCES_LAYOUT)
  id_to_file = _id_to_file(path, doc, INSTANCES_LAYOUT)
  index: Dict[Any, int] = {}
  names = []
  for i, category in enumerate(_entries(doc, "categories", path, INSTANCES_LAYOUT)):
    where = f"{path}: categories[{i}]"
    index[_field(category, "id", (int, str), where, INSTANCES_LAYOUT)] = i
    names.append(_field(category, "name", (str,), where, INSTANCES_LAYOUT))
  found: Dict[str, Tuple[list, list]] = {}
  for j, note in enumerate(_entries(doc, "annotations", path, INSTANCES_LAYOUT)):
    where = f"{path}: annotations[{j}]"
    image_id = _field(note, "image_id", (int, str), where, INSTANCES_LAYOUT)
    category = _field(note, "category_id", (int, str), where, INSTANCES_LAYOUT)
    if image_id not in id_to_file or category not in index:
      what = "image_id" if image_id not in id_to_file else "category_id"
      raise DataError(f"{where}: {what} {note[what]!r} is not listed in "
                      f"{'images' if what == 'image_id' else 'categories'}[]; expected "
                      f"{INSTANCES_LAYOUT}")
    boxes, classes = found.setdefault(os.path.basename(id_to_file[image_id]), ([], []))
    boxes.append(_box(note, where))
    classes.append(index[category])
  return {name: (np.asarray(b, np.float32).reshape(-1, 4), np.asarray(c, np.int32))
          for name, (b, c) in found.items()}, names


def attach_instances(captions: CaptionSet, path: str) -> CaptionSet:
  """``captions`` with every image's instance boxes and classes from ``path``.

  Photos are matched by base name, so a COCO instances file serves COCO captions and
  Karpathy's dataset_coco.json alike. A photo without instances gets (0, 4) boxes and (0,)
  classes (its multi-hot vector is all zero). ``class_names`` is set.

  Raises:
    DataError: the instance file is invalid, or none of its photos is in ``captions``
      (most likely the instances of another split).
  """
  by_name, names = read_instances(path)
  none = (np.zeros((0, 4), np.float32), np.zeros((0,), np.int32))
  images = []
  for image in captions.images:
    boxes, classes = by_name.get(os.path.basename(image.file), none)
    images.append(dataclasses.replace(image, boxes=boxes, classes=classes))
  if by_name and captions.images and not any(len(im.classes) for im in images):
    raise DataError(f"{path}: none of its {len(by_name)} annotated photos is in "
                    f"{captions.path}; pass the instances file of the same split")
  return dataclasses.replace(captions, images=images, class_names=names)


def _karpathy_rows(path: str, doc: Dict[str, Any], strict: bool,
                   dropped: List[Dropped]) -> List[Row]:
  rows, seen = [], {}
  images = _entries(doc, "images", path, KARPATHY_LAYOUT)
  if not images:
    raise DataError(f"{path}: images[] is empty: no caption; expected {KARPATHY_LAYOUT}")
  for i, image in enumerate(images):
    where = f"{path}: images[{i}]"
    name = _field(image, "filename", (str,), where, KARPATHY_LAYOUT)
    folder = image.get("filepath") or ""
    file = f"{folder}/{name}" if folder else name
    split = _field(image, "split", (str,), where, KARPATHY_LAYOUT)
    if split not in KARPATHY_SPLITS or file in seen:
      raise DataError(f"{where}: " + (f"{file!r} repeats {seen.get(file)}" if file in seen else
                                      f"split {split!r} is not one of {list(KARPATHY_SPLITS)}")
                      + f"; expected {KARPATHY_LAYOUT}")
    seen[file] = where
    sentences = _field(image, "sentences", (list,), where, KARPATHY_LAYOUT)
    if not sentences:
      fault(strict, dropped, NO_CAPTION, file, f"{where}: {file!r} has no sentences; add its "
            "captions or remove the image")
    for j, sentence in enumerate(sentences):
      spot = f"{where}.sentences[{j}]"
      raw = _field(sentence if isinstance(sentence, dict) else {}, "raw", (str,), spot,
                   KARPATHY_LAYOUT)
      rows.append(Row(file, raw, spot, j, KARPATHY_SPLITS[split]))
  return rows


def karpathy_captions(path: str, doc: Dict[str, Any], strict: bool) -> CaptionSet:
  """:func:`read_karpathy` on an already loaded ``doc``."""
  dropped: List[Dropped] = []
  images = group_rows(_karpathy_rows(path, doc, strict, dropped), strict, dropped)
  return CaptionSet(images, "karpathy", path, dropped=dropped)


def read_karpathy(path: str, strict: bool = False) -> CaptionSet:
  """Reads Karpathy's split json (dataset_coco.json / dataset_flickr30k.json; KARPATHY_LAYOUT).

  An image's file is ``filepath/filename`` when ``filepath`` is given (COCO: "val2014/...")
  and ``filename`` otherwise (Flickr). Captions are ``sentences[].raw`` in order (the
  ``tokens`` field is ignored: tokenizing is the tokenizer's job). Splits map as SCAN's
  data preparation does: train -> train, restval -> train, val -> dev, test -> test.
  An image without sentences is NO_CAPTION (dropped, or a DataError under ``strict``).

  Raises:
    DataError: missing or invalid file, an unknown split, a repeated file, or an entry
      without the layout's fields.
  """
  return karpathy_captions(path, load_json(path, KARPATHY_LAYOUT), strict)
