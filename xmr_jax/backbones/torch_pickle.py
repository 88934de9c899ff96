"""A reader for PyTorch's ``torch.save`` files (legacy and zip format) that runs no pickled code.

Pretrained weights and checkpoints are often shipped as ``.pth`` / ``.pth.tar`` files, which
are Python pickles: loading one with :mod:`pickle` (or ``torch.load(..., weights_only=False)``)
may call any importable function the file names. This reader needs neither PyTorch nor trust
in the file: its unpickler resolves only the few names a state dict is made of and refuses
everything else before it is called.

Two layouts are read (``torch/serialization.py``):

* **zip** (``_save`` / ``_load``; the default of ``torch.save`` since PyTorch 1.6): a zip
  archive whose records all sit in one folder ``<prefix>/``: ``data.pkl`` (the saved object,
  pickle protocol 2), ``data/<key>`` (each storage's raw bytes, ``numel * itemsize`` of them),
  ``byteorder`` (``little`` or ``big``; older PyTorch versions wrote none, then read as
  little), ``version`` and others (ignored). A storage is the persistent id
  ``("storage", torch.<T>Storage, key, location, numel)``. Records must be stored
  uncompressed (as torch writes them), which bounds what a file can make us allocate.
* **legacy** (``_legacy_save`` / ``_legacy_load``; ``torch.save(...,
  _use_new_zipfile_serialization=False)`` and every PyTorch before 1.6): a sequence of
  pickles followed by raw storage bytes:

  1. ``pickle(MAGIC_NUMBER)``, ``pickle(PROTOCOL_VERSION)``, ``pickle(sys_info)`` where
     ``sys_info = {"protocol_version": 1001, "little_endian": bool, "type_sizes": {...}}``;
  2. the main pickle: the saved object, each storage the persistent id
     ``("storage", torch.<T>Storage, key, location, numel, view_metadata)``;
  3. ``pickle(sorted list of storage keys)``;
  4. per key, in that order: the element count as an int64, then ``count * itemsize`` bytes
     of data (both in the byte order ``sys_info["little_endian"]`` names).

In both, each tensor is ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size,
stride, requires_grad, backward_hooks)``.

Allowed names (anything else is a :class:`RefusedPickleError` naming ``module.name``):
``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` (mapped to a function that
only records its arguments) and the ``torch.<T>Storage`` classes of :data:`STORAGE_DTYPES`
(mapped to dtypes); with ``allow_namespace=True`` also ``argparse.Namespace`` (what training
scripts save as ``opt``), read as a :class:`Namespace`: a dict of its attributes, built by
pickle without importing argparse or running any of its code. Plain dicts, lists, tuples,
strings, numbers, booleans and None need no names. Tensors become C-contiguous numpy arrays
that own their memory.
"""
import collections
import hashlib
import io
import math
import sys
import pickle
import struct
import zipfile
from typing import Any, Dict, Optional, Tuple

import ml_dtypes
import numpy as np

from xmr_jax.common.errors import InputError

# torch/serialization.py: MAGIC_NUMBER and PROTOCOL_VERSION of the legacy format.
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# The first bytes of a zip archive (a local file header): the zip-format torch.save files.
ZIP_MAGIC = b"PK\x03\x04"

# torch.<T>Storage -> element dtype (torch/storage.py: the typed storage classes).
STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64), "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
}


class WeightsFileError(InputError):
  """A weights file is missing, has the wrong sha256, or is not a readable torch.save file."""


class ChecksumError(WeightsFileError):
  """The file's sha256 is not the expected one; the message names both hashes."""


class RefusedPickleError(WeightsFileError):
  """The pickle names a global outside the allowed set; the message names ``module.name``."""


class _Malformed(Exception):
  """Internal: the file breaks the torch.save layout (turned into a WeightsFileError)."""


