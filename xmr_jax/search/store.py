"""The index folder on disk: its layout, its identity, reading it back and writing it atomically.

=============================== ============================================================
``identity.json``               what made the index (below); written last
``images.txt``                  the photo of each image row, relative to ``images_dir``
``images/<leaf>.npy``           the encoded photos, row i = line i of ``images.txt``
``captions.txt``                (with captions) the caption text of each caption row
``caption_photos.txt``          (with captions) the photo each caption belongs to, or ""
``captions/<leaf>.npy``         (with captions) the encoded captions
``dropped.txt``                 photos and captions of the last run left out, with reasons
=============================== ============================================================

A leaf is one array of the method's encoded representation (``engine.encode_all``), item axis
first, named by its key path (``emb``, ``local``, ``mu.mean``). A method whose score is a dot
product (``Method.embedding``) stores only that (N, D) matrix. ``--dtype bfloat16`` stores
every floating leaf as bfloat16 bit patterns in a ``uint16`` .npy (``x.view(jnp.bfloat16)``
reads it back; other leaves keep their dtype). Every .npy opens with ``mmap_mode="r"``.

``identity.json``: ``format``, the model (``method``, ``checkpoint_step``,
``tokenizer_sha256``, ``config_sha256``, ``backbone``: ``training.identity.model_identity``),
``workdir``, ``images_dir``, ``extraction`` (the backbone settings photos went through),
``embedding`` (the dot-product leaf or null), ``dtype`` and per side ``count`` and ``leaves``
(``{name: {"dtype", "shape"}}``, the shape without the item axis).

The folder is written into a temporary folder beside it (``.search-index-*``) and renamed
into place when complete; appending writes a whole new folder the same way and swaps it in.
A folder without a valid ``identity.json`` or whose files disagree with it is refused.
"""
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from xmr_jax.common.errors import InputError
from xmr_jax.common.io import (atomic_write_bytes, atomic_write_json, make_public_dir,
                               shrink_npy_rows)
from xmr_jax.data import captions as captions_lib

FORMAT = "xmr_jax-search-index-v1"
IDENTITY = "identity.json"
SIDES = ("images", "captions")
# The model fields of an identity: an index answers queries only from the model that made it.
MODEL_KEYS = ("method", "checkpoint_step", "tokenizer_sha256", "config_sha256", "backbone")
DTYPES = ("float32", "bfloat16")
_TEXT = {"images": ("images.txt",), "captions": ("captions.txt", "caption_photos.txt")}
_COPY_ROWS = 8192


class SearchIndexError(InputError):
  """An index folder that is missing, half-written, changed, or made by another model; the
  message names the folder and what to do. The CLI prints it as one line, exit status 2."""


def _read_lines(path: str) -> List[str]:
  with open(path, encoding="utf-8") as f:
    return f.read().split("\n")[:-1]


def _write_lines(path: str, lines: List[str]) -> None:
  atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode("utf-8"))


def _broken(path: str, why: str) -> SearchIndexError:
  return SearchIndexError(f"{path} is not a complete search index ({why}): a run building it "
                          f"was stopped, or it was changed by hand. Delete it and build it "
                          f"again with python -m xmr_jax.search index")


