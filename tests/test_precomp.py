"""Tests for the SCAN precomp reader and its validation errors."""
import json
import os
import unicodedata

import numpy as np
import pytest

from xmr_jax.data import precomp
from xmr_jax.data.errors import DataError

N, K, R, F = 12, 5, 4, 8


def _write_split(d, split="train", n=N, k=K, caps=None, ims=None):
  """Writes a tiny valid split (plus extras) and returns its captions."""
  rng = np.random.default_rng(0)
  ims = rng.normal(size=(n, R, F)).astype(np.float32) if ims is None else ims
  np.save(os.path.join(d, f"{split}_ims.npy"), ims)
  caps = caps or [f"image {i // k} caption {i % k}" for i in range(n * k)]
  with open(os.path.join(d, f"{split}_caps.txt"), "w") as f:
    f.write("\n".join(caps) + "\n")
  return caps


def _write_extras(d, split="train", n=N, k=K):
  np.save(os.path.join(d, f"{split}_labels.npy"), np.eye(n, 3, dtype=np.uint8))
  np.save(os.path.join(d, f"{split}_cap_labels.npy"),
          np.ones((n * k, 3), np.uint8))
  np.save(os.path.join(d, f"{split}_boxes.npy"), np.zeros((n, R, 4), np.float32))
  np.save(os.path.join(d, f"{split}_pixels.npy"), np.zeros((n, 6, 5, 3), np.uint8))
  with open(os.path.join(d, f"{split}_deps.jsonl"), "w") as f:
    for i in range(n * k):
      f.write(json.dumps([["nsubj", "runs", f"dog{i}"]]) + "\n")


def test_load_valid_split_with_extras(tmp_path):
  caps = _write_split(tmp_path)
  _write_extras(tmp_path)
  s = precomp.load_split(str(tmp_path), "train")
  assert isinstance(s.images, np.memmap)  # memory-mapped, not read
  assert s.images.shape == (N, R, F) and s.k == K and s.num_images == N
  assert s.captions == caps and s.num_captions == N * K
  assert s.labels.shape == (N, 3) and s.cap_labels.shape == (N * K, 3)
  assert s.boxes.shape == (N, R, 4) and s.pixels.shape == (N, 6, 5, 3)
  assert s.deps[7] == [("nsubj", "runs", "dog7")]
  assert s.split == "train" and s.data_dir == str(tmp_path)


def test_one_row_per_image_and_k_given(tmp_path):
  # Flickr30K dev/test: 1000 images, 5000 captions -> k = 5 (here 3 x 15).
  _write_split(tmp_path, "dev", n=3, k=5)
  assert precomp.load_split(str(tmp_path), "dev").k == 5
  assert precomp.load_split(str(tmp_path), "dev", captions_per_image=5).k == 5
  with pytest.raises(DataError, match=r"dev_caps.txt.*15 captions.*3 images x 4"):
    precomp.load_split(str(tmp_path), "dev", captions_per_image=4)


def test_caption_count_not_multiple(tmp_path):
  _write_split(tmp_path, caps=[f"cap {i}" for i in range(N * K - 1)])
  with pytest.raises(DataError, match=r"train_caps.txt.*59 captions.*multiple"):
    precomp.load_split(str(tmp_path), "train")


def test_crlf_and_whitespace_are_stripped(tmp_path):
  _write_split(tmp_path, n=1, k=2)
  with open(tmp_path / "train_caps.txt", "wb") as f:
    f.write(b"a dog \r\n\tcat\r\n")
  assert precomp.load_split(str(tmp_path), "train").captions == ["a dog", "cat"]


@pytest.mark.parametrize("array, pattern", [
    (np.zeros((N, R * F), np.float32), r"rank-3"),
    (np.zeros((N, R, F), np.int32), r"floating point.*int32"),
])
def test_bad_feature_shape_or_dtype(tmp_path, array, pattern):
  _write_split(tmp_path, ims=array)
  with pytest.raises(DataError, match=r"train_ims.npy.*" + pattern):
    precomp.load_split(str(tmp_path), "train")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_features(tmp_path, bad):
  ims = np.ones((N, R, F), np.float32)
  ims[7, 2, 3] = bad
  _write_split(tmp_path, ims=ims)
  s = precomp.load_split(str(tmp_path), "train")  # lazy: no scan at load
  rows = np.array([3, 7, 1])
  precomp.check_finite(np.asarray(s.images[[3, 1]]), [3, 1], s.images_path)
  with pytest.raises(DataError, match=r"train_ims.npy: image index 7 has NaN"):
    precomp.check_finite(np.asarray(s.images[rows]), rows, s.images_path)
  with pytest.raises(DataError, match=r"image index 7"):
    precomp.load_split(str(tmp_path), "train", validate_all=True)
  with pytest.raises(DataError, match=r"image index 7"):
    precomp.scan_finite(s.images, s.images_path, chunk_rows=5)