class _Inert:
  """Base of the reader's placeholders: pickle's BUILD opcode may not change them."""
  __slots__ = ()

  def __setstate__(self, state):
    raise _Malformed(f"BUILD applied to a {type(self).__name__}")


class _StorageType(_Inert):
  """What ``torch.<T>Storage`` resolves to: its name and element dtype (not callable)."""
  __slots__ = ("name", "dtype")

  def __init__(self, name: str, dtype: np.dtype):
    object.__setattr__(self, "name", name)
    object.__setattr__(self, "dtype", dtype)


class _StorageRef(_Inert):
  """A persistent-id storage: root key, dtype, element count, optional (offset, size) view."""
  __slots__ = ("key", "dtype", "numel", "view")

  def __init__(self, key: str, dtype: np.dtype, numel: int, view: Optional[Tuple[int, int]]):
    for name, value in zip(self.__slots__, (key, dtype, numel, view)):
      object.__setattr__(self, name, value)


class _TensorRef(_Inert):
  """A tensor to materialise once the storages are read: storage, offset, size, stride."""
  __slots__ = ("storage", "offset", "size", "stride")

  def __init__(self, storage, offset, size, stride):
    for name, value in zip(self.__slots__, (storage, offset, size, stride)):
      object.__setattr__(self, name, value)


class Namespace(dict):
  """What a pickled ``argparse.Namespace`` is read as: a dict of its attributes.

  Attribute access works too (``ns.margin`` is ``ns["margin"]``). Pickle builds it with
  NEWOBJ + BUILD (``__setstate__`` with the namespace's ``__dict__``), so nothing of argparse
  is imported or run; values are whatever the (restricted) pickle holds.
  """
  __slots__ = ()   # no instance __dict__: the pickle can set items only

  def __getattr__(self, name):
    if name.startswith("__"):   # special names are never attributes of the saved namespace
      raise AttributeError(name)
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None

  def __setstate__(self, state):
    if self or not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
      raise _Malformed("argparse.Namespace state is not one dict of attribute names")
    self.update(state)


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False,
                    backward_hooks=None, metadata=None):
  """Stands in for ``torch._utils._rebuild_tensor_v2``: checks the types, records the args."""
  del requires_grad, backward_hooks, metadata  # eval-only arrays: gradients/hooks do not apply
  ok = (isinstance(storage, _StorageRef) and _is_int(storage_offset)
        and isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
        and all(_is_int(v) for v in size + stride))
  if not ok:
    raise _Malformed(f"_rebuild_tensor_v2 got unexpected arguments "
                     f"({type(storage).__name__}, {storage_offset!r}, {size!r}, {stride!r})")
  return _TensorRef(storage, storage_offset, size, stride)


