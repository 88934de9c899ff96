"""Word vectors from GloVe-format files: the file's own dimension, seeded fill, clear errors."""
import numpy as np
import pytest

from xmr_jax.data import embeddings
from xmr_jax.data.errors import DataError
from xmr_jax.data.tokenizers import WordVocab

VOCAB = WordVocab.build(["a red dog", "a blue cat", "a red cat"], 1)


def _write(tmp_path, lines, name="vectors.txt"):
  path = tmp_path / name
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return str(path)


def test_dimension_comes_from_the_file(tmp_path):
  # 7 values per line: no model config or dim argument says so.
  lines = ["dog " + " ".join(str(i / 10) for i in range(7)),
           "zebra " + " ".join(["1.5"] * 7),        # not in the vocabulary: ignored
           "red " + " ".join(["-2"] * 7)]
  table = embeddings.load_word_vectors(_write(tmp_path, lines), VOCAB)
  assert table.shape == (VOCAB.vocab_size, 7) and table.dtype == np.float32
  np.testing.assert_array_equal(table[VOCAB.word2idx["dog"]], np.arange(7, dtype=np.float32) / 10)
  np.testing.assert_array_equal(table[VOCAB.word2idx["red"]], np.full(7, -2, np.float32))
  np.testing.assert_array_equal(table[0], 0)                       # <pad>
  others = np.delete(table, [0, VOCAB.word2idx["dog"], VOCAB.word2idx["red"]], axis=0)
  assert np.all(np.abs(others) <= 0.1) and np.any(others != 0)    # SCAN's uniform(-0.1, 0.1)
  table3 = embeddings.load_word_vectors(_write(tmp_path, ["cat 1 2 3"], "v3.txt"), VOCAB)
  assert table3.shape == (VOCAB.vocab_size, 3)


def test_missing_rows_follow_the_seed(tmp_path):
  path = _write(tmp_path, ["dog 1 2 3 4"])
  a = embeddings.load_word_vectors(path, VOCAB, seed=0)
  b = embeddings.load_word_vectors(path, VOCAB, seed=0)
  c = embeddings.load_word_vectors(path, VOCAB, seed=1)
  np.testing.assert_array_equal(a, b)
  dog = VOCAB.word2idx["dog"]
  np.testing.assert_array_equal(a[dog], c[dog])
  missing = [i for i in range(1, VOCAB.vocab_size) if i != dog]
  assert not np.array_equal(a[missing], c[missing])
  # The fill rule itself: uniform(-0.1, 0.1) drawn first from default_rng(seed).
  want = np.random.default_rng(1).uniform(-0.1, 0.1, (VOCAB.vocab_size, 4)).astype(np.float32)
  np.testing.assert_array_equal(c[missing], want[missing])


def test_line_with_other_dimension_names_file_and_line(tmp_path):
  path = _write(tmp_path, ["dog 1 2 3", "cat 1 2 3", "red 1 2"])
  with pytest.raises(DataError, match=r"vectors.txt:3: expected a word and 3 numbers \(as on "
                                      r"line 1.*got 2 numbers"):
    embeddings.load_word_vectors(path, VOCAB)


def test_a_word_with_spaces_is_all_fields_before_the_vector(tmp_path):
  """glove.840B.300d has words with spaces: the last D fields are the vector."""
  vocab = WordVocab({"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "dog": 4,
                     ". . .": 5, "at name@domain.com": 6})
  path = _write(tmp_path, ["dog 1 2 3", ". . . 4 5 6", "at name@domain.com 7 8 9"])
  table = embeddings.load_word_vectors(path, vocab)
  np.testing.assert_array_equal(table[5], [4, 5, 6])
  np.testing.assert_array_equal(table[6], [7, 8, 9])


def test_word2vec_header_is_skipped_and_sets_nothing(tmp_path):
  table = embeddings.load_word_vectors(_write(tmp_path, ["2 3", "dog 1 2 3", "cat 4 5 6"]),
                                       VOCAB)
  assert table.shape == (VOCAB.vocab_size, 3)
  np.testing.assert_array_equal(table[VOCAB.word2idx["cat"]], [4, 5, 6])


@pytest.mark.parametrize("lines, match", [
    (["dog 1 x 3"], r":1: a value is not a number"),
    (["dog 1 nan 3"], r":1: non-finite value"),
    (["dog"], r":1: expected a word and its numbers, got 'dog' alone"),
    ([], r"no word vectors in the file"),
    (["zebra 1 2"], r"no word of the vocabulary"),
])
def test_bad_files_are_data_errors_naming_the_file(tmp_path, lines, match):
  path = _write(tmp_path, lines)
  with pytest.raises(DataError, match=match) as e:
    embeddings.load_word_vectors(path, VOCAB)
  assert path in str(e.value)


def test_missing_file_and_latin1_file(tmp_path):
  with pytest.raises(DataError, match=r"not found \(config.data.word_embeddings\)"):
    embeddings.load_word_vectors(str(tmp_path / "nope.txt"), VOCAB)
  path = tmp_path / "latin1.txt"
  path.write_bytes("dog 1 2\ncaf\xe9 3 4\n".encode("latin-1"))
  with pytest.raises(DataError, match=r"latin1.txt:2: not UTF-8"):
    embeddings.load_word_vectors(str(path), VOCAB)


def test_sentencepiece_tokens_are_refused(tmp_path):
  with pytest.raises(ValueError, match="config.data.tokenizer=word"):
    embeddings.load_word_vectors(_write(tmp_path, ["dog 1"]), object())