def test_empty_caption_line(tmp_path):
  caps = _write_split(tmp_path)
  caps[2] = "   "
  with open(tmp_path / "train_caps.txt", "w") as f:
    f.write("\n".join(caps) + "\n")
  with pytest.raises(DataError, match=r"train_caps.txt: line 3 is empty"):
    precomp.load_split(str(tmp_path), "train")


VIET = unicodedata.normalize("NFC", "Một người đàn ông đang đi bộ")


def _write_bytes(d, data, split="train", k=2):
  """A one-image split of k captions whose caption file holds ``data``."""
  _write_split(d, split, n=1, k=k)
  with open(os.path.join(d, f"{split}_caps.txt"), "wb") as f:
    f.write(data)
  return precomp.load_split(str(d), split).captions


def test_byte_order_mark_is_not_part_of_the_first_caption(tmp_path):
  from xmr_jax.data.tokenizers import WordVocab
  plain = _write_bytes(tmp_path, b"A dog runs.\nA dog sits.\n")
  with_bom = _write_bytes(tmp_path, b"\xef\xbb\xbfA dog runs.\nA dog sits.\n")
  assert with_bom == plain == ["A dog runs.", "A dog sits."]
  v = WordVocab.build(plain * 4)
  assert v.encode_many(with_bom) == v.encode_many(plain)
  assert v.encode(with_bom[0])[1] == v.word2idx["a"] != v.unk_id


def test_crlf_file_reads_as_the_lf_file(tmp_path):
  lf = "\n".join([VIET, "a dog \"runs\"", "two cats"]) + "\n"
  a = _write_bytes(tmp_path, lf.encode("utf-8"), k=3)
  b = _write_bytes(tmp_path, lf.replace("\n", "\r\n").encode("utf-8"), k=3)
  assert a == b == [VIET, 'a dog "runs"', "two cats"]


def test_decomposed_captions_are_read_composed(tmp_path):
  nfd = unicodedata.normalize("NFD", VIET)
  assert nfd != VIET
  caps = _write_bytes(tmp_path, (nfd + "\n" + VIET + "\n").encode("utf-8"))
  assert caps == [VIET, VIET]
  assert precomp.normalize_caption(nfd) == VIET


@pytest.mark.parametrize("invisible", [
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00a0", "\u3000",
    "\u2028", "\u200b \t\u200d\r"])
def test_line_without_visible_characters_is_empty(tmp_path, invisible):
  with pytest.raises(DataError,
                     match=r"train_caps.txt: line 2 is empty \(it holds only "
                     r"invisible characters: U\+[0-9A-F]{4} .*\); every line "
                     r"must hold one caption"):
    _write_bytes(tmp_path, f"a dog\n{invisible}\na cat\n".encode("utf-8"), k=3)


def test_zero_width_space_line_message(tmp_path):
  with pytest.raises(DataError) as e:
    _write_bytes(tmp_path, "a dog\n\u200b\n".encode("utf-8"))
  assert str(e.value) == (
      f"{tmp_path}/train_caps.txt: line 2 is empty (it holds only invisible "
      "characters: U+200B ZERO WIDTH SPACE); every line must hold one caption "
      "(remove the blank line or write the missing caption).")


def test_invisible_characters_are_trimmed_only_at_the_ends(tmp_path):
  family = "\U0001F468\u200d\U0001F467"    # an emoji sequence joined by U+200D
  caps = _write_bytes(tmp_path, f"\u200ba dog\u2060\n{family} waves\u00a0\n"
                      .encode("utf-8"))
  assert caps == ["a dog", f"{family} waves"]


def test_metadata_lines_keep_their_unicode_form(tmp_path):
  nfd = unicodedata.normalize("NFD", "1 Café/Một.jpg")
  path = tmp_path / "images.txt"
  path.write_bytes(("\ufeff" + nfd + "\r\n").encode("utf-8"))
  assert precomp.read_lines(str(path)) == [nfd]   # file names keep their bytes
  assert precomp.read_captions(str(path)) == [unicodedata.normalize("NFC", nfd)]
  path.write_bytes(b"1 a.jpg\n\xe2\x80\x8b\n")
  with pytest.raises(DataError, match=r"images.txt: line 2 is empty .* one entry"):
    precomp.read_lines(str(path))


