"""``data.name=images``: a folder of photos + a caption file, extracted once into the cache.

``data.dir`` holds ``images/`` and a caption file in any supported format (found by name:
``captions.json``, ``captions.txt``, ``dataset_*.json``, ``*.token``, ``*.csv``/``*.tsv``, or
named by ``data.images.captions``) and optionally ``instances.json``. The first run extracts
it (``xmr_jax.data.extract``) into ``$XMR_DATA_DIR/images/<folder>-<fingerprint>``; later runs
reuse it. The fingerprint covers the caption and instance files' bytes, every photo's name,
size and modification time, the extraction settings, and the backbone (``data.images.backbone``:
its name, input size, weights sha256 and the feature-code version), so a changed input or
network is extracted again, and two backbones never share an entry. An exclusive lock
(``fcntl.flock``) makes two runs started together extract once.
"""
import dataclasses
import fcntl
import glob
import hashlib
import json
import os
from typing import Optional

from xmr_jax.common.errors import ConfigError
from xmr_jax.common.io import cache_root
from xmr_jax.data import captions as captions_lib

# The caption file of a photo folder is found by the caption formats' own names (one table,
# ``captions.CAPTION_FORMATS``).
CAPTION_PATTERNS = captions_lib.CAPTION_PATTERNS


def find_captions(root: str, named: str = "") -> str:
  """The caption file of ``root``: ``named`` (relative to root or absolute) or the one file
  matching :data:`CAPTION_PATTERNS`; ConfigError naming what was found otherwise."""
  if named:
    path = named if os.path.isabs(named) else os.path.join(root, named)
    if not os.path.isfile(path):
      raise ConfigError(f"config.data.images.captions={named!r}: no such file in {root}")
    return path
  found = sorted({p for pat in CAPTION_PATTERNS for p in glob.glob(os.path.join(root, pat))})
  if len(found) != 1:
    raise ConfigError(f"config.data.dir={root!r}: expected one caption file matching "
                      f"{list(CAPTION_PATTERNS)}, found {[os.path.basename(p) for p in found]};"
                      f" name it with --config.data.images.captions=FILE")
  return found[0]


def settings_of(data_config):
  """The extraction settings a data config asks for (``extract.Settings``, size resolved to
  the backbone's default when 0); ConfigError for an unknown backbone or a bad setting."""
  from xmr_jax.data import extract   # the backbone (and JAX programs) only when extracting
  im = data_config.images
  n_dev, n_test = data_config.split_sizes
  settings = extract.Settings(backbone=im.backbone, size=im.size, regions=im.regions,
                              max_boxes=im.max_boxes,
                              captions_per_image=data_config.captions_per_image,
                              n_dev=int(n_dev), n_test=int(n_test), seed=data_config.split_seed,
                              format=im.format, strict=data_config.strict, parse=im.parse)
  settings.check()
  return settings.resolved()


def _file_digest(path: Optional[str]) -> str:
  if not path:
    return ""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def fingerprint(images_dir: str, captions_path: str, instances: Optional[str],
                settings) -> str:
  """sha256 (hex, 16 chars) of the inputs and settings that determine the extraction,
  including the backbone's name, input size, weights sha256 and feature-code version."""
  from xmr_jax.backbones import registry
  h = hashlib.sha256()
  h.update(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
  backbone = registry.get(settings.backbone).describe(settings.size)
  h.update(json.dumps(backbone, sort_keys=True).encode())    # name, size, sha256, version
  h.update(_file_digest(captions_path).encode() + _file_digest(instances).encode())
  for name in captions_lib.list_photos(images_dir):
    st = os.stat(os.path.join(images_dir, name))
    h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:16]


def _check_split_sizes(data_config, captions_path: str) -> None:
  """ConfigError, before anything is extracted, when the caption file has no splits (only
  Karpathy's json has them) and ``data.split_sizes`` asks for no dev or no test image."""
  n_dev, n_test = data_config.split_sizes
  if n_dev > 0 and n_test > 0:
    return
  fmt = data_config.images.format
  fmt = captions_lib.detect_format(captions_path) if fmt == "auto" else fmt
  if not captions_lib.caption_format(fmt).has_splits:
    raise ConfigError(f"{captions_path} ({fmt}) has no dev/test splits and "
                      f"config.data.split_sizes={tuple(data_config.split_sizes)} draws "
                      f"{n_dev} dev and {n_test} test images; training needs both: set e.g. "
                      f"--config.data.split_sizes='(50, 50)'")


def dataset_dir(data_config, photos: bool = False) -> str:
  """The precomp directory for ``data_config`` (``data.name='images'``), extracted if needed;
  with ``photos``, also its ``{split}_photos.npy`` (``xmr_jax.data.photos``), written once.

  Raises:
    ConfigError: ``data.dir`` is not a folder with ``images/`` and one caption file.
    DataError: faults of the data under ``data.strict`` (see ``xmr_jax.data.captions``).
  """
  root = data_config.dir
  images_dir = os.path.join(root, "images")
  if not root or not os.path.isdir(images_dir):
    if not root:
      what = "no folder was given"
    elif not os.path.isdir(root):
      what = f"{root!r} does not exist"
    else:
      what = f"{root!r} has no images/ folder"
    raise ConfigError(f"config.data.name='images' needs --config.data.dir=FOLDER holding "
                      f"images/ and a caption file; {what}")
  captions_path = find_captions(root, data_config.images.captions)
  _check_split_sizes(data_config, captions_path)
  instances = data_config.images.instances or os.path.join(root, "instances.json")
  instances = instances if os.path.isfile(instances) else None
  if data_config.images.instances and instances is None:
    raise ConfigError(f"config.data.images.instances={data_config.images.instances!r}: "
                      f"no such file")
  settings = settings_of(data_config)
  key = fingerprint(images_dir, captions_path, instances, settings)
  name = os.path.basename(os.path.normpath(root)) or "images"
  out = os.path.join(cache_root(), "images", f"{name}-{key}")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)          # a second run waits, then finds it done
    if not os.path.isdir(out):
      from xmr_jax.data import extract
      extract.extract(images_dir, captions_path, out, settings, instances)
    if photos:
      from xmr_jax.data import photos as photos_lib
      photos_lib.ensure_photos(out, images_dir, settings.backbone, settings.size)
  return out
