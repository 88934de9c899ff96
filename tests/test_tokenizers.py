"""Tests for the word vocabulary, sentencepiece tokenizer and padding."""
import json
import os
import unicodedata

import numpy as np
import pytest

from xmr_jax.data import tokenizers
from xmr_jax.data.errors import DataError
from xmr_jax.data.tokenizers import (SentencePieceTokenizer, WordVocab,
                                     get_tokenizer, word_tokenize)

# Counts: "a" 5, "dog" 4, "runs" 4, "." 4, "cat" 3 (below threshold 4), ...
CAPTIONS = ["A dog runs.", "a dog runs .", "a Dog runs.", "a dog runs.",
            "a cat sleeps", "cat sleeps", "the cat"]

SP_CAPTIONS = [f"{a} {b} {c} on the {d}." for a in ("a", "two", "three")
               for b in ("red", "small", "happy", "wet")
               for c in ("dogs", "cats", "men") for d in ("grass", "beach")]


def test_word_tokenize():
  assert word_tokenize("A Dog's T-shirt, isn't it?  3.5 m.") == [
      "a", "dog", "'s", "t-shirt", ",", "is", "n't", "it", "?", "3.5", "m", "."]
  assert word_tokenize("") == []


# Captions where the former regular expression differed from NLTK, or could.
NLTK_CASES = [
    'A sign that says "Stop" on a pole.',
    'He yells "go!" at the dog',
    "Mr. Smith and Mrs. Jones walk in the U.S. capitol.",
    "A man in a t-shirt and a well-worn hat.",
    "The dog's owner doesn't see it; they're busy.",
    "A girl waits... and waits",
    "Two men (one in red) play 3.5 rounds of golf at 5 p.m.",
    "A man ' s hat",
]


@pytest.mark.parametrize("caption", NLTK_CASES)
def test_word_tokenize_is_nltk_on_the_lower_cased_caption(caption):
  from nltk.tokenize import word_tokenize as nltk_word_tokenize
  assert word_tokenize(caption) == nltk_word_tokenize(caption.lower(),
                                                      preserve_line=True)


def test_word_tokenize_quotes_abbreviations_ellipsis():
  # Values the former regular expression got wrong (it kept '"', split
  # "mr." and "u.s." and cut "..." into three tokens).
  assert word_tokenize(NLTK_CASES[0]) == [
      "a", "sign", "that", "says", "``", "stop", "''", "on", "a", "pole", "."]
  assert word_tokenize(NLTK_CASES[2])[:2] == ["mr.", "smith"]
  assert "u.s." in word_tokenize(NLTK_CASES[2])
  assert word_tokenize(NLTK_CASES[5]) == ["a", "girl", "waits", "...", "and",
                                          "waits"]
  assert word_tokenize(NLTK_CASES[4])[:5] == ["the", "dog", "'s", "owner", "does"]


def test_word_tokenize_needs_no_nltk_data(monkeypatch):
  # punkt (sentence splitting) is the only part of word_tokenize that reads
  # downloaded data; make every way to it fail.
  import nltk
  import nltk.tokenize

  def no_data(*args, **kwargs):
    raise AssertionError(f"nltk data was looked up: {args}")
  monkeypatch.setattr(nltk.data, "find", no_data)
  monkeypatch.setattr(nltk.data, "load", no_data)
  monkeypatch.setattr(nltk, "download", no_data)
  monkeypatch.setattr(nltk.tokenize, "sent_tokenize", no_data)
  assert word_tokenize("Mr. Lee's dog. It runs.") == [
      "mr.", "lee", "'s", "dog.", "it", "runs", "."]


def test_composed_and_decomposed_text_give_the_same_ids():
  nfc = unicodedata.normalize("NFC", "Một người đàn ông đang đi bộ")
  nfd = unicodedata.normalize("NFD", nfc)
  assert nfc != nfd
  v = WordVocab.build([nfc] * 4)
  assert word_tokenize(nfd) == word_tokenize(nfc) == nfc.lower().split()
  assert v.encode(nfd) == v.encode(nfc) == [1, 4, 5, 6, 7, 8, 9, 10, 2]
  # Invisible characters at the ends (a byte-order mark, a zero-width space)
  # are not a word.
  assert v.encode("\ufeff" + nfd + "\u200b") == v.encode(nfc)


