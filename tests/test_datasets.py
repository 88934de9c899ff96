"""open_dataset: reads only config.data, takes needs explicitly, names the bad key."""
import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

from xmr_jax.config_utils import base_config
from xmr_jax.data import datasets, synthetic
from xmr_jax.data.errors import DataError


def data_only(data_dir, **overrides):
  """A frozen ConfigDict holding only the data section: no method, model or seed to read."""
  d = base_config("any").data.to_dict()
  d.update({"name": "precomp", "dir": data_dir, "tokenizer": "word", **overrides})
  return ml_collections.FrozenConfigDict(d)


@pytest.fixture(scope="module")
def no_pixels_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("nopix")
  return synthetic.generate(str(root / "d"), n_train=8, n_dev=4, n_test=4, pixels=False)


def _copy(src, dst, keep):
  """A precomp dir with only the files of ``src`` whose names end with one of ``keep``."""
  os.makedirs(dst)
  for name in os.listdir(src):
    if name.endswith(keep):
      shutil.copy(os.path.join(src, name), dst)
  return str(dst)


def test_open_dataset_reads_only_the_data_section(tiny_data_dir):
  ds = datasets.open_dataset(data_only(tiny_data_dir))
  batch = ds.sample_batch(4)
  assert ds.k == 5 and ds.num_train_images == 48 and ds.info.word_vectors is None
  assert batch["tokens"].shape[0] == 4 and "pixels" not in batch and "deps" not in batch
  assert "boxes" in batch      # not needed, but the split has them: they come along as before
  ev = ds.eval_data("test", 8, max_images=4)
  assert len(ev.captions) == 20 and next(ev.image_batches())["regions"].shape[0] == 8


def test_needs_decide_the_optional_inputs(tiny_data_dir):
  ds = datasets.open_dataset(data_only(tiny_data_dir), needs=frozenset({"pixels", "deps"}))
  batch = ds.sample_batch(4)
  assert batch["pixels"].shape == (4, 64, 64, 3) and batch["pixels"].dtype == np.uint8
  assert batch["deps"].shape[0] == 4 and ds.info.num_relations > 0
  text = next(ds.eval_data("dev", 8).text_batches())
  assert "deps" in text and "deps_mask" in text


@pytest.mark.parametrize("needs, match", [
    ({"pixel"}, r"unknown \['pixel'\]; the optional batch inputs are \['boxes', 'deps', "
                r"'photos', 'pixels'\]"),
    ("pixels", r"needs is a set of names"),
])
def test_unknown_needs_are_value_errors(tiny_data_dir, needs, match):
  with pytest.raises(ValueError, match=match):
    datasets.open_dataset(data_only(tiny_data_dir), needs=needs)


def test_needed_pixels_missing_is_a_data_error(no_pixels_dir):
  with pytest.raises(DataError, match=r"train_pixels.npy is missing; .*image_input='pixels'"):
    datasets.open_dataset(data_only(no_pixels_dir), needs={"pixels"})
  assert "pixels" not in datasets.open_dataset(data_only(no_pixels_dir)).sample_batch(2)


def test_pixels_missing_in_an_eval_split_stop_the_opening(tiny_data_dir, tmp_path):
  # Found when the data is opened, not after training when the test split is evaluated;
  # needed or not, since every split must carry the same optional files.
  path = _copy(tiny_data_dir, tmp_path / "d", (".npy", ".txt", ".jsonl"))
  os.remove(os.path.join(path, "test_pixels.npy"))
  for needs in ({"pixels"}, frozenset()):
    with pytest.raises(DataError, match=r"d/test_pixels.npy: missing, but the training split "
                                        r"has .*d/train_pixels.npy"):
      datasets.open_dataset(data_only(path), needs=needs)