def test_deps_file_with_byte_order_mark_and_crlf(tmp_path):
  _write_split(tmp_path, n=1, k=2)
  rows = [json.dumps([["nsubj", "runs", "dog"]]), json.dumps([])]
  (tmp_path / "train_deps.jsonl").write_bytes(
      ("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
  assert precomp.load_split(str(tmp_path), "train").deps == [
      [("nsubj", "runs", "dog")], []]


def test_non_utf8_caption(tmp_path):
  _write_split(tmp_path, n=1, k=3)
  with open(tmp_path / "train_caps.txt", "wb") as f:
    f.write(b"first line\nsecond\nthe caf\xe9 sign\n")  # latin-1 e-acute
  with pytest.raises(DataError,
                     match=r"line 3 is not valid UTF-8 \(byte offset 7 in the "
                     r"line, 25 in the file"):
    precomp.load_split(str(tmp_path), "train")


def test_truncated_npy(tmp_path):
  _write_split(tmp_path)
  path = tmp_path / "train_ims.npy"
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size - 100)
  with pytest.raises(DataError, match=r"train_ims.npy: truncated.*again"):
    precomp.load_split(str(tmp_path), "train")


def test_object_npy(tmp_path):
  _write_split(tmp_path)
  np.save(tmp_path / "train_ims.npy", np.array([np.zeros(3), "x"], object),
          allow_pickle=True)
  with pytest.raises(DataError, match=r"train_ims.npy: holds Python objects.*"
                     r"float32"):
    precomp.load_split(str(tmp_path), "train")


def test_missing_split_lists_directory(tmp_path):
  _write_split(tmp_path, "dev")
  with pytest.raises(DataError, match=r"test_ims.npy: file not found.*"
                     r"dev_caps.txt, dev_ims.npy"):
    precomp.load_split(str(tmp_path), "test")
  os.remove(tmp_path / "dev_caps.txt")
  with pytest.raises(DataError, match=r"dev_caps.txt: file not found"):
    precomp.load_split(str(tmp_path), "dev")


@pytest.mark.parametrize("lines, pattern", [
    (['[["nsubj", "runs", "dog"]]', '[["nsubj", "runs"'], r"line 2 is not valid JSON"),
    (['[["nsubj", "runs", "dog"]]', '[["nsubj", "runs"]]'], r"line 2 must be"),
    (['[["nsubj", "runs", "dog"]]'] * 3, r"has 3 lines.*has 2"),
])
def test_bad_deps(tmp_path, lines, pattern):
  _write_split(tmp_path, n=1, k=2)
  with open(tmp_path / "train_deps.jsonl", "w") as f:
    f.write("\n".join(lines) + "\n")
  with pytest.raises(DataError, match=r"train_deps.jsonl: " + pattern):
    precomp.load_split(str(tmp_path), "train")


def test_extras_with_wrong_rows(tmp_path):
  _write_split(tmp_path)
  np.save(tmp_path / "train_labels.npy", np.zeros((N + 1, 3), np.uint8))
  with pytest.raises(DataError, match=r"train_labels.npy.*12 rows"):
    precomp.load_split(str(tmp_path), "train")


def test_region_mask_file_declares_variable_region_counts(tmp_path):
  """{split}_region_mask.npy marks real regions; batches carry it; a bad one is named."""
  from xmr_jax.data import pipeline
  d = str(tmp_path)
  ims = np.random.default_rng(0).normal(size=(3, 4, 2)).astype(np.float32)
  np.save(os.path.join(d, "train_ims.npy"), ims)
  with open(os.path.join(d, "train_caps.txt"), "w") as f:
    f.write("".join(f"caption {i}\n" for i in range(3)))
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
  np.save(os.path.join(d, "train_region_mask.npy"), mask)
  split = precomp.load_split(d, "train")
  batch = next(pipeline.eval_image_batches(split, 3))
  np.testing.assert_array_equal(batch["region_mask"], mask)
  np.save(os.path.join(d, "train_region_mask.npy"), np.array([[1, 1, 1, 1], [0, 0, 0, 0],
                                                               [1, 0, 0, 0]], bool))
  with pytest.raises(DataError, match="train_region_mask.npy: image 1 .*no real region"):
    precomp.load_split(d, "train")
  np.save(os.path.join(d, "train_region_mask.npy"), mask.astype(np.float32))
  with pytest.raises(DataError, match=r"expected \(N, 4\) bool"):
    precomp.load_split(d, "train")


def test_line_breaks_and_tabs_inside_a_caption_become_one_space():
  # COCO's captions json holds captions with a newline inside; caps.txt is one per line.
  assert precomp.normalize_caption("A dog\n on a\tbeach.\r\n") == "A dog on a beach."
  assert precomp.normalize_caption("two\u2028lines") == "two lines"
  assert precomp.normalize_caption(precomp.normalize_caption("a \n b")) == "a b"
