"""CUB captions: TFDS builder from a manual dir, PCME's class splits, precomp export, errors.

The import-direction checks (cub <- tfds_cub <- cub_export) are in test_data_imports.py, which
runs without tensorflow_datasets.

The fixture is a miniature CUB in the real layout: 4 classes (ids 3, 17, 120, 200) x 3 tiny
JPEGs, 10 captions each, 3 train classes / 1 test class, one held-out image per train class.
"""
import os
import shutil
import sys
import unicodedata

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
from PIL import Image  # pylint: disable=g-import-not-at-top

from xmr_jax.data import cub  # pylint: disable=g-import-not-at-top
from xmr_jax.data import cub_export  # pylint: disable=g-import-not-at-top
from xmr_jax.data import precomp  # pylint: disable=g-import-not-at-top
from xmr_jax.data import tfds_cub  # pylint: disable=g-import-not-at-top
from xmr_jax.data.errors import DataError  # pylint: disable=g-import-not-at-top

CLASSES = {3: "003.Sooty_Albatross", 17: "017.Cardinal", 120: "120.Fox_Sparrow",
           200: "200.Common_Yellowthroat"}
ORDER = [17, 200, 3, 120]          # class of images.txt line i is ORDER[i % 4] (interleaved)
TRAIN, TEST = (3, 17, 120), (200,)
N_IMAGES, SIZE, R, F = 12, 8, 2, 3