def test_boxes_come_when_present_and_are_required_when_needed(tiny_data_dir, tmp_path):
  bare = _copy(tiny_data_dir, tmp_path / "bare", ("_ims.npy", "_caps.txt"))
  assert "boxes" not in datasets.open_dataset(data_only(bare)).sample_batch(2)
  with pytest.raises(DataError, match=r"train_boxes.npy is missing; the method reads region"):
    datasets.open_dataset(data_only(bare), needs={"boxes"})
  with pytest.raises(DataError, match=r"train_deps.jsonl is missing; .*DeFrag"):
    datasets.open_dataset(data_only(bare), needs={"deps"})
  ds = datasets.open_dataset(data_only(tiny_data_dir), needs={"boxes"})
  assert ds.sample_batch(2)["boxes"].shape == (2, 36, 4)


def test_tfds_name_points_to_the_precomp_export(tmp_path):
  with pytest.raises(ValueError, match=r"config.data.name='tfds' was removed: .*"
                                       r"python -m xmr_jax.data.cub_export .*"
                                       r"--config.data.name=precomp"):
    datasets.open_dataset(data_only(str(tmp_path), name="tfds"))
  with pytest.raises(ValueError, match=r"config.data.name='coco' is unknown; choose one of "
                                       r"\['synthetic', 'precomp', 'images'\]"):
    datasets.open_dataset(data_only(str(tmp_path), name="coco"))


@pytest.mark.parametrize("name, match", [
    ("vocab", r"config.data.tokenizer='vocab' was removed: use --config.data.tokenizer=word"),
    ("spm", r"config.data.tokenizer='spm' is unknown; choose one of "
            r"\['sentencepiece', 'word', 'wordpiece', 'e5_small'\]"),
])
def test_tokenizer_names_are_checked_before_any_generation(tmp_path, name, match):
  cache = tmp_path / "cache"
  bad = data_only(str(cache), name="synthetic", tokenizer=name)
  with pytest.raises(ValueError, match=match):
    datasets.open_dataset(bad)
  assert not cache.exists()        # nothing generated for a config that cannot work


def test_synthetic_name_generates_into_data_dir(tmp_path):
  d = data_only(str(tmp_path / "cache"), name="synthetic",
                synthetic=dict(n_train=8, n_dev=4, n_test=4, seed=0, pixels=False))
  ds = datasets.open_dataset(d)
  assert ds.num_train_images == 8 and ds.data_dir.startswith(str(tmp_path / "cache"))


def test_word_embeddings_at_file_dim_seeded_by_the_argument(tiny_data_dir, tmp_path):
  path = tmp_path / "glove.txt"
  path.write_text("dog 1 2 3 4 5\nred 6 7 8 9 10\n", encoding="utf-8")
  a = datasets.open_dataset(data_only(tiny_data_dir, word_embeddings=str(path)), seed=0)
  b = datasets.open_dataset(data_only(tiny_data_dir, word_embeddings=str(path)), seed=1)
  va, vb = a.info.word_vectors, b.info.word_vectors
  assert va.shape == (a.tokenizer.vocab_size, 5) and va.dtype == np.float32
  dog = a.tokenizer.word2idx["dog"]
  np.testing.assert_array_equal(va[dog], [1, 2, 3, 4, 5])
  np.testing.assert_array_equal(va[dog], vb[dog])
  rest = np.delete(np.arange(len(va)), [0, dog, a.tokenizer.word2idx["red"]])
  assert not np.array_equal(va[rest], vb[rest])     # missing words follow the seed argument


def test_method_inputs_decide_what_the_data_carries(tiny_data_dir):
  from xmr_jax.models.registry import method_inputs
  c = base_config("defrag")
  c.model.fragments = "dependency"
  assert method_inputs(c) == {"deps"}
  c.model.fragments = "words"
  assert method_inputs(c) == frozenset()
  c = base_config("vsepp")
  c.model.image_input = "pixels"
  assert method_inputs(c) == {"pixels"}
  c.data.name, c.data.dir, c.data.tokenizer = "precomp", tiny_data_dir, "word"
  ds = datasets.open_dataset(c.data, needs=method_inputs(c))
  assert ds.sample_batch(2)["pixels"].shape == (2, 64, 64, 3)


# --- Hand-written precomp dirs: splits that agree (or not) and captions of known lengths. ---

SHORT = ["a red dog runs .", "a blue cat runs .", "the red cat sits", "a blue dog sits",
         "the dog and the cat"]


