"""Tests for the grain training pipeline and the evaluation batchers."""
import itertools
import json
import os
import unicodedata

import numpy as np
import pytest

from xmr_jax import types
from xmr_jax.data import pipeline, precomp
from xmr_jax.data.errors import DataError
from xmr_jax.data.tokenizers import WordVocab

N, K, R, F, B = 12, 5, 4, 8, 4
WORDS = ("red", "blue", "small", "big", "wet")


def _caption(c):
  return f"a {WORDS[c % 5]} dog {c // K} runs"


def _write(d, ims):
  np.save(os.path.join(d, "train_ims.npy"), ims)
  with open(os.path.join(d, "train_caps.txt"), "w") as f:
    f.write("\n".join(_caption(c) for c in range(N * K)) + "\n")
  np.save(os.path.join(d, "train_boxes.npy"),
          np.broadcast_to(np.arange(N, dtype=np.float32)[:, None, None],
                          (N, R, 4)))
  np.save(os.path.join(d, "train_pixels.npy"),
          np.broadcast_to(np.arange(N, dtype=np.uint8)[:, None, None, None],
                          (N, 6, 5, 3)))
  with open(os.path.join(d, "train_deps.jsonl"), "w") as f:
    for c in range(N * K):
      triples = [["amod", "dog-3", f"{WORDS[c % 5]}-2"], ["nsubj", "runs", "dog"]]
      if c == 7:
        triples.append(["xcomp", "runs", "zigzag"])  # rare word and relation
      f.write(json.dumps(triples) + "\n")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("precomp"))
  # Row i holds the value i everywhere, so features identify their image.
  ims = np.broadcast_to(np.arange(N, dtype=np.float32)[:, None, None],
                        (N, R, F)).copy()
  _write(d, ims)
  return precomp.load_split(d, "train")


@pytest.fixture(scope="module")
def vocab(split):
  return WordVocab.build(split.captions, threshold=4)


@pytest.fixture(scope="module")
def deps_vocab(split):
  return pipeline.DepsVocab.build(split.deps, threshold=4)


def _epochs(split, vocab, num_epochs, batch_size=B, **kwargs):
  ds = pipeline.train_dataset(split, vocab, batch_size, **kwargs)
  steps = N // batch_size
  return [[ds[e * steps + s] for s in range(steps)] for e in range(num_epochs)]


def test_batch_keys_shapes_dtypes(split, vocab, deps_vocab):
  it = pipeline.train_iterator(split, vocab, B, seed=1, with_boxes=True,
                               with_pixels=True, deps_vocab=deps_vocab)
  batch = next(it)
  expected = {
      "regions": ((B, R, F), np.float32), "region_mask": ((B, R), bool),
      "boxes": ((B, R, 4), np.float32), "pixels": ((B, 6, 5, 3), np.uint8),
      "tokens": ((B, 16), np.int32), "token_mask": ((B, 16), bool),
      "deps": ((B, 8, 3), np.int32), "deps_mask": ((B, 8), bool),
      "image_index": ((B,), np.int32), "caption_index": ((B,), np.int32)}
  assert set(batch) == set(expected)
  assert set(batch) <= set(types.IMAGE_KEYS + types.TEXT_KEYS +
                           ("image_index", "caption_index"))
  for key, (shape, dtype) in expected.items():
    assert batch[key].shape == shape and batch[key].dtype == dtype, key
  assert batch["region_mask"].all()
  plain = pipeline.train_dataset(split, vocab, B, seed=1)[0]
  assert set(plain) == {"regions", "region_mask", "tokens", "token_mask",
                        "image_index", "caption_index"}