class _SafeUnpickler(pickle.Unpickler):
  """Resolves only the names of a tensor state dict; ``allow_torch=False`` resolves none.

  ``allow_namespace`` (with ``allow_torch``) also maps ``argparse.Namespace`` to
  :class:`Namespace`.
  """

  def __init__(self, file, where: str, allow_torch: bool, allow_namespace: bool = False):
    super().__init__(file)
    self._where, self._allow_torch = where, allow_torch
    self._allow_namespace = allow_torch and allow_namespace
    self.storages: Dict[str, _StorageRef] = {}

  def find_class(self, module: str, name: str):
    """The allowed stand-in for ``module.name``; RefusedPickleError for any other name."""
    if self._allow_torch:
      if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
      if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return _rebuild_tensor
      if module == "torch" and name in STORAGE_DTYPES:
        return _StorageType(name, STORAGE_DTYPES[name])
      if self._allow_namespace and (module, name) == ("argparse", "Namespace"):
        return Namespace
    accepted = ("tensors, ordered dicts, argparse namespaces and plain values"
                if self._allow_namespace else "tensors and ordered dicts (a state dict)")
    raise RefusedPickleError(
        f"{self._where}: refused to load the pickled global '{module}.{name}': this reader "
        f"only accepts {accepted} and never imports other names; the file may be unsafe "
        f"or not a torch.save file of that kind")

  def persistent_load(self, pid):
    """A ``_StorageRef`` for a ``("storage", type, key, location, numel[, view])`` id."""
    if not self._allow_torch:
      raise _Malformed(f"persistent id {pid!r} outside the main pickle")
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
      raise _Malformed(f"unsupported persistent id {pid!r} (only 'storage' ids are read)")
    _, stype, key, _location, numel = pid[:5]
    view = pid[5] if len(pid) == 6 else None
    if not (isinstance(stype, _StorageType) and isinstance(key, str) and _is_int(numel)
            and numel >= 0):
      raise _Malformed(f"bad storage id {pid!r}")
    root = self.storages.setdefault(key, _StorageRef(key, stype.dtype, numel, None))
    if root.dtype != stype.dtype or root.numel != numel:
      raise _Malformed(f"storage {key!r} is declared twice with different dtype or size")
    if view is None:
      return root
    if not (isinstance(view, tuple) and len(view) == 3 and _is_int(view[1])
            and _is_int(view[2]) and 0 <= view[1] and 0 <= view[2] <= numel - view[1]):
      raise _Malformed(f"bad storage view {view!r} of storage {key!r} ({numel} elements)")
    return _StorageRef(key, stype.dtype, view[2], (view[1], view[2]))


