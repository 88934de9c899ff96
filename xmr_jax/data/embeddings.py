"""Word vectors from a local GloVe-format text file (``word v1 v2 ... vD`` per line).

PCME and DeFrag initialise word embeddings from pretrained vectors; xmr_jax never downloads
them: point ``config.data.word_embeddings`` at a local file. The dimension D is the file's own
(read from its first vector line); whether it fits the model (``model.word_dim``) is for the
model's initialiser to check. Words missing from the file keep SCAN's default
uniform(-0.1, 0.1) init, drawn from ``seed``; ``<pad>`` (id 0) is zero.
"""
from typing import Iterator, List, Tuple

import numpy as np

from xmr_jax.data.errors import DataError
from xmr_jax.common.errors import ConfigError
from xmr_jax.data.tokenizers import WordVocab


def _is_word2vec_header(lineno: int, parts: List[str]) -> bool:
  """word2vec's text format starts with a ``<count> <dim>`` line; GloVe's does not."""
  return lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts)


def _vector_lines(path: str) -> Iterator[Tuple[int, List[str]]]:
  """(line number, fields) of each vector line; a word2vec header is skipped."""
  try:
    f = open(path, "rb")
  except FileNotFoundError as e:
    raise DataError(f"{path}: word vector file not found (config.data.word_embeddings); "
                    "give a local GloVe-format text file or leave it empty") from e
  with f:
    for lineno, raw in enumerate(f, 1):
      try:
        parts = raw.decode("utf-8").rstrip().split(" ")
      except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: not UTF-8 ({e}); GloVe files are UTF-8 text") from e
      if not _is_word2vec_header(lineno, parts):
        yield lineno, parts


def _parse_vector(values: List[str], path: str, lineno: int) -> np.ndarray:
  """The float32 vector of one line; a value that is not a finite number is a DataError."""
  try:
    vec = np.asarray(values, np.float32)
  except ValueError as e:
    raise DataError(f"{path}:{lineno}: a value is not a number ({e})") from e
  if not np.all(np.isfinite(vec)):
    raise DataError(f"{path}:{lineno}: non-finite value in the vector of this line")
  return vec


def _initial_table(vocab_size: int, dim: int, seed: int) -> np.ndarray:
  """(vocab_size, dim) float32 uniform(-0.1, 0.1) from ``seed``, row 0 (``<pad>``) zero."""
  table = np.random.default_rng(seed).uniform(-0.1, 0.1, (vocab_size, dim)).astype(np.float32)
  table[0] = 0.0
  return table


def load_word_vectors(path: str, tokenizer, *, seed: int = 0) -> np.ndarray:
  """The word-vector table for ``tokenizer``'s vocabulary from a GloVe-format file.

  Args:
    path: text file, one ``word v1 ... vD`` line per word (UTF-8, space-separated); an optional
      word2vec ``<count> <dim>`` first line is skipped. The first vector line sets D; on
      every line the last D fields are the vector and the fields before them the word, which
      may contain spaces.
    tokenizer: a :class:`~xmr_jax.data.tokenizers.WordVocab` (word ids index the rows).
    seed: seeds the uniform(-0.1, 0.1) rows of words the file lacks.

  Returns:
    (tokenizer.vocab_size, D) float32, D the number of values on the file's first vector line.

  Raises:
    ValueError: ``tokenizer`` is not a word vocabulary.
    DataError: the file is missing or not UTF-8; a line has a number of values other than D, a
      value that is not a finite number; the file has no vector or no word of the vocabulary.
  """
  if not isinstance(tokenizer, WordVocab):
    raise ConfigError("config.data.word_embeddings needs word tokens: set "
                     "--config.data.tokenizer=word (sentencepiece pieces are not words)")
  table, dim, first, found = None, 0, 0, 0
  for lineno, parts in _vector_lines(path):
    if table is None:
      if len(parts) < 2:
        raise DataError(f"{path}:{lineno}: expected a word and its numbers, got {parts[0]!r} "
                        f"alone")
      dim, first = len(parts) - 1, lineno
      table = _initial_table(tokenizer.vocab_size, dim, seed)
    elif len(parts) < dim + 1:
      raise DataError(f"{path}:{lineno}: expected a word and {dim} numbers (as on line {first}, "
                      f"which sets the dimension), got {len(parts) - 1} numbers")
    # The vector is the last D fields and the word all before them: glove.840B.300d has
    # words with spaces in them ("at name@domain.com", ". . .").
    word, values = " ".join(parts[:-dim]), parts[-dim:]
    idx = tokenizer.word2idx.get(word)
    if idx is not None and idx != 0:
      table[idx] = _parse_vector(values, path, lineno)
      found += 1
  if table is None:
    raise DataError(f"{path}: no word vectors in the file (expected 'word v1 ... vD' lines)")
  if found == 0:
    raise DataError(f"{path}: no word of the vocabulary ({tokenizer.vocab_size} ids) was found")
  return table
