"""Tests of the synthetic benchmark generator (tiny sizes; one generation per seed)."""
import hashlib
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from xmr_jax.data import synthetic
from xmr_jax.data.synthetic import writer

SIZES = dict(n_train=48, n_dev=8, n_test=12)
C = len(synthetic.CATEGORIES)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("synth")
  a = synthetic.generate(str(root / "a"), seed=0, pixels=True, **SIZES)
  b = synthetic.generate(str(root / "b"), seed=0, pixels=True, **SIZES)
  c = synthetic.generate(str(root / "c"), seed=1, pixels=True, **SIZES)
  return a, b, c


def _npy(path, split, name):
  return np.load(os.path.join(path, f"{split}_{name}.npy"), allow_pickle=False)


def _lines(path, split, name):
  with open(os.path.join(path, f"{split}_{name}"), encoding="utf-8") as f:
    return f.read().splitlines()


def test_same_seed_is_byte_identical_other_seed_differs(dirs):
  a, b, c = dirs
  names = sorted(os.listdir(a))
  assert names == sorted(os.listdir(b)) == sorted(os.listdir(c))
  for name in names:
    with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
      assert fa.read() == fb.read(), name
  for name in ("train_ims.npy", "train_caps.txt", "test_pixels.npy", "dev_boxes.npy"):
    with open(os.path.join(a, name), "rb") as fa, open(os.path.join(c, name), "rb") as fc:
      assert fa.read() != fc.read(), name


@pytest.mark.parametrize("split", synthetic.SPLITS)
def test_shapes_dtypes_counts(dirs, split):
  path = dirs[0]
  n = SIZES[f"n_{split}"]
  expect = {"ims": ((n, 36, 128), np.float32), "labels": ((n, C), np.uint8),
            "cap_labels": ((5 * n, C), np.uint8), "boxes": ((n, 36, 4), np.float32),
            "pixels": ((n, 64, 64, 3), np.uint8), "objects": ((n, 5, 3), np.int16),
            "object_boxes": ((n, 5, 4), np.float32), "region_objects": ((n, 36), np.int8),
            "groups": ((n,), np.int32)}
  for name, (shape, dtype) in expect.items():
    arr = _npy(path, split, name)
    assert arr.shape == shape and arr.dtype == dtype, name
  assert np.all(np.isfinite(_npy(path, split, "ims")))
  caps, deps = _lines(path, split, "caps.txt"), _lines(path, split, "deps.jsonl")
  assert len(caps) == len(deps) == 5 * n
  assert all(c.strip() for c in caps)
  # Everything in the triples is a [relation, head, dependent] list of strings.
  for line in deps:
    for t in json.loads(line):
      assert len(t) == 3 and all(isinstance(x, str) for x in t)
      assert t[0] in synthetic.DEP_RELATIONS


def test_meta(dirs):
  with open(os.path.join(dirs[0], "meta.json"), encoding="utf-8") as f:
    meta = json.load(f)
  assert meta["version"] == synthetic.VERSION and meta["seed"] == 0
  assert meta["sizes"] == dict(train=48, dev=8, test=12)
  assert meta["feature_dim"] == 128 and meta["num_regions"] == 36
  assert len(meta["categories"]) >= 20 and len(meta["colours"]) >= 8
  assert len(meta["sizes_vocab"]) >= 3 and meta["num_templates"] >= 8


def _object_table(objects, i):
  """{category word: (colour word, size word)} of image i."""
  return {synthetic.CATEGORIES[c]: (synthetic.COLOURS[k], synthetic.SIZES[s])
          for c, k, s in objects[i] if c >= 0}


def _relation(box_a, box_b):
  """Loop reference of the spatial relation of object a to object b."""
  ca = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
  cb = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
  dx, dy = cb[0] - ca[0], cb[1] - ca[1]
  if max(abs(dx), abs(dy)) < 0.1:
    return "near"
  if abs(dx) >= abs(dy):
    return "left_of" if dx > 0 else "right_of"
  return "above" if dy > 0 else "below"