def _read_header(stream: io.BytesIO, where: str) -> str:
  """Reads the three leading pickles; returns the data byte order ("<" or ">")."""
  magic = _SafeUnpickler(stream, where, allow_torch=False).load()
  if magic != MAGIC_NUMBER:
    raise _Malformed(f"first pickle is {magic!r}, not the legacy magic number")
  version = _SafeUnpickler(stream, where, allow_torch=False).load()
  if version != PROTOCOL_VERSION:
    raise _Malformed(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
  info = _SafeUnpickler(stream, where, allow_torch=False).load()
  if not (isinstance(info, dict) and isinstance(info.get("little_endian"), bool)):
    raise _Malformed(f"sys_info {info!r} lacks a boolean 'little_endian'")
  return "<" if info["little_endian"] else ">"


def _storage_array(data: bytes, pos: int, count: int, dtype: np.dtype, order: str):
  """``count`` elements at ``data[pos:]`` in byte order ``order``, as native ``dtype``."""
  if order == ("<" if sys.byteorder == "little" else ">") or dtype.itemsize == 1:
    # Read-only view into ``data``; tensors copy out of it in _materialise.
    return np.frombuffer(data, dtype, count, pos)
  # Swap through unsigned ints: numpy cannot give ml_dtypes' bfloat16 a byte order.
  raw = np.frombuffer(data, np.dtype(f"{order}u{dtype.itemsize}"), count, pos)
  return raw.astype(f"=u{dtype.itemsize}").view(dtype)


def _read_storages(data: bytes, pos: int, keys, storages: Dict[str, _StorageRef],
                   order: str) -> Dict[str, np.ndarray]:
  """Per key: int64 element count + raw bytes, from ``data[pos:]``; returns flat arrays."""
  if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
    raise _Malformed(f"storage key list is {type(keys).__name__}, not a list of str")
  if sorted(keys) != sorted(storages) or len(set(keys)) != len(keys):
    raise _Malformed(f"storage keys listed ({len(keys)}) differ from the ones the tensors "
                     f"use ({len(storages)})")
  flat = {}
  for key in keys:
    root = storages[key]
    if pos + 8 > len(data):
      raise _Malformed(f"file ends before storage {key!r}")
    (count,) = struct.unpack_from(order + "q", data, pos)
    nbytes = count * root.dtype.itemsize
    if count != root.numel or pos + 8 + nbytes > len(data):
      raise _Malformed(f"storage {key!r}: {count} elements stored, {root.numel} declared, "
                       f"{len(data) - pos - 8} bytes left")
    flat[key] = _storage_array(data, pos + 8, count, root.dtype, order)
    pos += 8 + nbytes
  if pos != len(data):
    raise _Malformed(f"{len(data) - pos} unexpected bytes after the last storage")
  return flat


def _materialise(ref: _TensorRef, flat: Dict[str, np.ndarray]) -> np.ndarray:
  """The tensor as an owned, C-contiguous, native-order array; bounds checked first."""
  base = flat[ref.storage.key]
  if ref.storage.view is not None:
    base = base[ref.storage.view[0]:ref.storage.view[0] + ref.storage.view[1]]
  size, stride, offset = ref.size, ref.stride, ref.offset
  numel = math.prod(size)
  if min(size + stride + (offset,), default=0) < 0:
    raise _Malformed(f"negative size/stride/offset {size}/{stride}/{offset}")
  if numel == 0:
    return np.zeros(size, base.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  # A tensor no bigger than its storage bounds the memory a file can make us allocate.
  if last >= base.size or numel > base.size:
    raise _Malformed(f"tensor size {size} stride {stride} offset {offset} does not fit its "
                     f"storage of {base.size} elements")
  view = np.lib.stride_tricks.as_strided(
      base[offset:], shape=size, strides=[s * base.itemsize for s in stride], writeable=False)
  return np.array(view, order="C", copy=True)


def _resolve(obj, flat: Dict[str, np.ndarray]):
  """Replaces every tensor placeholder in dicts/lists/tuples by its array."""
  if isinstance(obj, _TensorRef):
    return _materialise(obj, flat)
  if isinstance(obj, dict):
    # Keys go through _resolve too: a placeholder key is refused (a tensor key is unhashable).
    return type(obj)((_resolve(k, flat), _resolve(v, flat)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v, flat) for v in obj)
  if isinstance(obj, (set, frozenset)) and any(isinstance(v, _Inert) for v in obj):
    raise _Malformed("a set holding a tensor or storage")
  if isinstance(obj, _Inert):
    raise _Malformed(f"a bare {type(obj).__name__} outside a tensor")
  return obj


def _zip_record(archive: zipfile.ZipFile, infos, name: str, nbytes: Optional[int]) -> bytes:
  """The bytes of record ``name``: stored (not compressed, not encrypted), ``nbytes`` long."""
  info = infos.get(name)
  if info is None:
    raise _Malformed(f"the archive has no record {name!r}")
  if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
    raise _Malformed(f"record {name!r} is compressed or encrypted (torch.save stores records "
                     f"uncompressed)")
  if nbytes is not None and info.file_size != nbytes:
    raise _Malformed(f"record {name!r} holds {info.file_size} bytes, the pickle declares "
                     f"{nbytes}")
  return archive.read(info)


def _zip_layout(archive: zipfile.ZipFile, infos) -> Tuple[str, str]:
  """The records' folder (``"<prefix>/"``) and the data byte order ("<" or ">")."""
  prefixes = [n[:-len("data.pkl")] for n in infos
              if n.endswith("/data.pkl") and n.count("/") == 1]
  if len(prefixes) != 1:
    raise _Malformed(f"expected one '<prefix>/data.pkl' record, found {len(prefixes)}")
  prefix = prefixes[0]
  if prefix + "byteorder" not in infos:
    return prefix, "<"   # older PyTorch wrote none (native order: little on x86 and ARM)
  mark = _zip_record(archive, infos, prefix + "byteorder", None)
  if mark not in (b"little", b"big"):
    raise _Malformed(f"byteorder record is {mark[:20]!r}, not b'little' or b'big'")
  return prefix, "<" if mark == b"little" else ">"


def _parse_zip(data: bytes, where: str, allow_namespace: bool) -> Any:
  """The object in a zip-format torch.save file (layout in the module docstring)."""
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    infos = {info.filename: info for info in archive.infolist()}
    prefix, order = _zip_layout(archive, infos)
    pkl = io.BytesIO(_zip_record(archive, infos, prefix + "data.pkl", None))
    main = _SafeUnpickler(pkl, where, allow_torch=True, allow_namespace=allow_namespace)
    obj = main.load()
    flat = {}
    for key, ref in main.storages.items():
      raw = _zip_record(archive, infos, f"{prefix}data/{key}", ref.numel * ref.dtype.itemsize)
      flat[key] = _storage_array(raw, 0, ref.numel, ref.dtype, order)
  return _resolve(obj, flat)


def _parse_legacy(data: bytes, where: str, allow_namespace: bool) -> Any:
  """The object in a legacy torch.save stream (layout in the module docstring)."""
  stream = io.BytesIO(data)
  order = _read_header(stream, where)
  main = _SafeUnpickler(stream, where, allow_torch=True, allow_namespace=allow_namespace)
  obj = main.load()
  keys = _SafeUnpickler(stream, where, allow_torch=False).load()
  flat = _read_storages(data, stream.tell(), keys, main.storages, order)
  return _resolve(obj, flat)


def parse(data: bytes, where: str = "<bytes>", *, allow_namespace: bool = False) -> Any:
  """The object saved in ``torch.save`` bytes (zip or legacy format), tensors as numpy arrays.

  Args:
    data: the whole file's bytes (layouts in the module docstring); a zip archive is told by
      its first four bytes (:data:`ZIP_MAGIC`).
    where: the file name, for error messages.
    allow_namespace: also accept ``argparse.Namespace`` objects (checkpoints' ``opt``), read
      as :class:`Namespace`; False (weights files) refuses them.
  Returns: the saved object (typically an ``OrderedDict[str, np.ndarray]``; dicts, lists,
    tuples and plain values as saved); each array is C-contiguous, owns its memory and has the
    storage's dtype (float32 for FloatStorage, ``ml_dtypes.bfloat16`` for BFloat16Storage).
  Raises:
    RefusedPickleError: a pickle names a global outside the allowed set (nothing is called).
    WeightsFileError: anything else that is not a readable torch.save file.
  """
  fmt = "zip" if data[:4] == ZIP_MAGIC else "legacy"
  try:
    if fmt == "zip":
      return _parse_zip(data, where, allow_namespace)
    return _parse_legacy(data, where, allow_namespace)
  except InputError:
    raise
  except (_Malformed, pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError,
          IndexError, AttributeError, struct.error, RecursionError, MemoryError,
          zipfile.BadZipFile, zipfile.LargeZipFile) as e:
    raise WeightsFileError(f"{where}: not a readable torch.save file ({fmt} format): "
                           f"{type(e).__name__}: {e}") from None


def load(path: str, sha256: Optional[str], *, allow_namespace: bool = False) -> Any:
  """Reads the ``torch.save`` file (zip or legacy format) at ``path``.

  Args:
    path: the ``.pth`` / ``.pth.tar`` file.
    sha256: its expected hex sha256 (case-insensitive), checked on the bytes then parsed, so
      the file cannot change between check and read; None (explicitly) for a user's file
      with no known hash: the restricted unpickler is then the only guard.
    allow_namespace: see :func:`parse`.
  Returns: see :func:`parse`.
  Raises:
    WeightsFileError: missing/unreadable file or bad content; ChecksumError (a subclass) when
      the hash differs, naming expected and found; RefusedPickleError for a forbidden global.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise WeightsFileError(f"cannot read weights file {path}: {e.strerror}") from None
  if sha256 is not None:
    found = hashlib.sha256(data).hexdigest()
    if found != sha256.lower():
      raise ChecksumError(f"{path}: sha256 is {found}, expected {sha256.lower()}; the file is "
                          f"corrupt or a different version (reinstall the package that ships "
                          f"it)")
  return parse(data, path, allow_namespace=allow_namespace)
