"""Word vectors from a local GloVe-format text file (``word v1 v2 ... vD`` per line).

PCME and DeFrag initialise word embeddings from pretrained vectors; xmr_jax never downloads
them: point ``config.data.word_embeddings`` at a local file. Words missing from the file keep
the default uniform(-0.1, 0.1) init (SCAN's), ``<pad>`` is zero.
"""
import numpy as np

from xmr_jax.data.precomp import DataError
from xmr_jax.data.tokenizers import WordVocab


def load_word_vectors(path: str, tokenizer, dim: int, *, seed: int = 0) -> np.ndarray:
  """(vocab_size, dim) float32 table for ``tokenizer`` (a WordVocab) from a GloVe file."""
  if not isinstance(tokenizer, WordVocab):
    raise ValueError("config.data.word_embeddings needs word tokens: set "
                     "--config.data.tokenizer=word (sentencepiece pieces are not words)")
  rng = np.random.default_rng(seed)
  table = rng.uniform(-0.1, 0.1, (tokenizer.vocab_size, dim)).astype(np.float32)
  table[0] = 0.0
  found = 0
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      try:
        parts = raw.decode("utf-8").rstrip().split(" ")
      except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: not UTF-8 ({e}); GloVe files are UTF-8 text") from e
      if len(parts) != dim + 1:
        if lineno == 1 and len(parts) == 2:   # word2vec-style "count dim" header line
          continue
        raise DataError(f"{path}:{lineno}: expected a word and {dim} numbers "
                        f"(config.model.word_dim), got {len(parts) - 1} numbers")
      idx = tokenizer.word2idx.get(parts[0])
      if idx is not None and idx != 0:
        vec = np.asarray(parts[1:], np.float32)
        if not np.all(np.isfinite(vec)):
          raise DataError(f"{path}:{lineno}: non-finite value in the vector of {parts[0]!r}")
        table[idx] = vec
        found += 1
  if found == 0:
    raise DataError(f"{path}: no word of the vocabulary ({tokenizer.vocab_size} ids) was found")
  return table