@pytest.mark.parametrize("split", ["train", "test"])
def test_captions_match_their_scene(dirs, split):
  path = dirs[0]
  objects, oboxes = _npy(path, split, "objects"), _npy(path, split, "object_boxes")
  labels, cap_labels = _npy(path, split, "labels"), _npy(path, split, "cap_labels")
  caps, deps = _lines(path, split, "caps.txt"), _lines(path, split, "deps.jsonl")
  cats = set(synthetic.CATEGORIES)
  for k, (cap, line) in enumerate(zip(caps, deps)):
    i = k // 5
    table = _object_table(objects, i)
    slot = {synthetic.CATEGORIES[c]: j for j, c in enumerate(objects[i, :, 0]) if c >= 0}
    words = set(cap.split())
    named = words & cats
    assert named and named <= set(table), (cap, table)
    for rel, head, dep in json.loads(line):
      assert head in words and dep in words, (cap, rel, head, dep)
      if rel == "amod":
        assert dep in table[head], (cap, head, dep)
      if rel[len("prep_"):] in synthetic.RELATIONS:
        want = _relation(oboxes[i, slot[head]], oboxes[i, slot[dep]])
        assert rel == f"prep_{want}", (cap, rel, head, dep)
    mentioned = np.zeros(C, np.uint8)
    mentioned[[synthetic.CATEGORIES.index(w) for w in named]] = 1
    np.testing.assert_array_equal(cap_labels[k], mentioned)
    assert np.all(cap_labels[k] <= labels[i])
  for i in range(len(labels)):
    want = np.zeros(C, np.uint8)
    want[objects[i, objects[i, :, 0] >= 0, 0]] = 1
    np.testing.assert_array_equal(labels[i], want)
    assert 2 <= want.sum() <= 5


def test_hard_negatives_exist(dirs):
  path = dirs[0]
  objects, groups = _npy(path, "train", "objects"), _npy(path, "train", "groups")
  tables = [_object_table(objects, i) for i in range(len(objects))]
  hard = 0
  for i in range(len(tables)):
    for j in range(i + 1, len(tables)):
      if set(tables[i]) == set(tables[j]):
        colours_i = {c: v[0] for c, v in tables[i].items()}
        colours_j = {c: v[0] for c, v in tables[j].items()}
        # Same categories and the same bag of colours, bound to different objects.
        if (sorted(colours_i.values()) == sorted(colours_j.values())
            and colours_i != colours_j):
          hard += 1
          assert groups[i] == groups[j]
  # 60 % of 48 images are in groups of 4 (7 groups): each sibling's colours are a
  # non-identity permutation of its base scene's, so >= 3 such pairs per group.
  assert hard >= 7 * 3
  _, counts = np.unique(groups, return_counts=True)
  assert sorted(set(counts)) == [1, 4]


def test_boxes_and_regions(dirs):
  path = dirs[0]
  boxes, oboxes = _npy(path, "test", "boxes"), _npy(path, "test", "object_boxes")
  region_obj, objects = _npy(path, "test", "region_objects"), _npy(path, "test", "objects")
  assert boxes.min() >= 0 and boxes.max() <= 1
  assert np.all(boxes[..., 2:] > boxes[..., :2])
  valid = objects[..., 0] >= 0
  assert np.all(oboxes[valid][:, 2:] > oboxes[valid][:, :2])
  for i in range(len(boxes)):
    n_obj = valid[i].sum()
    assert set(region_obj[i][region_obj[i] >= 0]) == set(range(n_obj))
    assert (region_obj[i] < 0).sum() == 36 - 24       # clutter regions
    for r in np.nonzero(region_obj[i] >= 0)[0]:
      a, b = boxes[i, r], oboxes[i, region_obj[i, r]]
      inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
      assert inter > 0.2 * np.prod(a[2:] - a[:2]), (i, r)   # a jittered view of its object


def test_pixels_consistent_with_boxes(dirs):
  path = dirs[0]
  pix = _npy(path, "test", "pixels").astype(int)
  oboxes, objects = _npy(path, "test", "object_boxes"), _npy(path, "test", "objects")
  centre = (np.arange(64) + 0.5) / 64
  rgb = synthetic.COLOUR_RGB.astype(int)
  for i in range(len(pix)):
    grey = (pix[i, ..., 0] == pix[i, ..., 1]) & (pix[i, ..., 1] == pix[i, ..., 2])
    background = grey & (np.abs(pix[i, ..., 0] - 128) <= synthetic.BACKGROUND_NOISE)
    explained = background.copy()
    for (cat, col, _), box in zip(objects[i], oboxes[i]):
      if cat < 0:
        continue
      inside = ((centre[None, :] >= box[0]) & (centre[None, :] <= box[2])
                & (centre[:, None] >= box[1]) & (centre[:, None] <= box[3]))
      shades = (rgb[col], np.floor(rgb[col] * synthetic.STRIPE_SHADE).astype(int))
      mine = np.zeros((64, 64), bool)
      for s in shades:
        mine |= np.all(pix[i] == s, axis=-1)
      explained |= inside & mine
      # Something of the object is visible, and only inside its box.
      assert (inside & mine).any() or cat % 6 == 5, (i, cat)
    assert explained.all(), i


