"""The torch.save reader: legacy files written byte by byte here (no PyTorch) and zip/legacy
files written by torch (tests/fixtures/make_torch_zip_fixtures.py) round-trip, and a pickle
naming anything but a state dict's parts (and, when asked, argparse.Namespace) is refused
before it can run."""
import builtins
import hashlib
import io
import json
import os
import pickle
import struct
import sys
import zipfile

import numpy as np
import pytest

from xmr_jax.backbones import torch_pickle as tp
from xmr_jax.common.errors import InputError

# --- a tiny assembler for protocol-2 pickle opcodes (Lib/pickletools.py names them) ---------


def _global(module: str, name: str) -> bytes:
  return b"c" + f"{module}\n{name}\n".encode()          # GLOBAL


def _str(s: str) -> bytes:
  raw = s.encode()
  return b"X" + struct.pack("<I", len(raw)) + raw       # BINUNICODE


def _int(i: int) -> bytes:
  return b"J" + struct.pack("<i", i)                    # BININT


def _tuple(*items: bytes) -> bytes:
  return b"(" + b"".join(items) + b"t"                  # MARK ... TUPLE


def _storage(stype: str, key: str, numel: int, view=None) -> bytes:
  """The persistent id torch writes for a storage, then BINPERSID."""
  meta = b"N" if view is None else _tuple(_str(view[0]), _int(view[1]), _int(view[2]))
  return _tuple(_str("storage"), _global("torch", stype), _str(key), _str("cpu"),
                _int(numel), meta) + b"Q"