def test_word_vocab_ids_use_nltk_quote_tokens():
  caps = ['A shirt that says "Go" .'] * 4
  v = WordVocab.build(caps)
  assert "``" in v.word2idx and "''" in v.word2idx and '"' not in v.word2idx
  ids = v.encode('A shirt that says "Go" .')
  assert ids == [1] + [v.word2idx[w] for w in
                       ["a", "shirt", "that", "says", "``", "go", "''", "."]] + [2]
  assert v.unk_id not in ids


def test_word_vocab_threshold_and_ids():
  v = WordVocab.build(CAPTIONS, threshold=4)
  # Specials first (SCAN vocab.py), then kept words in first-appearance order.
  assert v.word2idx == {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3,
                        "a": 4, "dog": 5, "runs": 6, ".": 7}
  assert v.vocab_size == 8 and len(v) == 8
  assert v.encode("The dog runs.") == [1, 3, 5, 6, 7, 2]
  assert WordVocab.build(CAPTIONS, threshold=3).word2idx["cat"] == 8


def test_word_vocab_encode_batch_padding():
  v = WordVocab.build(CAPTIONS, threshold=4)
  ids, mask = v.encode_batch(["a dog", "dog dog dog dog dog ."],
                             len_buckets=(4, 8, 16))
  assert ids.dtype == np.int32 and mask.dtype == bool
  np.testing.assert_array_equal(ids, [[1, 4, 5, 2, 0, 0, 0, 0],
                                      [1, 5, 5, 5, 5, 5, 7, 2]])
  np.testing.assert_array_equal(mask.sum(1), [4, 8])
  np.testing.assert_array_equal(mask, ids != 0)


def test_bucket_selection_never_truncates():
  v = WordVocab.build(CAPTIONS, threshold=4)
  assert tokenizers.choose_bucket(5, (16, 32)) == 16
  assert tokenizers.choose_bucket(16, (32, 16)) == 16
  assert tokenizers.choose_bucket(17, (16, 32)) == 32
  with pytest.raises(ValueError, match=r"a row has 99 items but the largest length bucket "
                                       r"is 32 \(buckets \(16, 32\)\); rows are never cut"):
    tokenizers.choose_bucket(99, (16, 32))
  ids, mask = v.encode_batch(["a"], len_buckets=(4, 8))  # 3 tokens -> 4
  assert ids.shape == (1, 4)
  with pytest.raises(ValueError, match=r"row 1 has 22 items but the largest length bucket "
                                       r"is 8"):
    v.encode_batch(["a", "dog " * 20], len_buckets=(4, 8))  # 22 tokens: no longer cut to 8


def test_pad_ragged_raises_on_an_over_long_row():
  flat = np.arange(1, 11, dtype=np.int32)
  offsets = np.array([0, 2, 9, 10])  # rows of 2, 7 and 1 items
  out, mask = tokenizers.pad_ragged(flat, offsets, np.array([0, 2]), (2, 4))
  np.testing.assert_array_equal(out, [[1, 2], [10, 0]])
  with pytest.raises(ValueError, match=r"row 1 has 7 items but the largest length bucket is 4"):
    tokenizers.pad_ragged(flat, offsets, np.array([2, 1, 0]), (2, 4))


def test_fit_buckets_extends_and_rounds():
  assert tokenizers.fit_buckets((16, 24, 32, 64), 87) == (16, 24, 32, 64, 96)
  assert tokenizers.fit_buckets((16, 24, 32, 64), 65) == (16, 24, 32, 64, 80)
  assert tokenizers.fit_buckets((64, 16, 32), 64) == (16, 32, 64)   # fits: only sorted
  assert tokenizers.fit_buckets((8, 16, 32), 33, multiple=8) == (8, 16, 32, 40)
  for bad in ((), (0, 16), (16.5,)):
    with pytest.raises(ValueError, match=r"length buckets must be positive ints"):
      tokenizers.fit_buckets(bad, 10)