def test_generate_refuses_existing_and_cleans_up(tmp_path):
  out = synthetic.generate(str(tmp_path / "d"), n_train=4, n_dev=2, n_test=2)
  with pytest.raises(FileExistsError):
    synthetic.generate(out, n_train=4, n_dev=2, n_test=2)
  assert sorted(os.listdir(tmp_path)) == ["d"]      # no temp dir left behind


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
  real = writer.write_split

  def flaky(out_dir, split, *args):
    real(out_dir, split, *args)
    if split == "dev":
      raise KeyboardInterrupt
  monkeypatch.setattr(writer, "write_split", flaky)
  with pytest.raises(KeyboardInterrupt):
    synthetic.generate(str(tmp_path / "d"), n_train=4, n_dev=2, n_test=2)
  assert os.listdir(tmp_path) == []


def test_get_or_create_caches_and_survives_races(tmp_path, monkeypatch):
  monkeypatch.setenv("XMR_DATA_DIR", str(tmp_path / "env"))
  params = dict(seed=3, n_train=4, n_dev=2, n_test=2, pixels=False)
  p1 = synthetic.get_or_create(**params)
  assert p1.startswith(str(tmp_path / "env")) and synthetic.VERSION in os.path.basename(p1)
  stamp = os.stat(os.path.join(p1, "meta.json")).st_mtime_ns
  assert synthetic.get_or_create(**params) == p1
  assert os.stat(os.path.join(p1, "meta.json")).st_mtime_ns == stamp   # not regenerated
  assert synthetic.get_or_create(**params, feature_noise=0.1) != p1
  # Racing creators (explicit cache_dir): all get the same complete dir, no temp dirs remain.
  results = []
  threads = [threading.Thread(target=lambda: results.append(
      synthetic.get_or_create(**params, cache_dir=str(tmp_path / "race")))) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(results) == 3 and len(set(results)) == 1
  assert os.listdir(tmp_path / "race") == [os.path.basename(results[0])]
  # A loser whose existence check ran before the winner published: it generates, fails to
  # publish, discards its copy and returns the winner's dir.
  real_isfile, calls = os.path.isfile, []

  def stale_first_check(p):
    calls.append(p)
    return False if len(calls) == 1 else real_isfile(p)
  monkeypatch.setattr(os.path, "isfile", stale_first_check)
  assert synthetic.get_or_create(**params) == p1
  assert len(calls) == 2
  assert not [d for d in os.listdir(tmp_path / "env") if d.startswith(".")]  # no temp dirs
  assert os.stat(os.path.join(p1, "meta.json")).st_mtime_ns == stamp


def test_cli_matches_api(tmp_path, dirs):
  out = synthetic.main(["--out", str(tmp_path / "cli"), "--n-train", "48", "--n-dev", "8",
                        "--n-test", "12", "--pixels"])
  for name in ("train_ims.npy", "dev_caps.txt", "test_pixels.npy", "meta.json"):
    with open(os.path.join(out, name), "rb") as f, open(os.path.join(dirs[0], name), "rb") as g:
      assert f.read() == g.read(), name


def test_unknown_difficulty_knob_is_an_error(tmp_path):
  with pytest.raises(TypeError):
    synthetic.generate(str(tmp_path / "d"), n_train=2, n_dev=2, n_test=2, noise=1.0)


def test_module_cli_runs(tmp_path, dirs):
  # `python -m xmr_jax.data.synthetic` (the package's __main__) writes the same files.
  out = str(tmp_path / "m")
  subprocess.run([sys.executable, "-m", "xmr_jax.data.synthetic", "--out", out, "--n-train",
                  "48", "--n-dev", "8", "--n-test", "12", "--pixels"], check=True,
                 capture_output=True)
  for name in ("train_caps.txt", "test_ims.npy"):
    with open(os.path.join(out, name), "rb") as f, open(os.path.join(dirs[0], name), "rb") as g:
      assert f.read() == g.read(), name


# SHA-256 prefixes of the version-1.0.0 files for seed 0 at SIZES, computed with the generator
# before it was split into a package. A change here changes the benchmark: bump VERSION (the
# cache key) instead of editing these. Only files without float transcendental kernels
# (np.tanh in the features may differ across CPUs) are pinned.
GOLDEN = {"train_caps.txt": "43fb0e360d5f2f36", "train_deps.jsonl": "f282aa36fbe7dedc",
          "train_objects.npy": "a0f16af0e75e8692", "train_object_boxes.npy": "c958b49eb622a5a4",
          "train_groups.npy": "c2276d5a0ef2fe64", "test_pixels.npy": "17bee3108777227e"}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_files_match_version_golden_hashes(dirs, name):
  with open(os.path.join(dirs[0], name), "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest()[:16] == GOLDEN[name]