def _tensor(storage: bytes, offset: int, size, stride) -> bytes:
  """``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
  hooks = _global("collections", "OrderedDict") + b")R"
  return (_global("torch._utils", "_rebuild_tensor_v2")
          + _tuple(storage, _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)),
                   b"\x89", hooks) + b"R")


def _state_dict(items) -> bytes:
  """An OrderedDict of (key, tensor bytes), with the ``_metadata`` attribute torch sets."""
  body = b"".join(_str(k) + v for k, v in items)
  build = b"}" + _str("_metadata") + b"}" + b"s" + b"b"   # BUILD {'_metadata': {}}
  return b"\x80\x02" + _global("collections", "OrderedDict") + b")R(" + body + b"u" + build + b"."


def _legacy_file(main: bytes, storages, little_endian: bool = True) -> bytes:
  """magic, protocol, sys_info, ``main``, key list, then per key: int64 count + raw bytes."""
  order = "<" if little_endian else ">"
  info = {"protocol_version": 1001, "little_endian": little_endian,
          "type_sizes": {"short": 2, "int": 4, "long": 4}}
  out = [pickle.dumps(tp.MAGIC_NUMBER, protocol=2), pickle.dumps(1001, protocol=2),
         pickle.dumps(info, protocol=2), main, pickle.dumps(sorted(storages), protocol=2)]
  for key in sorted(storages):
    arr = storages[key]
    out.append(struct.pack(order + "q", arr.size) + arr.astype(arr.dtype.newbyteorder(order))
               .tobytes())
  return b"".join(out)


def _write(tmp_path, data: bytes, name="w.pth"):
  path = tmp_path / name
  path.write_bytes(data)
  return str(path), hashlib.sha256(data).hexdigest()


A = np.arange(12, dtype=np.float32) * 1.5 - 4.0
B = np.array([7, -3, 2**40], dtype=np.int64)


def _sample_items():
  a, b = _storage("FloatStorage", "100", 12), _storage("LongStorage", "7", 3)
  return [("w", _tensor(a, 0, (3, 2), (1, 3))),      # non-contiguous: w[i, j] = A[i + 3 j]
          ("bias", _tensor(a, 5, (4,), (1,))),        # same storage at an offset
          ("n", _tensor(b, 2, (), ())),               # 0-d at an offset
          ("v", _tensor(_storage("FloatStorage", "100", 12, ("100/v", 8, 4)), 1, (2,), (2,)))]


@pytest.mark.parametrize("little_endian", [True, False])
def test_round_trip_with_stride_offset_and_view(tmp_path, little_endian):
  data = _legacy_file(_state_dict(_sample_items()), {"100": A, "7": B}, little_endian)
  path, sha = _write(tmp_path, data)
  sd = tp.load(path, sha.upper())
  assert list(sd) == ["w", "bias", "n", "v"]
  np.testing.assert_array_equal(sd["w"], A[[0, 3, 1, 4, 2, 5]].reshape(3, 2))
  np.testing.assert_array_equal(sd["bias"], A[5:9])
  assert sd["n"].shape == () and sd["n"] == 2**40 and sd["n"].dtype == np.int64
  np.testing.assert_array_equal(sd["v"], A[8:12][1::2])
  for arr in sd.values():
    assert arr.flags.c_contiguous and arr.flags.owndata and arr.dtype.isnative


def test_wrong_sha256_names_both_hashes(tmp_path):
  data = _legacy_file(_state_dict(_sample_items()), {"100": A, "7": B})
  path, sha = _write(tmp_path, data)
  with pytest.raises(tp.ChecksumError) as e:
    tp.load(path, "0" * 64)
  assert sha in str(e.value) and "0" * 64 in str(e.value) and path in str(e.value)
  with pytest.raises(tp.WeightsFileError, match="cannot read"):
    tp.load(str(tmp_path / "absent.pth"), sha)


def _touch_payload(target) -> bytes:
  """``os.system("touch <target>")`` as GLOBAL + REDUCE: what a malicious .pth would hold."""
  return b"\x80\x02" + _global("os", "system") + _tuple(_str(f"touch {target}")) + b"R."


class _Eval:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):  # pickle.dumps writes eval as a global, then REDUCE
    return (builtins.eval, (f"open({str(self.target)!r}, 'w').close()",))


@pytest.mark.parametrize("where", ["main", "header"])
def test_os_system_is_refused_and_not_run(tmp_path, where):
  target = tmp_path / "pwned"
  payload = _touch_payload(target)
  if where == "main":
    data = _legacy_file(payload, {})
  else:   # in place of the magic number
    data = payload + _legacy_file(_state_dict([]), {})[len(pickle.dumps(tp.MAGIC_NUMBER, 2)):]
  path, sha = _write(tmp_path, data)
  with pytest.raises(tp.RefusedPickleError, match=r"'os\.system'") as e:
    tp.load(path, sha)
  assert path in str(e.value) and isinstance(e.value, InputError)
  assert not target.exists()


# Protocol 2 spells the module the Python 2 way (GLOBAL '__builtin__ eval'); protocol 4 uses
# STACK_GLOBAL 'builtins' 'eval'. The message names what the file says.
@pytest.mark.parametrize("protocol,named", [(2, "__builtin__.eval"), (4, "builtins.eval")])
def test_eval_from_pickle_dumps_is_refused_and_not_run(tmp_path, protocol, named):
  target = tmp_path / "pwned"
  data = _legacy_file(pickle.dumps(_Eval(target), protocol=protocol), {})
  path, sha = _write(tmp_path, data)
  with pytest.raises(tp.RefusedPickleError, match=f"'{named}'"):
    tp.load(path, sha)
  assert not target.exists()


@pytest.mark.parametrize("module,name", [("torch._utils", "_rebuild_parameter"),
                                         ("torch.nn.modules.conv", "Conv2d"),
                                         ("collections", "defaultdict"),
                                         ("numpy", "ndarray")])
def test_other_globals_are_refused(tmp_path, module, name):
  main = b"\x80\x02" + _global(module, name) + b"."
  path, sha = _write(tmp_path, _legacy_file(main, {}))
  with pytest.raises(tp.RefusedPickleError, match=f"'{module}.{name}'"):
    tp.load(path, sha)


@pytest.mark.parametrize("items,storages,message", [
    ([("w", _tensor(_storage("FloatStorage", "1", 4), 2, (3,), (1,)))], {"1": A[:4]},
     "does not fit"),
    ([("w", _tensor(_storage("FloatStorage", "1", 4), 0, (4,), (1,)))], {"1": A[:3]},
     "3 elements stored, 4 declared"),
    ([("w", _tensor(_storage("FloatStorage", "1", 4), 0, (4,), (1,)))], {"1": A[:4], "2": A},
     "storage keys listed"),
    ([("w", _storage("FloatStorage", "1", 4))], {"1": A[:4]}, "bare _StorageRef"),
    ([("w", b"\x8f(" + _storage("FloatStorage", "1", 4) + b"\x90")], {"1": A[:4]},
     "a set holding"),                                      # EMPTY_SET, MARK, ADDITEMS
])
def test_malformed_streams_are_one_clear_error(tmp_path, items, storages, message):
  path, sha = _write(tmp_path, _legacy_file(_state_dict(items), storages))
  with pytest.raises(tp.WeightsFileError, match=message) as e:
    tp.load(path, sha)
  assert path in str(e.value)


def test_broken_zip_and_garbage_are_refused_with_a_reason(tmp_path):
  path, sha = _write(tmp_path, b"PK\x03\x04" + b"\0" * 40)
  with pytest.raises(tp.WeightsFileError, match=r"\(zip format\): BadZipFile"):
    tp.load(path, sha)
  path, sha = _write(tmp_path, pickle.dumps(12345, protocol=2), "g.pth")
  with pytest.raises(tp.WeightsFileError, match="not the legacy magic number"):
    tp.load(path, sha)


# --- files written by torch itself (tests/fixtures/make_torch_zip_fixtures.py) ---------------

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
OFFICIAL = {"zip": "official_zip.pth.tar", "legacy": "official_legacy.pth.tar"}


def _fixture(name: str) -> str:
  return os.path.join(FIXTURES, name)


def _expected():
  """{(part, name): array} as torch held them (bfloat16 as uint16 bits) and the meta dict."""
  with np.load(_fixture("official_expected.npz"), allow_pickle=False) as z:
    arrays = {tuple(k.split(".", 2)[1:]): z[k] for k in z.files if k != "meta_json"}
    return {(int(i), n): a for (i, n), a in arrays.items()}, json.loads(str(z["meta_json"]))


def assert_state_dicts_equal(parts):
  """``parts`` (3 dicts of arrays) hold exactly the fixture's tensors, dtypes included."""
  expected, _ = _expected()
  got = {(i, n): a for i, sd in enumerate(parts) for n, a in sd.items()}
  names = {(i, n[:-len(".bf16bits")] if n.endswith(".bf16bits") else n) for i, n in expected}
  assert set(got) == names
  for (i, n), want in expected.items():
    if n.endswith(".bf16bits"):
      arr = got[i, n[:-len(".bf16bits")]]
      assert arr.dtype == tp.STORAGE_DTYPES["BFloat16Storage"]
      np.testing.assert_array_equal(arr.view(np.uint16), want)
    else:
      arr = got[i, n]
      assert arr.dtype == want.dtype and arr.shape == want.shape, n
      np.testing.assert_array_equal(arr, want)
    assert arr.flags.c_contiguous and arr.flags.owndata