def _write(path, text, mode="w"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
    f.write(text)


def make_fixture(root):
  """Writes the miniature CUB manual dir; returns the expected per-image records."""
  rng = np.random.default_rng(0)
  cub_dir = os.path.join(root, "CUB_200_2011")
  records = []
  for i in range(N_IMAGES):
    cid = ORDER[i % 4]
    name = f"{CLASSES[cid]}/{CLASSES[cid].split('.')[1]}_{i:04d}_{100 + i}.jpg"
    w, h = (24, 16) if i % 2 else (14, 20)     # landscape and portrait
    path = os.path.join(cub_dir, "images", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=95)
    caps = [f"image {i} caption {j}: a {'café' if j == 3 else 'brown'} bird" for j in range(10)]
    _write(os.path.join(root, "text_c10", name[:-4] + ".txt"), "\n".join(caps) + "\n")
    records.append(dict(image_id=i + 1, filename=name, label=cid - 1, captions=caps,
                        bbox=(float(i), 1.0, 5.0, 6.5), path=path))
  lines = lambda rows: "".join(" ".join(map(str, r)) + "\n" for r in rows)
  _write(os.path.join(cub_dir, "images.txt"),
         lines((r["image_id"], r["filename"]) for r in records))
  _write(os.path.join(cub_dir, "image_class_labels.txt"),    # another order: ids must be joined
         lines((r["image_id"], r["label"] + 1) for r in reversed(records)))
  _write(os.path.join(cub_dir, "classes.txt"), lines(sorted(CLASSES.items())))
  _write(os.path.join(cub_dir, "bounding_boxes.txt"),
         lines((r["image_id"],) + r["bbox"] for r in records))
  _write(os.path.join(root, "splits", "trainvalclasses.txt"),
         "".join(CLASSES[c] + "\n" for c in TRAIN))
  _write(os.path.join(root, "splits", "testclasses.txt"), "".join(CLASSES[c] + "\n" for c in TEST))
  held = [next(r["filename"] for r in records if r["label"] == c - 1) for c in TRAIN]
  _write(os.path.join(root, "splits", "seen_test_images.txt"), "\n".join(held) + "\n")
  feats = rng.normal(size=(N_IMAGES, R, F)).astype(np.float32)
  np.save(os.path.join(root, "features.npy"), feats)
  return records, set(held), feats


def expected_split(records, held, split):
  if split == "test":
    return [r for r in records if r["label"] + 1 in TEST]
  keep = (lambda r: r["filename"] in held) if split == "dev" else (
      lambda r: r["filename"] not in held)
  return [r for r in records if r["label"] + 1 in TRAIN and keep(r)]


def reference_pixels(path, size):
  """Independent reference: torchvision Resize(round(size*256/224)) + CenterCrop(size)."""
  im = Image.open(path).convert("RGB")
  w, h = im.size
  short = round(size * 256 / 224)
  new = (short, short * h // w) if w <= h else (short * w // h, short)
  im = im.resize(new, Image.BILINEAR)
  x0, y0 = round((new[0] - size) / 2), round((new[1] - size) / 2)
  return np.asarray(im)[y0:y0 + size, x0:x0 + size]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("cub")
  manual = str(root / "manual")
  records, held, feats = make_fixture(manual)
  data_dir = str(root / "tfds")
  px = tfds_cub.build(manual, data_dir, "pixels", image_size=SIZE)
  rg = tfds_cub.build(manual, data_dir, "regions", num_regions=R, feature_dim=F)
  out_px = cub_export.export_precomp(px, str(root / "precomp_px"))
  out_rg = cub_export.export_precomp(rg, str(root / "precomp_rg"))
  return dict(root=root, manual=manual, records=records, held=held, feats=feats, px=px, rg=rg,
              data_dir=data_dir, out_px=out_px, out_rg=out_rg)


def _source(b, builder, split):
  return tfds.data_source("cub_captions", split=split, data_dir=b["data_dir"],
                          builder_kwargs={"config": builder.builder_config}, download=False)


def test_built_without_tensorflow_in_array_record(built):
  assert built["px"].builder_config.name == "pixels8"
  assert built["rg"].builder_config.name == "regions2x3"
  assert any(".array_record" in f for f in os.listdir(built["px"].data_dir))
  assert "tensorflow" not in sys.modules


def test_splits_follow_pcme_classes(built):
  ids = {}
  for split in cub.SPLITS:
    src = _source(built, built["px"], split)
    ids[split] = {int(src[i]["image_id"]) for i in range(len(src))}
    labels = {int(src[i]["label"]) for i in range(len(src))}
    want = {c - 1 for c in (TEST if split == "test" else TRAIN)}
    assert labels == want, split          # no test class in train/dev, every class present
  assert (len(ids["train"]), len(ids["dev"]), len(ids["test"])) == (6, 3, 3)
  assert not ids["train"] & ids["dev"] and not ids["train"] & ids["test"]
  held_ids = {r["image_id"] for r in built["records"] if r["filename"] in built["held"]}
  assert ids["dev"] == held_ids           # seen_test_images.txt -> dev, never train


@pytest.mark.parametrize("split", cub.SPLITS)
def test_pixels_read_back_equals_fixture(built, split):
  src = _source(built, built["px"], split)
  want = expected_split(built["records"], built["held"], split)
  assert len(src) == len(want)
  for k, r in enumerate(want):                 # images.txt order kept (shuffling disabled)
    ex = src[k]
    assert int(ex["image_id"]) == r["image_id"]
    assert ex["filename"].decode() == r["filename"]
    assert ex["class_name"].decode() == CLASSES[r["label"] + 1]
    assert int(ex["label"]) == r["label"]
    assert [c.decode("utf-8") for c in ex["captions"]] == r["captions"]
    np.testing.assert_array_equal(ex["bbox"], np.asarray(r["bbox"], np.float32))
    assert ex["pixels"].dtype == np.uint8 and ex["pixels"].shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(ex["pixels"], reference_pixels(r["path"], SIZE))


def test_center_crop_keeps_the_middle(tmp_path):
  # 32 x 16 landscape: red | green (middle half) | blue. A center crop sees only green.
  im = np.zeros((16, 32, 3), np.uint8)
  im[:, :8, 0] = im[:, 8:24, 1] = im[:, 24:, 2] = 255
  path = str(tmp_path / "x.png")
  Image.fromarray(im).save(path)
  out = cub.load_pixels(path, 8).astype(int)
  assert out.shape == (8, 8, 3)
  assert (out[..., 1] > 200).all() and (out[..., 0] < 40).all() and (out[..., 2] < 40).all()
  # Portrait 16 x 32: the crop is the vertical middle.
  out = cub.load_pixels(_save(tmp_path / "y.png", im.transpose(1, 0, 2)), 8).astype(int)
  assert (out[..., 1] > 200).all() and (out[..., 0] < 40).all()


def _save(path, array):
  Image.fromarray(np.ascontiguousarray(array)).save(str(path))
  return str(path)


def test_regions_read_back_rows_of_features_npy(built):
  for split in cub.SPLITS:
    src = _source(built, built["rg"], split)
    want = expected_split(built["records"], built["held"], split)
    for k, r in enumerate(want):
      ex = src[k]
      assert "pixels" not in ex and int(ex["image_id"]) == r["image_id"]
      np.testing.assert_array_equal(ex["regions"], built["feats"][r["image_id"] - 1])


def test_export_pixels_loads_as_precomp(built):
  for split in cub.SPLITS:
    s = precomp.load_split(built["out_px"], split, captions_per_image=10)
    want = expected_split(built["records"], built["held"], split)
    assert s.k == 10 and s.num_images == len(want)
    assert s.captions == [c for r in want for c in r["captions"]]   # caption c -> image c // 10
    assert s.labels.shape == (len(want), cub.NUM_CLASSES) and s.labels.dtype == np.uint8
    np.testing.assert_array_equal(s.labels.sum(1), 1)
    np.testing.assert_array_equal(s.labels.argmax(1), [r["label"] for r in want])
    pixels = np.stack([reference_pixels(r["path"], SIZE) for r in want])
    np.testing.assert_array_equal(s.pixels, pixels)
    # Colour-grid stand-in regions: block (0, 0) of a 4 x 4 grid of 8 x 8 = mean of 2 x 2.
    assert s.images.shape == (len(want), 16, 3)
    np.testing.assert_allclose(s.images[:, 0], pixels[:, :2, :2].mean((1, 2)) / 255, atol=1e-6)
    np.testing.assert_allclose(s.images[:, 15], pixels[:, 6:, 6:].mean((1, 2)) / 255, atol=1e-6)
  assert not [f for f in os.listdir(built["out_px"]) if f.startswith(".export-")]


def test_export_regions_and_from_data_dir(built, tmp_path):
  s = precomp.load_split(built["out_rg"], "test", captions_per_image=10)
  want = expected_split(built["records"], built["held"], "test")
  np.testing.assert_array_equal(s.images, built["feats"][[r["image_id"] - 1 for r in want]])
  assert s.pixels is None
  # From a TFDS data_dir root plus the config name: same files as from the builder.
  out = cub_export.export_precomp(built["data_dir"], str(tmp_path / "again"), "regions2x3",
                           splits=("test",))
  t = precomp.load_split(out, "test", captions_per_image=10)
  np.testing.assert_array_equal(t.images, s.images)
  assert t.captions == s.captions


def test_exported_captions_are_normalised():
  nfd = unicodedata.normalize("NFD", "\ufeffA bird on a café sign\r")
  caps = [nfd.encode("utf-8")] + [b"a bird"] * (cub.CAPTIONS_PER_IMAGE - 1)
  out = cub_export._decode_captions({"captions": caps}, "split 'test' example 3")
  assert out[0] == unicodedata.normalize("NFC", "A bird on a café sign")
  caps[4] = "\u200b".encode("utf-8")
  with pytest.raises(DataError, match=r"split 'test' example 3: caption 4 is empty"):
    cub_export._decode_captions({"captions": caps}, "split 'test' example 3")


def test_export_of_unbuilt_dataset_names_the_path(tmp_path):
  with pytest.raises(DataError, match="dataset_info.json"):
    cub_export.export_precomp(str(tmp_path), str(tmp_path / "out"), "pixels")


@pytest.fixture()
def manual_copy(built, tmp_path):
  path = str(tmp_path / "manual")
  shutil.copytree(built["manual"], path)
  return path


def test_image_with_nine_captions_is_a_clear_error(built, manual_copy, tmp_path):
  bad = os.path.join(manual_copy, "text_c10", built["records"][5]["filename"][:-4] + ".txt")
  _write(bad, "\n".join(built["records"][5]["captions"][:9]) + "\n")
  with pytest.raises(DataError, match="has 9 captions") as e:
    tfds_cub.build(manual_copy, str(tmp_path / "tfds"), "pixels", image_size=SIZE)
  assert bad in str(e.value) and "line 10" in str(e.value)
  assert not os.path.exists(tmp_path / "tfds" / "cub_captions" / "pixels8" / "1.0.0")


def test_non_utf8_caption_names_the_line(built, manual_copy):
  bad = os.path.join(manual_copy, "text_c10", built["records"][0]["filename"][:-4] + ".txt")
  _write(bad, "ok one\nok two\ncaf\xe9 latin-1\n".encode("latin-1"), "wb")
  with pytest.raises(DataError, match=r"line 3 is not valid UTF-8") as e:
    cub.read_index(manual_copy)
  assert bad in str(e.value)


def test_overlapping_class_splits_are_rejected(manual_copy):
  _write(os.path.join(manual_copy, "splits", "testclasses.txt"), CLASSES[200] + "\n" + CLASSES[3])
  with pytest.raises(DataError, match=r"classes \[3\] are also in .*trainvalclasses.txt"):
    cub.read_index(manual_copy)


def test_unknown_class_and_bad_features_shape(manual_copy, tmp_path):
  np.save(os.path.join(manual_copy, "features.npy"), np.zeros((N_IMAGES, R, F + 1), np.float32))
  with pytest.raises(DataError, match=r"features.npy: expected float features of shape"):
    tfds_cub.build(manual_copy, str(tmp_path / "tfds"), "regions", num_regions=R, feature_dim=F)
  _write(os.path.join(manual_copy, "splits", "trainvalclasses.txt"), "999.Dodo\n")
  with pytest.raises(DataError, match=r"trainvalclasses.txt: line 1: class '999.Dodo'"):
    cub.read_index(manual_copy)


def test_trainer_reads_export_as_precomp(built):
  # What configs/pcme.py:data=cub should set: data.name=precomp, dir=<export>, k=10.
  from xmr_jax.config_utils import base_config  # pylint: disable=g-import-not-at-top
  from xmr_jax.data import datasets  # pylint: disable=g-import-not-at-top
  c = base_config("pcme")
  c.data.name, c.data.dir, c.data.captions_per_image = "precomp", built["out_px"], 10
  c.data.tokenizer = "word"
  ds = datasets.open_dataset(c.data, needs={"pixels"})   # what model.image_input=pixels needs
  batch = ds.sample_batch(4)
  assert ds.k == 10 and batch["pixels"].shape == (4, SIZE, SIZE, 3)
  ev = ds.eval_data("test", 4)
  assert ev.k == 10 and ev.img_labels.shape == (3, cub.NUM_CLASSES) and len(ev.captions) == 30


def test_cli_reuses_the_build_and_exports(built, tmp_path):
  out = cub_export.main(["--manual-dir", built["manual"], "--data-dir", built["data_dir"],
                  "--out", str(tmp_path / "cli"), "--image-size", str(SIZE)])
  a = precomp.load_split(out, "dev", captions_per_image=10)
  b = precomp.load_split(built["out_px"], "dev", captions_per_image=10)
  np.testing.assert_array_equal(a.pixels, b.pixels)
  assert a.captions == b.captions