def _long(last):
  """85 words -> 87 tokens with <start> and <end>; tokens 76-85 are ``last``."""
  return " ".join(["dog"] * 75 + [last] * 10)


def _write_split(d, split, n, *, captions=None, k=5, regions=36, dim=128, dtype=np.float32,
                 labels=3, pixels=(6, 5), deps=None):
  """One split of n images with (n, regions, dim) features, k captions each, and extras
  (``labels`` classes, ``pixels`` (H, W), ``deps`` a list of triple lists; None: no file)."""
  np.save(os.path.join(d, f"{split}_ims.npy"), np.ones((n, regions, dim), dtype))
  captions = captions or [SHORT[i % len(SHORT)] for i in range(n * k)]
  with open(os.path.join(d, f"{split}_caps.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(captions) + "\n")
  if labels:
    np.save(os.path.join(d, f"{split}_labels.npy"), np.eye(n, labels, dtype=np.uint8))
  if pixels:
    np.save(os.path.join(d, f"{split}_pixels.npy"), np.zeros((n, *pixels, 3), np.uint8))
  if deps is not None:
    with open(os.path.join(d, f"{split}_deps.jsonl"), "w", encoding="utf-8") as f:
      f.write("".join(json.dumps(t) + "\n" for t in deps))


def _long_dataset(d):
  """train: image 0's five captions have 72 tokens; test: captions 0 and 1 have 87 tokens
  and differ only after token 75; dev: short captions."""
  os.makedirs(d)
  _write_split(d, "train", 8, captions=[" ".join(["cat"] * 70)] * 5 + SHORT * 7)
  _write_split(d, "dev", 4)
  _write_split(d, "test", 4, captions=[_long("red"), _long("blue")] + SHORT * 3 + SHORT[:3])
  return str(d)


def test_buckets_fit_the_longest_caption_of_every_split(tmp_path):
  ds = datasets.open_dataset(data_only(_long_dataset(tmp_path / "d")))
  assert ds.len_buckets == (16, 24, 32, 64, 96)     # 87 tokens -> one bucket, rounded to 16
  assert ds.info.max_text_len == 96                 # the test split's 87, not train's 72
  # A configured bucket longer than every caption is not a padded length: 87 -> 96, not 256.
  wide = datasets.open_dataset(data_only(str(tmp_path / "d"), len_buckets=(16, 96, 256)))
  assert wide.len_buckets == (16, 96, 256) and wide.info.max_text_len == 96
  assert ds.split_names == ["train", "dev", "test"] and ds.cut_captions == {}
  tokens = next(ds.eval_data("test", 8).text_batches())["tokens"]
  assert tokens.shape == (8, 96)
  end = ds.tokenizer.end_id
  assert tokens[0, 86] == end and tokens[1, 86] == end and (tokens[:2, 87:] == 0).all()
  np.testing.assert_array_equal(tokens[0, :76], tokens[1, :76])
  assert (tokens[0, 76:86] != tokens[1, 76:86]).all()     # the words after token 75 survive
  batch = ds.sample_batch(8)                                # all 8 images: image 0 is long
  assert batch["tokens"].shape[1] == 96 and batch["token_mask"][0].sum() == 72
  assert batch["tokens"][0, 71] == end
  # Splits are opened with the dataset but stay memory maps: nothing is read whole.
  assert all(isinstance(ds.split(n).images, np.memmap) for n in ds.split_names)


def test_max_caption_len_cuts_and_says_where(tmp_path, capsys):
  ds = datasets.open_dataset(data_only(_long_dataset(tmp_path / "d"), max_caption_len=40))
  assert ds.cut_captions == {"train": 5, "test": 2}
  assert ds.len_buckets == (16, 24, 32, 64)         # the cap fits the configured buckets
  err = capsys.readouterr().err
  assert "data.max_caption_len=40: 7 captions of " in err
  assert ("are longer than 40 tokens and are cut to their first 39 tokens and the end token "
          "(train: 5, test: 2)") in err
  tokens = next(ds.eval_data("test", 8).text_batches())["tokens"]
  assert tokens.shape == (8, 64) and tokens[0, 39] == ds.tokenizer.end_id
  assert (tokens[0, 40:] == 0).all()
  np.testing.assert_array_equal(tokens[0], tokens[1])  # the user's cap: they now agree
  batch = ds.sample_batch(8)
  assert batch["token_mask"][0].sum() == 40 and batch["tokens"][0, 39] == ds.tokenizer.end_id


@pytest.mark.parametrize("value", [1, -3, 2.5, True])
def test_max_caption_len_must_be_zero_or_a_token_count(tiny_data_dir, value):
  with pytest.raises(ValueError, match=r"config.data.max_caption_len=.*: use 0 \(no cap"):
    datasets.open_dataset(data_only(tiny_data_dir, max_caption_len=value))


def test_deps_buckets_fit_the_longest_triple_list(tmp_path):
  d = str(tmp_path / "d")
  os.makedirs(d)
  few = [[["nsubj", "runs", "dog"]]] * 20
  _write_split(d, "train", 4, deps=few)
  _write_split(d, "dev", 4, deps=few)
  _write_split(d, "test", 4, deps=[[["amod", "dog", "red"]] * 40] + few[:19])
  ds = datasets.open_dataset(data_only(d), needs={"deps"})
  assert ds.deps_buckets == (8, 16, 32, 48)
  text = next(ds.eval_data("test", 4).text_batches())
  assert text["deps"].shape == (4, 48, 3) and text["deps_mask"][0].sum() == 40
  assert datasets.open_dataset(data_only(d)).deps_buckets is None   # deps not needed


def _agreeing(d):
  os.makedirs(d)
  for split, n in (("train", 8), ("dev", 4)):
    _write_split(d, split, n)
  return str(d)


@pytest.mark.parametrize("split, kwargs, match", [
    ("test", dict(dim=64), r"/test_ims.npy: feature dimension is 64, but the training split "
                           r"has 128 \(.*/train_ims.npy\)"),
    ("test", dict(regions=20), r"/test_ims.npy: region count per image is 20, but the "
                               r"training split has 36 \(.*/train_ims.npy\)"),
    ("test", dict(dtype=np.float16), r"/test_ims.npy: feature dtype is float16, but the "
                                     r"training split has float32"),
    ("test", dict(k=3), r"/test_caps.txt: captions per image \(k\) is 3, but the training "
                        r"split has 5 \(.*/train_caps.txt\)"),
    ("test", dict(labels=0), r"/test_labels.npy: missing, but the training split has "
                             r".*/train_labels.npy"),
    ("test", dict(labels=4), r"/test_labels.npy: class count is 4, but the training split "
                             r"has 3"),
    ("test", dict(pixels=(8, 8)), r"/test_pixels.npy: image size \(H, W\) is \(8, 8\), but "
                                  r"the training split has \(6, 5\)"),
    ("testall", dict(dim=64), r"/testall_ims.npy: feature dimension is 64"),  # found, unnamed
])
def test_splits_that_disagree_stop_the_opening(tmp_path, split, kwargs, match):
  d = _agreeing(tmp_path / "d")
  if split != "test":
    _write_split(d, "test", 4)
  _write_split(d, split, 4, **kwargs)
  with pytest.raises(DataError, match=match):
    datasets.open_dataset(data_only(d))


def test_an_extra_only_an_eval_split_has_is_named(tmp_path):
  d = _agreeing(tmp_path / "d")
  _write_split(d, "test", 4)
  np.save(os.path.join(d, "test_boxes.npy"), np.zeros((4, 36, 4), np.float32))
  with pytest.raises(DataError, match=r"/test_boxes.npy: present, but the training split has "
                                      r"no .*/train_boxes.npy; .*remove it, or write"):
    datasets.open_dataset(data_only(d))
  os.remove(os.path.join(d, "test_boxes.npy"))
  ds = datasets.open_dataset(data_only(d))           # agreeing splits open
  assert ds.split_names == ["train", "dev", "test"] and ds.info.region_dim == 128