@pytest.mark.parametrize("fmt", sorted(OFFICIAL))
def test_torch_written_checkpoint_round_trips_without_torch(monkeypatch, fmt):
  monkeypatch.setitem(sys.modules, "torch", None)     # any `import torch` would now fail
  ckpt = tp.load(_fixture(OFFICIAL[fmt]), None, allow_namespace=True)
  _, meta = _expected()
  assert sorted(ckpt) == ["Eiters", "best_rsum", "epoch", "model", "opt"]
  assert (ckpt["epoch"], ckpt["best_rsum"], ckpt["Eiters"]) == (
      meta["epoch"], meta["best_rsum"], meta["Eiters"])
  assert isinstance(ckpt["opt"], tp.Namespace) and ckpt["opt"] == meta["opt"]
  assert ckpt["opt"].margin == 0.2 and not hasattr(ckpt["opt"], "__array__")
  assert isinstance(ckpt["model"], list) and len(ckpt["model"]) == 3
  assert_state_dicts_equal(ckpt["model"])
  txt = ckpt["model"][1]   # the transposed view and the offset view of embed.weight
  np.testing.assert_array_equal(txt["cap_rnn.bias_ih_l0"], txt["embed.weight"].ravel()[7:12])


def test_namespace_is_refused_unless_asked_for():
  with pytest.raises(tp.RefusedPickleError, match=r"'argparse\.Namespace'"):
    tp.load(_fixture(OFFICIAL["zip"]), None)
  with open(_fixture(OFFICIAL["zip"]), "rb") as f:
    data = f.read()
  with pytest.raises(tp.ChecksumError):
    tp.load(_fixture(OFFICIAL["zip"]), "0" * 64, allow_namespace=True)
  sha = hashlib.sha256(data).hexdigest()
  assert tp.load(_fixture(OFFICIAL["zip"]), sha, allow_namespace=True)["epoch"] == 3


