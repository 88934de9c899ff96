"""convert.load_official_checkpoint: torch-written SGRAF-shaped checkpoints (zip and legacy
format, tests/fixtures/make_torch_zip_fixtures.py) are read without PyTorch; anything else is
one InputError naming the file."""
import io
import pickle
import sys
import zipfile

import numpy as np
import pytest

from test_torch_pickle import OFFICIAL, _fixture, assert_state_dicts_equal
from xmr_jax import convert
from xmr_jax.backbones import torch_pickle as tp
from xmr_jax.common.errors import InputError


@pytest.mark.parametrize("fmt", sorted(OFFICIAL))
def test_official_checkpoint_flat_names_without_torch(monkeypatch, fmt):
  monkeypatch.setitem(sys.modules, "torch", None)     # any `import torch` would now fail
  flat = convert.load_official_checkpoint(_fixture(OFFICIAL[fmt]))
  assert all(isinstance(v, np.ndarray) for v in flat.values())
  assert {"img_enc.fc.weight", "img_enc.fc.bias", "txt_enc.embed.weight",
          "sim_enc.bn.num_batches_tracked"} <= set(flat)
  parts = [{k[len(p):]: v for k, v in flat.items() if k.startswith(p)}
           for p in ("img_enc.", "txt_enc.", "sim_enc.")]
  assert sum(map(len, parts)) == len(flat)
  assert_state_dicts_equal(parts)


def _zip_pickle(tmp_path, obj) -> str:
  """A zip-format torch.save file holding ``obj`` (no tensors: no globals, no storages)."""
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w") as z:
    z.writestr("ckpt/data.pkl", pickle.dumps(obj, protocol=2))
    z.writestr("ckpt/byteorder", "little")
  path = tmp_path / "ckpt.pth.tar"
  path.write_bytes(out.getvalue())
  return str(path)


@pytest.mark.parametrize("obj,message", [
    ({"epoch": 3}, "expected checkpoint\\['model'\\] to be the list of three state dicts"),
    ({"model": [{}, {}]}, "list of three state dicts"),
    ({"model": [{}, [], {}]}, "entry txt_enc is a list, not a state dict"),
    ({"model": [{}, {}, {"w": 1.5}]}, "state dict sim_enc holds 'w': float"),
])
def test_wrong_structure_is_a_checkpoint_error(tmp_path, obj, message):
  path = _zip_pickle(tmp_path, obj)
  with pytest.raises(convert.CheckpointError, match=message) as e:
    convert.load_official_checkpoint(path)
  assert path in str(e.value) and isinstance(e.value, InputError)


def test_refused_objects_and_non_checkpoints_are_input_errors(tmp_path):
  with pytest.raises(tp.RefusedPickleError, match=r"'collections\.Counter'") as e:
    convert.load_official_checkpoint(_fixture("refused_counter.pth"))
  assert isinstance(e.value, InputError)
  text = tmp_path / "notes.pth.tar"
  text.write_text("not a checkpoint\n")
  with pytest.raises(tp.WeightsFileError, match="not a readable torch.save file"):
    convert.load_official_checkpoint(str(text))
  with pytest.raises(tp.WeightsFileError, match="cannot read"):
    convert.load_official_checkpoint(str(tmp_path / "absent.pth.tar"))