def test_cap_ragged_keeps_the_end_token():
  rows = [[1, 5, 6, 2], [1, 5, 6, 7, 8, 9, 2], [], [1, 5, 6, 7, 2]]
  flat, offsets = tokenizers.ragged_from_lists(rows)
  flat, offsets, cut = tokenizers.cap_ragged(flat, offsets, 4)
  np.testing.assert_array_equal(cut, [False, True, False, True])
  got = [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
  assert got == [[1, 5, 6, 2], [1, 5, 6, 2], [], [1, 5, 6, 2]]
  triples = np.arange(18).reshape(6, 3)     # trailing dims: rows of 4 and 2 triples
  out, offsets, cut = tokenizers.cap_ragged(triples, np.array([0, 4, 6]), 3)
  np.testing.assert_array_equal(out, triples[[0, 1, 3, 4, 5]])
  np.testing.assert_array_equal(offsets, [0, 3, 5])
  with pytest.raises(ValueError, match=r"max_len=1: .* at least 2"):
    tokenizers.cap_ragged(triples, np.array([0, 4, 6]), 1)


def test_pad_ragged_with_trailing_dims():
  flat = np.arange(15, dtype=np.int32).reshape(5, 3) + 1
  offsets = np.array([0, 2, 2, 5])  # rows of 2, 0 and 3 triples
  out, mask = tokenizers.pad_ragged(flat, offsets, np.array([2, 1, 0]), (2, 4))
  assert out.shape == (3, 4, 3)
  np.testing.assert_array_equal(mask.sum(1), [3, 0, 2])
  np.testing.assert_array_equal(out[0, :3], flat[2:5])
  np.testing.assert_array_equal(out[2, :2], flat[0:2])
  assert (out[~mask] == 0).all()


def test_word_vocab_save_load(tmp_path):
  v = WordVocab.build(CAPTIONS, threshold=4)
  v.save(str(tmp_path / "v.json"))
  data = json.loads((tmp_path / "v.json").read_text())
  assert data["idx2word"]["5"] == "dog" and data["idx"] == 8  # SCAN's keys
  w = WordVocab.load(str(tmp_path / "v.json"))
  assert w.word2idx == v.word2idx and w.encode("a dog") == [1, 4, 5, 2]


def test_load_official_scan_vocab_json(tmp_path):
  # The layout of SCAN's f30k_precomp_vocab.json: idx2word has string keys.
  words = ["<pad>", "<start>", "<end>", "<unk>", "two", "dogs", "play"]
  official = {"word2idx": {w: i for i, w in enumerate(words)},
              "idx2word": {str(i): w for i, w in enumerate(words)},
              "idx": len(words)}
  path = tmp_path / "f30k_precomp_vocab.json"
  path.write_text(json.dumps(official))
  v = get_tokenizer("word", cache_dir=str(tmp_path), train_captions=[],
                    vocab_path=str(path))
  assert v.vocab_size == 7
  assert v.encode("Two dogs play happily") == [1, 4, 5, 6, 3, 2]
  assert v.decode([1, 4, 5, 3, 2, 0]) == "two dogs <unk>"
  bad = dict(official, word2idx={"<start>": 0, "<pad>": 1, "<end>": 2,
                                 "<unk>": 3})
  path.write_text(json.dumps(bad))
  with pytest.raises(DataError, match="'<pad>' must have id 0"):
    WordVocab.load(str(path))


@pytest.fixture(scope="module")
def sp_model():
  return SentencePieceTokenizer.train(SP_CAPTIONS, vocab_size=60, seed=0)


def test_sentencepiece_deterministic_and_round_trip(sp_model):
  again = SentencePieceTokenizer.train(SP_CAPTIONS, vocab_size=60, seed=0)
  assert again.model_proto == sp_model.model_proto
  ids, mask = sp_model.encode_batch(SP_CAPTIONS, len_buckets=(16, 32, 64))
  ids2, mask2 = again.encode_batch(SP_CAPTIONS, len_buckets=(16, 32, 64))
  np.testing.assert_array_equal(ids, ids2)
  assert 4 < sp_model.vocab_size <= 60
  lengths = mask.sum(1)
  assert (ids[:, 0] == SentencePieceTokenizer.BOS_ID).all()
  np.testing.assert_array_equal(ids[np.arange(len(ids)), lengths - 1],
                                SentencePieceTokenizer.EOS_ID)
  assert (ids[mask] != 0).all() and (ids[~mask] == 0).all()
  assert (ids != SentencePieceTokenizer.UNK_ID).all()  # full char coverage
  for caption, row, m in zip(SP_CAPTIONS, ids, mask):
    assert sp_model.decode(row[m]) == caption
  assert sp_model.decode(sp_model.encode("Two RED Dogs.")) == "two red dogs."


def test_get_tokenizer_caches(tmp_path, sp_model):
  sp = get_tokenizer("sentencepiece", cache_dir=str(tmp_path),
                     train_captions=SP_CAPTIONS, vocab_size=60)
  files = os.listdir(tmp_path)
  assert len(files) == 1 and files[0].startswith("spm_bpe_60_")
  assert sp.model_proto == sp_model.model_proto
  cached = get_tokenizer("sentencepiece", cache_dir=str(tmp_path),
                         train_captions=SP_CAPTIONS, vocab_size=60)
  assert cached.model_proto == sp.model_proto
  w1 = get_tokenizer("word", cache_dir=str(tmp_path), train_captions=CAPTIONS)
  assert w1.word2idx == WordVocab.build(CAPTIONS).word2idx
  (word_file,) = [f for f in os.listdir(tmp_path) if f.startswith("vocab_")]
  # A second call must read the cache: mark the cached file and look for it.
  marked = dict(w1.word2idx, zebra=len(w1.word2idx))
  WordVocab(marked).save(str(tmp_path / word_file))
  w2 = get_tokenizer("word", cache_dir=str(tmp_path), train_captions=CAPTIONS)
  assert w2.word2idx["zebra"] == 8
  # Other captions or settings hash to another file.
  get_tokenizer("word", cache_dir=str(tmp_path), train_captions=CAPTIONS[:-1])
  get_tokenizer("word", cache_dir=str(tmp_path), train_captions=CAPTIONS,
                word_threshold=2)
  assert len(os.listdir(tmp_path)) == 4
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
  for alias in ("bpe", "spm", "vocab"):     # no silent aliases: the message lists the kinds
    with pytest.raises(ValueError, match=r"unknown tokenizer kind .*'sentencepiece', 'word'"):
      get_tokenizer(alias, cache_dir=str(tmp_path), train_captions=CAPTIONS)


def test_word_vocab_cache_key_names_the_tokenizer(tmp_path, monkeypatch):
  # A vocabulary cached under the key of the former regular-expression
  # tokenizer (settings "word:<threshold>") must not be reused.
  stale = tmp_path / f"vocab_word_t4_{tokenizers.captions_hash(CAPTIONS, 'word:4')}.json"
  WordVocab({"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "stale": 4}).save(str(stale))
  v = get_tokenizer("word", cache_dir=str(tmp_path), train_captions=CAPTIONS)
  assert "stale" not in v.word2idx and v.word2idx == WordVocab.build(CAPTIONS).word2idx
  assert len(os.listdir(tmp_path)) == 2
  # Another tokenizer version (or nltk version) is another cache file.
  monkeypatch.setattr(tokenizers, "WORD_TOKENIZER_VERSION", "another tokenizer")
  get_tokenizer("word", cache_dir=str(tmp_path), train_captions=CAPTIONS)
  assert len(os.listdir(tmp_path)) == 3
  # Captions that differ only in Unicode form are one vocabulary (one file).
  nfd = [unicodedata.normalize("NFD", c + " café") for c in CAPTIONS]
  nfc = [unicodedata.normalize("NFC", c) for c in nfd]
  a = get_tokenizer("word", cache_dir=str(tmp_path), train_captions=nfd)
  b = get_tokenizer("word", cache_dir=str(tmp_path), train_captions=nfc)
  assert len(os.listdir(tmp_path)) == 4 and a.word2idx == b.word2idx
  assert unicodedata.normalize("NFC", "café") in a.word2idx


def test_sentencepiece_keeps_frequent_words_whole_on_a_small_vocabulary():
  # A corpus shaped like the synthetic benchmark's: few words, many sentences. The unigram
  # trainer split "orange" into letters here; BPE must keep each frequent word one piece.
  colours = ["red", "orange", "purple", "yellow", "brown"]
  things = ["dog", "boat", "bicycle", "giraffe", "table"]
  caps = [f"a {c} {t} to the left of a medium {c2} {t2}"
          for c in colours for t in things for c2 in colours for t2 in things]
  tok = SentencePieceTokenizer.train(caps * 4, vocab_size=200)
  text = "a purple giraffe to the left of a medium orange bicycle"
  ids = tok.encode_many([text])[0]
  assert [tok.decode([i]) for i in ids[1:-1]] == text.split()   # one piece per word


def test_word_tokenize_many_in_workers_equals_one_process(monkeypatch):
  monkeypatch.setattr(tokenizers, "PARALLEL_MIN_CAPTIONS", 4)
  captions = CAPTIONS * 3 + ['He said "hi" to Mr. Smith.']
  assert tokenizers.word_tokenize_many(captions, workers=2) == \
      [word_tokenize(c) for c in captions]


def test_token_ids_are_stored_once_and_keyed_by_tokenizer_and_captions(tmp_path, monkeypatch):
  vocab = WordVocab.build(CAPTIONS, 1)
  other = WordVocab.build(CAPTIONS[::-1], 1)                          # other ids: another key
  assert other.word2idx != vocab.word2idx
  first = tokenizers.encode_ragged_cached(vocab, CAPTIONS, str(tmp_path))
  want = vocab.encode_ragged(CAPTIONS)
  np.testing.assert_array_equal(first[0], want[0])
  np.testing.assert_array_equal(first[1], want[1])
  assert len(os.listdir(tmp_path / "tokens")) == 1

  def no_nltk(text):
    raise AssertionError("tokenised again")
  monkeypatch.setattr(tokenizers, "word_tokenize", no_nltk)
  again = tokenizers.encode_ragged_cached(vocab, CAPTIONS, str(tmp_path))   # read, not run
  np.testing.assert_array_equal(again[0], want[0])
  with pytest.raises(AssertionError, match="tokenised again"):     # other captions: new key
    tokenizers.encode_ragged_cached(vocab, CAPTIONS[::-1], str(tmp_path))
  with pytest.raises(AssertionError, match="tokenised again"):
    tokenizers.encode_ragged_cached(other, CAPTIONS, str(tmp_path))


def test_building_the_word_vocabulary_stores_each_groups_ids(tmp_path, monkeypatch):
  """The splits a word vocabulary is built from are tokenised once, not twice."""
  from nltk.tokenize import word_tokenize as nltk_tokenize
  train, dev = CAPTIONS[:4], CAPTIONS[4:]
  vocab = get_tokenizer("word", cache_dir=str(tmp_path), train_captions=train + dev,
                        word_threshold=1, groups=[train, dev])
  want = {tuple(g): np.concatenate(
      [[vocab.start_id] + vocab.ids(nltk_tokenize(c.lower(), preserve_line=True))
       + [vocab.end_id] for c in g]) for g in (train, dev)}
  monkeypatch.setattr(tokenizers, "word_tokenize", lambda text: 1 / 0)   # NLTK never again
  for group in (train, dev):
    flat, _ = tokenizers.encode_ragged_cached(vocab, group, str(tmp_path))
    np.testing.assert_array_equal(flat, want[tuple(group)])