@pytest.mark.parametrize("name,named", [("refused_counter.pth", "collections.Counter"),
                                        ("refused_custom.pth", "__main__.Opt")])
def test_torch_written_other_objects_are_refused(name, named):
  with pytest.raises(tp.RefusedPickleError, match=f"'{named}'") as e:
    tp.load(_fixture(name), None, allow_namespace=True)
  assert _fixture(name) in str(e.value) and isinstance(e.value, InputError)


def _rezip(tmp_path, edit, compress=zipfile.ZIP_STORED) -> str:
  """The zip fixture rewritten record by record: ``edit(name, bytes)`` -> bytes or None (drop)."""
  out = io.BytesIO()
  with zipfile.ZipFile(_fixture(OFFICIAL["zip"])) as src, zipfile.ZipFile(out, "w") as dst:
    for info in src.infolist():
      data = edit(info.filename, src.read(info))
      if data is not None:
        dst.writestr(info.filename, data, compress_type=compress)
  return _write(tmp_path, out.getvalue(), "edited.pth.tar")[0]


def _storage_itemsizes() -> dict:
  """Storage key -> itemsize in the zip fixture (its data.pkl read by the reader itself)."""
  with zipfile.ZipFile(_fixture(OFFICIAL["zip"])) as z:
    pkl = io.BytesIO(z.read("official_zip.pth/data.pkl"))
  unpickler = tp._SafeUnpickler(pkl, "data.pkl", allow_torch=True, allow_namespace=True)
  unpickler.load()
  return {key: ref.dtype.itemsize for key, ref in unpickler.storages.items()}


def test_big_endian_zip_is_read(tmp_path):
  sizes = _storage_itemsizes()
  assert sorted(set(sizes.values())) == [1, 2, 4, 8]

  def swap(name, data):   # what torch.save writes on a big-endian machine
    if name.endswith("/byteorder"):
      return b"big"
    if "/data/" not in name:
      return data
    n = sizes[name.rsplit("/", 1)[1]]
    return np.frombuffer(data, f"<u{n}").astype(f">u{n}").tobytes()

  ckpt = tp.load(_rezip(tmp_path, swap), None, allow_namespace=True)
  assert_state_dicts_equal(ckpt["model"])


@pytest.mark.parametrize("edit,compress,message", [
    (lambda n, d: None if n.endswith("/data/3") else d, zipfile.ZIP_STORED,
     "no record 'official_zip.pth/data/3'"),
    (lambda n, d: d[:-4] if n.endswith("/data/0") else d, zipfile.ZIP_STORED,
     "holds 44 bytes, the pickle declares 48"),
    (lambda n, d: d, zipfile.ZIP_DEFLATED, "compressed or encrypted"),
    (lambda n, d: b"middle" if n.endswith("/byteorder") else d, zipfile.ZIP_STORED,
     "byteorder record"),
    (lambda n, d: None if n.endswith("/data.pkl") else d, zipfile.ZIP_STORED,
     "one '<prefix>/data.pkl' record, found 0"),
])
def test_malformed_zip_is_one_clear_error(tmp_path, edit, compress, message):
  path = _rezip(tmp_path, edit, compress)
  with pytest.raises(tp.WeightsFileError, match=message) as e:
    tp.load(path, None, allow_namespace=True)
  assert path in str(e.value)
