"""The TFDS builder of the synthetic benchmark: build tiny, read back without TensorFlow."""
import os
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from xmr_jax.data import synthetic  # pylint: disable=g-import-not-at-top
from xmr_jax.data import tfds_synthetic  # pylint: disable=g-import-not-at-top

SIZES = dict(seed=2, n_train=20, n_dev=5, n_test=5)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("XMR_DATA_DIR", str(root / "cache"))   # the builder's generation cache
    builder = tfds_synthetic.build(str(root / "tfds"), pixels=True, **SIZES)
    ref = synthetic.generate(str(root / "ref"), pixels=True, **SIZES)
    yield root, builder, ref


def test_array_record_without_tensorflow(built):
  root, builder, _ = built
  files = os.listdir(builder.data_dir)
  assert any(".array_record" in f for f in files), files
  assert "tensorflow" not in sys.modules
  assert builder.builder_config.name == "s2_20_5_5_px"


@pytest.mark.parametrize("split", synthetic.SPLITS)
def test_data_source_matches_npy_files(built, split):
  root, builder, ref = built
  source = tfds.data_source("synthetic_retrieval", split=split, data_dir=str(root / "tfds"),
                            builder_kwargs={"config": builder.builder_config}, download=False)
  n = SIZES[f"n_{split}"]
  assert len(source) == n
  load = lambda name: np.load(os.path.join(ref, f"{split}_{name}.npy"), allow_pickle=False)
  ims, boxes, labels = load("ims"), load("boxes"), load("labels")
  cap_labels, pixels = load("cap_labels"), load("pixels")
  with open(os.path.join(ref, f"{split}_caps.txt"), encoding="utf-8") as f:
    caps = f.read().splitlines()
  with open(os.path.join(ref, f"{split}_deps.jsonl"), encoding="utf-8") as f:
    deps = f.read().splitlines()
  for k in range(n):
    ex = source[k]
    i = int(ex["image_index"])
    assert i == k                                   # shuffling disabled: order kept
    assert ex["regions"].dtype == np.float32 and ex["regions"].shape == (36, 128)
    np.testing.assert_array_equal(ex["regions"], ims[i])
    np.testing.assert_array_equal(ex["boxes"], boxes[i])
    np.testing.assert_array_equal(ex["labels"], labels[i])
    np.testing.assert_array_equal(ex["cap_labels"], cap_labels[5 * i:5 * i + 5])
    np.testing.assert_array_equal(ex["pixels"], pixels[i])
    assert [c.decode("utf-8") for c in ex["captions"]] == caps[5 * i:5 * i + 5]
    assert [d.decode("utf-8") for d in ex["deps"]] == deps[5 * i:5 * i + 5]


def test_rebuild_reuses_prepared_data(built):
  root, builder, _ = built
  again = tfds_synthetic.build(str(root / "tfds"), pixels=True, **SIZES)
  assert again.data_dir == builder.data_dir
  assert again.info.splits["train"].num_examples == SIZES["n_train"]