@dataclasses.dataclass
class Index:
  """An opened index folder (:func:`open_index`): its identity and text columns in memory,
  its arrays memory-mapped on demand.

  Attributes:
    path: the folder.
    identity: ``identity.json`` (module doc).
    files: (N,) the photo of each image row, relative to ``identity["images_dir"]``.
    captions: (M,) caption texts ([] for an index built without captions).
    caption_photos: (M,) each caption's photo file ("" when its file names none).
  """
  path: str
  identity: Dict[str, Any]
  files: List[str]
  captions: List[str]
  caption_photos: List[str]

  def leaves(self, side: str) -> Dict[str, np.ndarray]:
    """``{leaf name: read-only memmap}`` of ``side`` as stored (bfloat16 leaves as uint16)."""
    names = (self.identity.get(side) or {}).get("leaves", {})
    return {name: np.load(os.path.join(self.path, side, name + ".npy"), mmap_mode="r")
            for name in names}

  def matrix(self, side: str) -> np.ndarray:
    """The (rows, D) memmap of the dot-product leaf of ``side``, as stored."""
    return self.leaves(side)[self.identity["embedding"]]

  def reprs(self, side: str, rows: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """``side``'s representation as ``engine.encode_all`` returned it (nested dicts of
    arrays, bfloat16 leaves read back as float32): the input of ``engine.score_all``.
    ``rows``: only these rows (sorted ints), read from the memory maps; None: every row."""
    out: Dict[str, Any] = {}
    for name, array in self.leaves(side).items():
      node = out
      *parents, last = name.split(".")
      for key in parents:
        node = node.setdefault(key, {})
      node[last] = decode(array if rows is None else array[rows],
                          self.identity[side]["leaves"][name]["dtype"])
    return out


def decode(array: np.ndarray, dtype: str) -> np.ndarray:
  """A stored leaf as an array of its logical ``dtype`` (bfloat16 bits -> float32)."""
  if dtype == "bfloat16":
    return np.asarray(array).view(jnp.bfloat16).astype(np.float32)
  return np.asarray(array)


def _check_side(path: str, identity: Dict[str, Any], side: str, rows: int) -> None:
  record = identity.get(side)
  if record is None:
    return
  if record.get("count") != rows:
    raise _broken(path, f"{_TEXT[side][0]} has {rows} lines, identity.json says "
                        f"{record.get('count')}")
  for name, leaf in record.get("leaves", {}).items():
    file = os.path.join(path, side, name + ".npy")
    try:
      shape = np.load(file, mmap_mode="r").shape
    except (OSError, ValueError) as e:
      raise _broken(path, f"{side}/{name}.npy cannot be read: {e}") from None
    if list(shape) != [rows] + list(leaf["shape"]):
      raise _broken(path, f"{side}/{name}.npy has shape {shape}, identity.json says "
                          f"{[rows] + list(leaf['shape'])}")


def open_index(path: str) -> Index:
  """The index at ``path``, checked against its ``identity.json``.

  Raises:
    SearchIndexError: no folder at ``path``; no readable ``identity.json`` of this format
      (a folder half-written by a killed run); a file missing or disagreeing with it.
  """
  if not os.path.exists(path):
    raise SearchIndexError(f"{path}: no search index there; build one with python -m "
                           f"xmr_jax.search index --workdir W --images DIR --out {path}")
  try:
    with open(os.path.join(path, IDENTITY), encoding="utf-8") as f:
      identity = json.load(f)
  except (OSError, ValueError):
    raise _broken(path, f"no readable {IDENTITY}") from None
  if not isinstance(identity, dict) or identity.get("format") != FORMAT:
    raise _broken(path, f"{IDENTITY} is not a {FORMAT} identity")
  text = {}
  for side in SIDES:
    for name in _TEXT[side] if identity.get(side) is not None else ():
      try:
        text[name] = _read_lines(os.path.join(path, name))
      except OSError:
        raise _broken(path, f"{name} is missing") from None
    _check_side(path, identity, side, len(text.get(_TEXT[side][0], [])))
  if len(text.get("caption_photos.txt", [])) != len(text.get("captions.txt", [])):
    raise _broken(path, "caption_photos.txt and captions.txt differ in length")
  return Index(path, identity, text.get("images.txt", []), text.get("captions.txt", []),
               text.get("caption_photos.txt", []))


def flatten(reprs: Any) -> Dict[str, np.ndarray]:
  """``{"a.b": leaf}`` of a repr made of nested dicts (the leaf names of the index)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(reprs)[0]:
    if not all(isinstance(k, jax.tree_util.DictKey) for k in path):
      raise TypeError(f"a search index stores reprs of nested dicts; got the path {path}")
    out[".".join(str(k.key) for k in path)] = np.asarray(leaf)
  return out


def _stored(array: np.ndarray, dtype: str) -> np.ndarray:
  """``array`` as it is stored for an index of ``dtype`` (floating leaves to bfloat16 bits)."""
  if dtype == "bfloat16" and np.issubdtype(array.dtype, np.floating):
    return array.astype(jnp.bfloat16).view(np.uint16)
  return array


class Writer:
  """Writes an index into a temporary folder beside ``out`` and moves it into place.

  ``base`` (an opened index at ``out``) is appended to: its rows come first, copied chunk by
  chunk. ``room[side]``: how many new rows may come (photos that fail to decode leave room
  unused; it is cut off at :meth:`commit`). Use as a context manager: an exception (or a
  kill) leaves ``out`` as it was and no temporary folder behind (a kill: only the
  temporary folder, which no reader accepts as an index).
  """

  def __init__(self, out: str, identity: Dict[str, Any], room: Dict[str, int],
               base: Optional[Index] = None):
    self.out, self.identity, self.room, self.base = out, dict(identity), room, base
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    self.tmp = tempfile.mkdtemp(dir=parent, prefix=".search-index-")
    make_public_dir(self.tmp)
    self.arrays: Dict[str, Dict[str, np.memmap]] = {}
    self.text: Dict[str, List[str]] = {name: [] for side in SIDES for name in _TEXT[side]}
    self.count = {side: 0 for side in SIDES}

  def __enter__(self) -> "Writer":
    return self

  def __exit__(self, kind, value, tb) -> None:
    shutil.rmtree(self.tmp, ignore_errors=True)   # after commit: already renamed away

  def _open(self, side: str, leaves: Dict[str, np.ndarray]) -> None:
    """Opens ``side``'s leaf files with room for the base rows and ``room[side]`` more."""
    os.makedirs(os.path.join(self.tmp, side))
    old = self.base.leaves(side) if self.base is not None else {}
    n_old = self.base.identity[side]["count"] if old else 0
    record = {"count": 0, "leaves": {}}
    self.arrays[side] = {}
    for name, leaf in leaves.items():
      if old and name not in old:
        raise SearchIndexError(f"{self.out}: the model gives {side} leaf {name!r}, which the "
                               f"index does not hold; build a new index")
      stored = _stored(leaf[:1], self.identity["dtype"])
      shape = (n_old + self.room[side],) + leaf.shape[1:]
      array = np.lib.format.open_memmap(os.path.join(self.tmp, side, name + ".npy"), "w+",
                                        stored.dtype, shape)
      for start in range(0, n_old, _COPY_ROWS):
        stop = min(start + _COPY_ROWS, n_old)
        array[start:stop] = old[name][start:stop]
      self.arrays[side][name] = array
      logical = "bfloat16" if stored.dtype != leaf.dtype else str(leaf.dtype)
      record["leaves"][name] = {"dtype": logical, "shape": list(leaf.shape[1:])}
    self.identity[side] = record
    self.count[side] = n_old

  def add(self, side: str, reprs: Any, lines: Dict[str, List[str]]) -> None:
    """Appends encoded rows of ``side`` and their text lines (``{"images.txt": files}``, or
    ``{"captions.txt": texts, "caption_photos.txt": photos}``)."""
    leaves = flatten(reprs)
    if side not in self.arrays:
      self._open(side, leaves)
    n = len(next(iter(leaves.values())))
    start = self.count[side]
    for name, array in self.arrays[side].items():
      array[start:start + n] = _stored(leaves[name], self.identity["dtype"])
    for name, values in lines.items():
      self.text[name] += values
    self.count[side] += n

  def _finish_side(self, side: str) -> None:
    """Flushes and trims ``side``'s files, or copies the base's when nothing was added."""
    names = _TEXT[side]
    if side not in self.arrays:
      if self.base is None or self.base.identity.get(side) is None:
        return
      shutil.copytree(os.path.join(self.base.path, side), os.path.join(self.tmp, side))
      self.identity[side] = self.base.identity[side]
      old = {"images.txt": self.base.files, "captions.txt": self.base.captions,
             "caption_photos.txt": self.base.caption_photos}
      for name in names:
        _write_lines(os.path.join(self.tmp, name), old[name])
      return
    for name, array in self.arrays[side].items():
      array.flush()
      full = len(array)
      del array
      if full > self.count[side]:
        shrink_npy_rows(os.path.join(self.tmp, side, name + ".npy"), self.count[side])
    self.arrays[side] = {}
    self.identity[side]["count"] = self.count[side]
    base_lines = {"images.txt": self.base.files if self.base else [],
                  "captions.txt": self.base.captions if self.base else [],
                  "caption_photos.txt": self.base.caption_photos if self.base else []}
    for name in names:
      _write_lines(os.path.join(self.tmp, name), base_lines[name] + self.text[name])

  def commit(self, dropped: list) -> None:
    """Writes the text files, ``dropped.txt`` (``captions.Dropped`` items of this run) and
    ``identity.json`` (last), then moves the folder to ``out`` (replacing the base index)."""
    for side in SIDES:
      self._finish_side(side)
    if self.identity.get("images") is None:      # not one photo decoded: an empty index
      self.identity["images"] = {"count": 0, "leaves": {}}
      _write_lines(os.path.join(self.tmp, "images.txt"), [])
    captions_lib.write_dropped(os.path.join(self.tmp, "dropped.txt"), dropped)
    atomic_write_json(os.path.join(self.tmp, IDENTITY), self.identity)
    if self.base is None:
      os.rename(self.tmp, self.out)
      return
    # Two renames: ``out`` is briefly absent, never half-written.
    old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(self.out)),
                           prefix=".search-old-")
    os.rmdir(old)
    os.rename(self.out, old)
    os.rename(self.tmp, self.out)
    shutil.rmtree(old, ignore_errors=True)