def test_batch_contents_match_files(split, vocab, deps_vocab):
  for batch in _epochs(split, vocab, 2, with_boxes=True, with_pixels=True,
                       deps_vocab=deps_vocab)[1]:
    img, cap = batch["image_index"], batch["caption_index"]
    np.testing.assert_array_equal(cap // K, img)
    np.testing.assert_array_equal(batch["regions"][:, 0, 0], img)
    np.testing.assert_array_equal(batch["boxes"][:, 0, 0], img)
    np.testing.assert_array_equal(batch["pixels"][:, 0, 0, 0], img)
    ids, mask = vocab.encode_batch([split.captions[c] for c in cap])
    np.testing.assert_array_equal(batch["tokens"], ids)
    np.testing.assert_array_equal(batch["token_mask"], mask)


def test_distinct_images_and_full_coverage_per_epoch(split, vocab):
  for epoch in _epochs(split, vocab, 3, seed=5):
    for b in epoch:  # distinct, and sorted (read in file order)
      assert (np.diff(b["image_index"]) > 0).all()
    images = np.concatenate([b["image_index"] for b in epoch])
    np.testing.assert_array_equal(np.sort(images), np.arange(N))
  # B = 5: 2 steps per epoch, 2 images dropped; still distinct within an epoch.
  for epoch in _epochs(split, vocab, 3, batch_size=5, seed=5):
    images = np.concatenate([b["image_index"] for b in epoch])
    assert len(images) == 10 and len(set(images.tolist())) == 10


def test_caption_choice_per_epoch_and_seed(split, vocab):
  def captions_by_image(epochs):
    out = []
    for epoch in epochs:
      cap = np.zeros(N, np.int64)
      for b in epoch:
        cap[b["image_index"]] = b["caption_index"]
      out.append(cap)
    return np.stack(out)

  a = captions_by_image(_epochs(split, vocab, 4, seed=3))
  again = captions_by_image(_epochs(split, vocab, 4, seed=3))
  other = captions_by_image(_epochs(split, vocab, 4, seed=4))
  np.testing.assert_array_equal(a, again)
  assert (a != other).any()
  # A new caption each epoch for most images; all k captions get used.
  assert (a[1:] != a[:-1]).mean() > 0.5
  assert len(set((a % K).ravel().tolist())) == K
  order = [b["image_index"] for b in _epochs(split, vocab, 2, seed=3)[1]]
  order0 = [b["image_index"] for b in _epochs(split, vocab, 2, seed=3)[0]]
  assert not np.array_equal(np.concatenate(order), np.concatenate(order0))


def test_iterator_state_restore(split, vocab, deps_vocab):
  kwargs = dict(seed=2, deps_vocab=deps_vocab)
  it = pipeline.train_iterator(split, vocab, B, **kwargs)
  for _ in range(4):  # 3 steps per epoch: stop inside epoch 1
    next(it)
  state = it.get_state()
  following = [next(it) for _ in range(4)]
  restored = pipeline.train_iterator(split, vocab, B, **kwargs)
  restored.set_state(state)
  for want, got in zip(following, itertools.islice(restored, 4)):
    assert set(want) == set(got)
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])
  np.testing.assert_array_equal(
      following[0]["image_index"],
      pipeline.train_dataset(split, vocab, B, **kwargs)[4]["image_index"])


def test_shards_partition_the_global_batch(split, vocab):
  full = pipeline.train_dataset(split, vocab, B, seed=7)
  shards = [pipeline.train_dataset(split, vocab, B, seed=7, shard_index=i,
                                   shard_count=2) for i in range(2)]
  for step in range(5):
    parts = [s[step] for s in shards]
    assert parts[0]["regions"].shape[0] == B // 2
    for key in ("image_index", "caption_index", "regions"):
      np.testing.assert_array_equal(
          np.concatenate([p[key] for p in parts]), full[step][key])
  with pytest.raises(ValueError, match="split evenly"):
    pipeline.train_dataset(split, vocab, B, shard_count=3)


def test_deps_encoding(split, deps_vocab):
  rel, words = deps_vocab.rel2idx, deps_vocab.words.word2idx
  assert rel == {"<pad>": 0, "<unk>": 1, "amod": 2, "nsubj": 3, "xcomp": 4}
  assert deps_vocab.words.unk_id == 3 and "zigzag" not in words
  assert "dog" in words and "dog-3" not in words  # position suffix dropped
  flat, offsets = deps_vocab.encode_ragged(split.deps)
  assert flat.shape == (2 * N * K + 1, 3)
  np.testing.assert_array_equal(
      flat[offsets[7]:offsets[8]],
      [[2, words["dog"], words[WORDS[2]]], [3, words["runs"], words["dog"]],
       [4, words["runs"], 3]])  # unknown word -> <unk>
  strict = pipeline.DepsVocab.build(split.deps, relation_threshold=2)
  assert "xcomp" not in strict.rel2idx
  np.testing.assert_array_equal(strict.encode_ragged([[("xcomp", "a", "b")]])[0],
                                [[1, 3, 3]])  # unknown relation -> <unk> = 1
  batch = next(pipeline.eval_text_batches(split, None, 8,
                                          deps_vocab=deps_vocab))
  np.testing.assert_array_equal(batch["deps_mask"].sum(1),
                                [2, 2, 2, 2, 2, 2, 2, 3])
  np.testing.assert_array_equal(batch["deps"][7, :3], flat[offsets[7]:offsets[8]])
  assert (batch["deps"][~batch["deps_mask"]] == 0).all()


