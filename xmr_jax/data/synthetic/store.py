"""Writing a whole benchmark atomically, and the cache of generated benchmarks."""
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Optional

from xmr_jax.common.io import cache_root
from xmr_jax.data.synthetic import blas, writer
from xmr_jax.data.synthetic.spec import VERSION, Difficulty


def _publish(tmp: str, out: str, overwrite: bool) -> None:
  """Renames the finished tmp dir to out atomically; FileExistsError if out is taken."""
  if os.path.exists(out) and overwrite:
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    os.rename(out, os.path.join(old, "x"))
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return
  if os.path.exists(out) and os.listdir(out):
    raise FileExistsError(f"{out} already exists; pass overwrite=True or pick another --out")
  try:
    os.rename(tmp, out)       # atomic; fails if another process published a non-empty dir
  except OSError as e:
    raise FileExistsError(f"{out} was created concurrently") from e


def generate(out_dir: str, *, seed: int = 0, n_train: int = 10000, n_dev: int = 500,
             n_test: int = 1000, pixels: bool = False, overwrite: bool = False,
             **difficulty) -> str:
  """Writes the benchmark into out_dir (atomically, via a temp dir beside it); returns it.

  ``difficulty`` holds :class:`Difficulty` fields (unknown names raise TypeError).
  """
  d = Difficulty(**difficulty)
  out = os.path.abspath(os.path.expanduser(out_dir))
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
  try:
    os.chmod(tmp, 0o755)
    sizes = dict(train=n_train, dev=n_dev, test=n_test)
    with blas.single_threaded():
      for split, n in sizes.items():
        writer.write_split(tmp, split, int(n), seed, pixels, d)
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
      json.dump(writer.make_meta(seed, sizes, pixels, d), f, indent=1, sort_keys=True)
    _publish(tmp, out, overwrite)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def dataset_name(*, seed: int, n_train: int, n_dev: int, n_test: int, pixels: bool,
                 **difficulty) -> str:
  """Cache subdirectory name: version, seed, sizes, pixels and a hash of non-default knobs."""
  d = dataclasses.asdict(Difficulty(**difficulty))
  changed = {k: v for k, v in d.items() if v != getattr(Difficulty, k)}
  name = f"synthetic-v{VERSION}-seed{seed}-{n_train}-{n_dev}-{n_test}" + ("-px" if pixels else "")
  if changed:
    digest = hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:10]
    name += f"-d{digest}"
  return name


def default_cache_dir() -> str:
  """``$XMR_DATA_DIR`` or ``~/.cache/xmr_jax``."""
  return cache_root()


def get_or_create(*, seed: int = 0, n_train: int = 10000, n_dev: int = 500, n_test: int = 1000,
                  pixels: bool = True, cache_dir: Optional[str] = None, **difficulty) -> str:
  """Path of the cached benchmark for these parameters, generating it only if absent.

  Safe under races: each process generates into its own temp dir; the first rename wins and
  the others discard their copy and use the winner's.
  """
  params = dict(seed=seed, n_train=n_train, n_dev=n_dev, n_test=n_test, pixels=pixels)
  path = os.path.join(cache_dir or default_cache_dir(), dataset_name(**params, **difficulty))
  if os.path.isfile(os.path.join(path, "meta.json")):
    return path
  try:
    return generate(path, **params, **difficulty)
  except FileExistsError:
    if os.path.isfile(os.path.join(path, "meta.json")):
      return path
    raise
