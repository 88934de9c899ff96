"""``search index``: a photo folder (and optionally captions) encoded into an index folder.

Run again with the ``--out`` of an existing index of the same model, it encodes only the
photos (and captions) not yet in it and writes the grown index in place of the old one.
"""
import dataclasses
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from xmr_jax.common.errors import ConfigError
from xmr_jax.data import captions as captions_lib
from xmr_jax.data.precomp import normalize_caption
from xmr_jax.search import model as model_lib, store


@dataclasses.dataclass(frozen=True)
class Captions:
  """Captions to index: ``texts`` (normalised) and the photo each belongs to ("" if none)."""
  texts: List[str]
  photos: List[str]
  dropped: List[captions_lib.Dropped]


def read_captions(path: str, fmt: str = "auto") -> Captions:
  """A caption file of any format ``xmr_jax.data.captions`` reads (``fmt`` as its
  ``format``), each caption with its photo; ``fmt="lines"``: plain text, one caption a line
  (blank lines skipped, captions empty after ``normalize_caption`` dropped and listed).

  Raises:
    DataError: a missing or unreadable file (``xmr_jax.data.captions``' errors).
  """
  if fmt != "lines":
    cs = captions_lib.read_caption_set(path, None, format=fmt)
    pairs = [(c, im.file) for im in cs.images for c in im.captions]
    return Captions([c for c, _ in pairs], [f for _, f in pairs], list(cs.dropped))
  if not os.path.isfile(path):
    raise captions_lib.DataError(f"{path}: caption file not found; check the path")
  with open(path, encoding="utf-8-sig", errors="replace") as f:
    lines = f.read().splitlines()
  texts, dropped = [], []
  for number, line in enumerate(lines, 1):
    text = normalize_caption(line)
    if text:
      texts.append(text)
    elif line.strip():
      dropped.append(captions_lib.Dropped(f"{path}:{number}", captions_lib.EMPTY_CAPTION))
  return Captions(texts, [""] * len(texts), dropped)


def _base(out: str, found: Dict[str, Any], images_dir: str,
          dtype: Optional[str]) -> Tuple[Optional[store.Index], str]:
  """(the existing index at ``out`` to append to, or None; the dtype to write).

  Raises SearchIndexError when ``out`` exists but is not a complete index, or was made by
  another model, from another folder or in another dtype."""
  if not os.path.exists(out):
    return None, dtype or "float32"
  base = store.open_index(out)
  ident = base.identity
  diff = [k for k in store.MODEL_KEYS if ident.get(k) != found.get(k)]
  if diff:
    raise store.SearchIndexError(
        f"{out} was built by another model than {found['workdir']} now serves (differs in "
        f"{', '.join(diff)}); give a new --out, or delete {out} to rebuild it")
  if ident["images_dir"] != images_dir:
    raise store.SearchIndexError(f"{out} indexes photos of {ident['images_dir']}, not "
                                 f"{images_dir}; give that --images, or a new --out")
  if dtype and dtype != ident["dtype"]:
    raise store.SearchIndexError(f"{out} stores {ident['dtype']}; --dtype {dtype} needs a "
                                 f"new --out")
  return base, ident["dtype"]


def _new_captions(caps: Optional[Captions], base: Optional[store.Index]) -> Captions:
  """The captions of ``caps`` not yet in ``base`` (by text and photo)."""
  if caps is None:
    return Captions([], [], [])
  have = set(zip(base.captions, base.caption_photos)) if base is not None else set()
  keep = [(t, p) for t, p in zip(caps.texts, caps.photos) if (t, p) not in have]
  return Captions([t for t, _ in keep], [p for _, p in keep], caps.dropped)


def build_index(workdir: str, images_dir: str, out: str, captions: Optional[Captions] = None,
                dtype: Optional[str] = None, progress: bool = True,
                model: Optional[model_lib.SearchModel] = None) -> Dict[str, int]:
  """Encodes the photos of ``images_dir`` (every photo under it, ``captions.list_photos``)
  and ``captions`` with ``workdir``'s model into the index ``out`` (new, or appended to).
  ``model``: ``model.load(workdir)`` done before (indexing several folders restores once).

  Returns ``{"photos": added, "captions": added, "dropped": photos left out}``.

  Raises:
    ConfigError: ``dtype`` not in ``store.DTYPES``.
    WorkdirError, ConfigError: as ``model.load`` (a workdir search cannot use).
    SearchIndexError: as :func:`_base` (``out`` exists but cannot be appended to).
    DataError: ``images_dir`` is not a folder.
  """
  if dtype is not None and dtype not in store.DTYPES:
    raise ConfigError(f"--dtype {dtype}: choose one of {list(store.DTYPES)}")
  images_dir = os.path.abspath(images_dir)
  found = dict(model_lib.workdir_identity(workdir), workdir=os.path.abspath(workdir))
  base, dtype = _base(out, found, images_dir, dtype)
  have = set(base.files) if base is not None else set()
  files = [f for f in captions_lib.list_photos(images_dir) if f not in have]
  caps = _new_captions(captions, base)
  if not files and not caps.texts and base is not None:
    print(f"xmr_jax search: {out} already holds every photo of {images_dir}"
          + (" and every caption" if captions else "") + "; nothing to add", file=sys.stderr)
    return {"photos": 0, "captions": 0, "dropped": 0}
  model = model or model_lib.load(workdir)
  identity = {**found, "format": store.FORMAT, "images_dir": images_dir, "dtype": dtype,
              "extraction": dataclasses.asdict(model.settings),
              "embedding": model.method.embedding}
  return _write(model, identity, base, out, images_dir, files, caps, progress)


def _write(model, identity, base, out, images_dir, files, caps, progress) -> Dict[str, int]:
  """Encodes ``files`` and ``caps`` into a :class:`store.Writer` and commits it."""
  dropped: List[captions_lib.Dropped] = list(caps.dropped)
  n_old = {side: (base.identity.get(side) or {}).get("count", 0) if base else 0
           for side in store.SIDES}
  room = {"images": len(files), "captions": len(caps.texts)}
  with store.Writer(out, identity, room, base) as writer:
    for rows, reprs in model_lib.encode_photos(model, images_dir, files, n_old["images"],
                                               dropped, progress):
      writer.add("images", reprs, {"images.txt": [files[i] for i in rows]})
    if caps.texts:
      reprs = model_lib.encode_texts(model, caps.texts, n_old["captions"], progress)
      writer.add("captions", reprs, {"captions.txt": caps.texts,
                                     "caption_photos.txt": caps.photos})
    writer.commit(dropped)
  added = writer.count["images"] - n_old["images"]
  unreadable = sum(d.reason == captions_lib.UNREADABLE for d in dropped)
  print(f"xmr_jax search: {out}: {writer.count['images']} photos ({added} added"
        + (f", {unreadable} could not be read" if unreadable else "")
        + f"), {writer.count['captions']} captions; every left-out item is listed in "
        f"{os.path.join(out, 'dropped.txt')}", file=sys.stderr)
  return {"photos": added, "captions": len(caps.texts), "dropped": unreadable}