def test_dep_words_are_normalised_as_caption_words():
  from xmr_jax.data.tokenizers import word_tokenize
  nfd = unicodedata.normalize("NFD", "Người-2")
  assert pipeline.normalize_dep_word(nfd) == word_tokenize(nfd[:-2])[0]
  assert pipeline.normalize_dep_word(nfd) == unicodedata.normalize("NFC", "người")
  assert pipeline.normalize_dep_word("\ufeffDog-12") == "dog"
  v = pipeline.DepsVocab.build([[("nsubj", nfd, "dog")]] * 2 + [[
      ("nsubj", unicodedata.normalize("NFC", "người-5"), "dog")]] * 2)
  assert len(v.words.word2idx) == 6      # 4 specials, one "người", "dog"


def test_deps_vocab_save_load(tmp_path, deps_vocab):
  deps_vocab.save(str(tmp_path / "deps.json"))
  loaded = pipeline.DepsVocab.load(str(tmp_path / "deps.json"))
  assert loaded.rel2idx == deps_vocab.rel2idx
  assert loaded.words.word2idx == deps_vocab.words.word2idx


def test_eval_image_batches(split):
  batches = list(pipeline.eval_image_batches(split, 5, with_boxes=True))
  assert len(batches) == 3
  for b in batches:
    assert b["regions"].shape == (5, R, F) and b["boxes"].shape == (5, R, 4)
  valid = np.concatenate([b["valid"] for b in batches])
  np.testing.assert_array_equal(valid, np.arange(15) < N)
  index = np.concatenate([b["image_index"] for b in batches])
  np.testing.assert_array_equal(index[valid], np.arange(N))
  regions = np.concatenate([b["regions"] for b in batches])
  np.testing.assert_array_equal(regions[valid], split.images)
  assert np.isfinite(regions).all()  # padding repeats a real row


def test_eval_text_batches(split, vocab):
  batches = list(pipeline.eval_text_batches(split, vocab, 7,
                                            len_buckets=(4, 8, 16)))
  assert len(batches) == 9  # 60 captions
  valid = np.concatenate([b["valid"] for b in batches])
  np.testing.assert_array_equal(valid, np.arange(63) < N * K)
  cap = np.concatenate([b["caption_index"] for b in batches])[valid]
  np.testing.assert_array_equal(cap, np.arange(N * K))
  img = np.concatenate([b["image_index"] for b in batches])[valid]
  np.testing.assert_array_equal(img, np.arange(N * K) // K)
  for b in batches:
    assert b["tokens"].shape == (7, 8)  # 7 tokens with <start>/<end> -> 8
  ids, _ = vocab.encode_batch(split.captions[56:], len_buckets=(4, 8, 16))
  np.testing.assert_array_equal(batches[-1]["tokens"][:4], ids)


def test_nan_features_raise_at_batch_time(tmp_path, vocab):
  ims = np.ones((N, R, F), np.float32)
  ims[9, 1, 1] = np.nan
  _write(str(tmp_path), ims)
  bad = precomp.load_split(str(tmp_path), "train")  # lazy: loads fine
  ds = pipeline.train_dataset(bad, vocab, B, seed=0)
  steps = [s for s in range(3) if 9 in pipeline.EpochPlan(
      N, K, B, 0).global_batch(s)[0]]
  good = [s for s in range(3) if s not in steps]
  ds[good[0]]  # batches without image 9 are fine
  with pytest.raises(DataError, match=r"train_ims.npy: image index 9 has NaN"):
    ds[steps[0]]
  with pytest.raises(DataError, match=r"image index 9"):
    list(itertools.islice(pipeline.train_iterator(bad, vocab, B), 3))
  with pytest.raises(DataError, match=r"image index 9"):
    list(pipeline.eval_image_batches(bad, 5))


def test_deps_requested_without_file(tmp_path, vocab, deps_vocab):
  _write(str(tmp_path), np.zeros((N, R, F), np.float32))
  os.remove(tmp_path / "train_deps.jsonl")
  no_deps = precomp.load_split(str(tmp_path), "train")
  with pytest.raises(DataError, match=r"train_deps.jsonl: not found"):
    pipeline.train_dataset(no_deps, vocab, B, deps_vocab=deps_vocab)


def test_data_info(split, vocab, deps_vocab):
  info = pipeline.data_info(split, vocab, deps_vocab)
  assert info == types.DataInfo(
      vocab_size=vocab.vocab_size, region_dim=F, num_regions=R,
      word_vocab_size=deps_vocab.words.vocab_size, num_relations=5,
      image_size=(6, 5))
