"""Input pipelines over a :class:`~xmr_jax.data.precomp.PrecompSplit`.

Training (:func:`train_dataset`, :func:`train_iterator`): a grain
``MapDataset`` whose element ``i`` is (this process's shard of) global batch
``i``. Global batch ``i`` of epoch ``e = i // steps_per_epoch`` holds B distinct
images, consecutive in a per-epoch permutation of all images (seeded by
``(seed, e)``; the last ``N mod B`` images of each permutation are dropped), each
paired with one of its k captions chosen by a hash of ``(seed, e, image)``, so
an image's caption is drawn anew each epoch yet every batch is a pure
function of ``(seed, i)``; rows are sorted by image index (file order). That makes the grain iterator's state (the next
index) a complete checkpoint and lets any process read only its rows.

This differs from the official VSE++ / SCAN / SGRAF loaders, which shuffle
(image, caption) pairs so one epoch visits every caption (k x N pairs) and a
batch can hold the same image twice, making a positive pair count as a
negative in the in-batch triplet loss. Here an epoch visits every image once
(N // B steps, 1/k of an official epoch), so batches hold distinct images and
every in-batch negative is a true negative.

Evaluation (:func:`eval_image_batches`, :func:`eval_text_batches`): every image
(caption) once in file order; the last batch is padded to full size by
repeating its last item and flagged with the ``valid`` (B,) bool key, so a
jitted encoder compiles once per token bucket.

Batch keys and dtypes follow :mod:`xmr_jax.types`.
"""
import collections
import json
import re
import threading
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import grain
import numpy as np

from xmr_jax import types
from xmr_jax.common.io import atomic_write_bytes
from xmr_jax.data import photos as photos_lib, precomp
from xmr_jax.data.errors import DataError
from xmr_jax.data.precomp import PrecompSplit
from xmr_jax.common.errors import ConfigError
from xmr_jax.data.tokenizers import (DEFAULT_BUCKETS, WordVocab, cap_ragged, pad_ragged,
                                     ragged_from_lists)

DEFAULT_DEPS_BUCKETS = (8, 16, 32)
Batch = Dict[str, np.ndarray]

# Stanford-style dependency words carry their position ("dog-2"); drop it.
_POSITION_SUFFIX = re.compile(r"-\d+$")


def normalize_dep_word(word: str) -> str:
  """A dependency word as the word tokenizer writes caption words.

  :func:`~xmr_jax.data.precomp.normalize_caption` (NFC, invisible ends trimmed)
  and lower-case, as :func:`~xmr_jax.data.tokenizers.word_tokenize` does; then
  a ``-<position>`` suffix is dropped ("Dog-2" -> "dog").
  """
  return _POSITION_SUFFIX.sub("", precomp.normalize_caption(word).lower())


class DepsVocab:
  """Vocabularies for dependency triples [relation, head, dependent].

  Relations: ``<pad>`` = 0, ``<unk>`` = 1, then relations in order of first
  appearance. Words: a :class:`WordVocab` (``<unk>`` = 3 for unknown words).
  """
  PAD, UNK = "<pad>", "<unk>"

  def __init__(self, rel2idx: Dict[str, int], words: WordVocab):
    self.rel2idx = dict(rel2idx)
    self.words = words

  @property
  def num_relations(self) -> int:
    """Number of relation ids, ``<pad>`` and ``<unk>`` included."""
    return len(self.rel2idx)

  @property
  def word_vocab_size(self) -> int:
    """Size of the head/dependent word vocabulary (:class:`WordVocab`)."""
    return self.words.vocab_size

  @classmethod
  def build(cls, deps: Sequence[Sequence[Tuple[str, str, str]]],
            threshold: int = 4, relation_threshold: int = 1) -> "DepsVocab":
    """From training triples.

    Words are kept when seen ``threshold`` times, relations when seen
    ``relation_threshold`` times (default: every relation type, since DeFrag
    gives each type its own weights); others map to ``<unk>``.
    """
    counts = collections.Counter(r for triples in deps for r, _, _ in triples)
    rel2idx = {cls.PAD: 0, cls.UNK: 1}
    for rel, count in counts.items():  # first-appearance order
      if count >= relation_threshold and rel not in rel2idx:
        rel2idx[rel] = len(rel2idx)
    words = WordVocab.from_tokens(
        ([normalize_dep_word(h), normalize_dep_word(d)]
         for triples in deps for _, h, d in triples), threshold)
    return cls(rel2idx, words)

  def save(self, path: str) -> None:
    """Writes {"relations": rel2idx, "words": SCAN-style word vocab}."""
    data = {"relations": self.rel2idx, "words": {"word2idx":
                                                  self.words.word2idx}}
    atomic_write_bytes(path, json.dumps(data).encode("utf-8"))

  @classmethod
  def load(cls, path: str) -> "DepsVocab":
    """Reads a vocabulary written by :meth:`save`.

    Raises DataError (naming ``path``) if it is unreadable or not such a json.
    """
    try:
      with open(path, "r", encoding="utf-8") as f:
        data = json.load(f)
      rel2idx = {str(r): int(i) for r, i in data["relations"].items()}
      word2idx = {str(w): int(i) for w, i in data["words"]["word2idx"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
      raise DataError(f"{path}: not a deps vocabulary json ({e!r}); rebuild "
                      "it with DepsVocab.build(train_split.deps).") from e
    return cls(rel2idx, WordVocab(word2idx, source=path))

  def encode_many(self, deps: Sequence[Sequence[Tuple[str, str, str]]]
                  ) -> List[List[Tuple[int, int, int]]]:
    """Per caption, its triples as (relation id, head id, dependent id).

    Words are normalised (:func:`normalize_dep_word`); unknown relations and
    words map to their ``<unk>`` ids.
    """
    rel, unk = self.rel2idx.get, self.rel2idx[self.UNK]
    word, wunk = self.words.word2idx.get, self.words.unk_id
    return [[(rel(r, unk), word(normalize_dep_word(h), wunk),
              word(normalize_dep_word(d), wunk)) for r, h, d in triples]
            for triples in deps]

  def encode_ragged(self, deps) -> Tuple[np.ndarray, np.ndarray]:
    """All triples as (flat (M, 3) int32, offsets (n + 1,) int64)."""
    flat, offsets = ragged_from_lists(
        [[x for t in triples for x in t] for triples in self.encode_many(deps)])
    return flat.reshape(-1, 3), offsets // 3


def _gather(array: np.ndarray, index: np.ndarray) -> np.ndarray:
  """``array[index]`` read from a memory map in file order.

  Increasing indices (training batches are sorted, eval batches contiguous)
  are read with one fancy index; others read each row once, then reorder.
  """
  if np.all(np.diff(index) > 0):
    return np.asarray(array[index])
  unique, inverse = np.unique(index, return_inverse=True)
  return np.asarray(array[unique])[inverse]


class _Reader:
  """Gathers batches of one split: features, pre-encoded tokens and deps.

  ``max_caption_len`` > 0 cuts longer captions to that many tokens, the end token kept
  last (:func:`~xmr_jax.data.tokenizers.cap_ragged`); 0 keeps every caption whole. A
  caption (or triple list) longer than the largest bucket is a ValueError at batch time.
  """

  def __init__(self, split: PrecompSplit, tokenizer=None, *,
               len_buckets: Sequence[int] = DEFAULT_BUCKETS,
               with_boxes: bool = False, with_pixels: bool = False,
               with_photos: bool = False, augment_seed: Optional[int] = None,
               deps_vocab: Optional[DepsVocab] = None,
               deps_buckets: Sequence[int] = DEFAULT_DEPS_BUCKETS,
               max_caption_len: int = 0, tokens=None, text_states=None):
    self.split = split
    # Photos (model.image_input=photos) are augmented in training (data/photos.py) with
    # draws keyed by (augment_seed, step, image); evaluation (None) reads them as stored.
    self.with_photos = with_photos and split.photos is not None
    self.augment_seed = augment_seed
    self.len_buckets = tuple(len_buckets)
    self.deps_buckets = tuple(deps_buckets)
    self.with_boxes = with_boxes and split.boxes is not None
    self.with_pixels = with_pixels and split.pixels is not None
    # Encode every caption once (or take the ids the dataset encoded once: ``tokens``);
    # batches then only gather and pad.
    if tokens is None and tokenizer is not None:
      tokens = tokenizer.encode_ragged(split.captions)
    self.tokens = tokens
    if self.tokens is not None and max_caption_len:
      self.tokens = cap_ragged(*self.tokens, max_caption_len)[:2]
    # A frozen text tower's (T, D) token vectors, row for row with the (cut) token ids.
    self.text_states = text_states
    self.deps = None
    if deps_vocab is not None:
      if split.deps is None:
        raise DataError(
            f"{split.data_dir}/{split.split}_deps.jsonl: not found, but "
            "dependency triples were requested (DeFrag needs them). Write one "
            "JSON list of [relation, head, dependent] triples per caption.")
      self.deps = deps_vocab.encode_ragged(split.deps)

  def images(self, image_index: np.ndarray, step: int = 0) -> Batch:
    """Image-side arrays for these image rows (checked for NaN/Inf); ``step`` keys the
    augmentation of training photos."""
    regions = _gather(self.split.images, image_index)
    precomp.check_finite(regions, image_index, self.split.images_path)
    out = {"regions": regions.astype(np.float32, copy=False),
           "region_mask": (np.ones(regions.shape[:2], bool) if self.split.region_mask is None
                           else _gather(self.split.region_mask, image_index)),
           "image_index": image_index.astype(np.int32)}
    if self.with_boxes:
      out["boxes"] = _gather(self.split.boxes, image_index).astype(
          np.float32, copy=False)
    if self.with_pixels:
      out["pixels"] = _gather(self.split.pixels, image_index)
    if self.with_photos:
      out["photos"] = _gather(self.split.photos, image_index)
      if self.augment_seed is not None:
        out["photos"] = photos_lib.augment(out["photos"], image_index,
                                           seed=self.augment_seed, step=step)
    return out

  def texts(self, caption_index: np.ndarray) -> Batch:
    """Text-side arrays for these caption rows."""
    out = {"caption_index": caption_index.astype(np.int32)}
    if self.tokens is not None:
      ids, mask = pad_ragged(*self.tokens, caption_index, self.len_buckets)
      out["tokens"], out["token_mask"] = ids.astype(np.int32), mask
      if self.text_states is not None:
        out["text_states"] = pad_ragged(self.text_states, self.tokens[1], caption_index,
                                        self.len_buckets)[0]
    if self.deps is not None:
      deps, mask = pad_ragged(*self.deps, caption_index, self.deps_buckets)
      out["deps"], out["deps_mask"] = deps.astype(np.int32), mask
    return out


def _mix64(*parts) -> np.ndarray:
  """Counter-based hash (splitmix64 finaliser) of integer arrays, uint64."""
  x = np.zeros(np.broadcast(*parts).shape, np.uint64)
  with np.errstate(over="ignore"):
    for p in parts:
      x = x * np.uint64(0x9E3779B97F4A7C15) + np.asarray(p, np.uint64)
      x ^= x >> np.uint64(30)
      x *= np.uint64(0xBF58476D1CE4E5B9)
      x ^= x >> np.uint64(27)
      x *= np.uint64(0x94D049BB133111EB)
      x ^= x >> np.uint64(31)
  return x


class EpochPlan:
  """Which images and captions form global batch ``step`` (pure function)."""

  def __init__(self, num_images: int, k: int, batch_size: int, seed: int):
    if batch_size > num_images:
      raise ConfigError(f"batch_size {batch_size} exceeds the {num_images} "
                       "images of the split; batches hold distinct images.")
    self.num_images, self.k = num_images, k
    self.batch_size, self.seed = batch_size, seed
    self.steps_per_epoch = num_images // batch_size
    self._cache: Dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def permutation(self, epoch: int) -> np.ndarray:
    """The image order of ``epoch`` (cached: one O(N) shuffle per epoch)."""
    with self._lock:  # grain reads batches from several threads
      perm = self._cache.get(epoch)
      if perm is None:
        perm = np.random.default_rng([self.seed, epoch]).permutation(
            self.num_images)
        if len(self._cache) >= 4:  # threads may straddle an epoch end
          self._cache.pop(min(self._cache))
        self._cache[epoch] = perm
    return perm

  def global_batch(self, step: int) -> Tuple[np.ndarray, np.ndarray]:
    """(image_index (B,), caption_index (B,)) of global batch ``step``.

    The pipeline reads each batch sorted by image index.
    """
    epoch, pos = divmod(int(step), self.steps_per_epoch)
    b = self.batch_size
    images = self.permutation(epoch)[pos * b:(pos + 1) * b]
    choice = _mix64(self.seed, epoch, images) % np.uint64(self.k)
    return images, images * self.k + choice.astype(np.int64)


def train_dataset(split: PrecompSplit, tokenizer, batch_size: int, *,
                  seed: int = 0, shard_index: int = 0, shard_count: int = 1,
                  len_buckets: Sequence[int] = DEFAULT_BUCKETS,
                  with_boxes: bool = False, with_pixels: bool = False,
                  with_photos: bool = False,
                  deps_vocab: Optional[DepsVocab] = None,
                  deps_buckets: Sequence[int] = DEFAULT_DEPS_BUCKETS,
                  max_caption_len: int = 0, tokens=None,
                  text_states=None) -> grain.MapDataset:
  """Infinite training dataset; element i = this shard of global batch i.

  Args:
    split: the training split.
    tokenizer: WordVocab or SentencePieceTokenizer (see tokenizers.py).
    batch_size: GLOBAL batch size B (distinct images per global batch).
    seed: fixes the per-epoch image order and caption choice.
    shard_index, shard_count: this process reads rows
      [shard_index * B / shard_count, (shard_index + 1) * B / shard_count)
      of every global batch (``jax.process_index()``/``process_count()``).
    len_buckets, deps_buckets: padded lengths allowed for tokens / triples; a
      longer caption (triple list) is a ValueError when its batch is made, never cut.
    with_boxes, with_pixels, with_photos: add those keys when the split has them; photos
      are augmented (random resized crop + flip, keyed by ``(seed, i, image)``).
    deps_vocab: add ``deps``/``deps_mask`` encoded with it.
    max_caption_len: > 0 cuts longer captions to this many tokens, keeping the end
      token last (:func:`~xmr_jax.data.tokenizers.cap_ragged`); 0 = no cap.
    tokens: the split's captions already encoded by ``tokenizer`` as (flat int32, offsets
      int64) (``Dataset`` encodes each split once); None encodes them here.
    text_states: (T, D) float32 token vectors of a frozen text tower, row for row with the
      ids after ``max_caption_len`` (``Dataset.use_text_states``): batches then carry
      ``text_states`` (B, L, D), padding zero; None: no such key.
  """
  if batch_size % shard_count or not 0 <= shard_index < shard_count:
    raise ConfigError(f"batch_size {batch_size} must split evenly into "
                     f"{shard_count} shards and 0 <= shard_index "
                     f"({shard_index}) < shard_count.")
  plan = EpochPlan(split.num_images, split.k, batch_size, seed)
  reader = _Reader(split, tokenizer, len_buckets=len_buckets,
                   with_boxes=with_boxes, with_pixels=with_pixels,
                   with_photos=with_photos, augment_seed=seed,
                   deps_vocab=deps_vocab, deps_buckets=deps_buckets,
                   max_caption_len=max_caption_len, tokens=tokens,
                   text_states=text_states)
  per_shard = batch_size // shard_count
  rows = slice(shard_index * per_shard, (shard_index + 1) * per_shard)

  def make_batch(step: int, _) -> Batch:
    images, captions = plan.global_batch(step)
    # Order inside a batch carries no meaning and file order reads fastest;
    # sorting the global batch keeps shards a partition of it.
    order = np.argsort(images)[rows]
    return {**reader.images(images[order], step), **reader.texts(captions[order])}

  return (grain.MapDataset.range(plan.steps_per_epoch).repeat(None)
          .map_with_index(make_batch))


def train_iterator(split: PrecompSplit, tokenizer, batch_size: int, *,
                   num_threads: int = 2, prefetch: int = 4,
                   **kwargs) -> grain.DatasetIterator:
  """Checkpointable iterator over :func:`train_dataset` (same kwargs).

  ``it.get_state()`` / ``it.set_state(state)`` save and restore the position;
  a restored iterator yields exactly the batches that followed the save.
  ``prefetch`` counts whole batches, so keep it small for large batches.
  """
  ds = train_dataset(split, tokenizer, batch_size, **kwargs)
  options = grain.ReadOptions(num_threads=num_threads,
                              prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(options))


def _padded_ranges(n: int, batch_size: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
  """(index (B,), valid (B,)) per batch; the tail repeats the last index."""
  for start in range(0, n, batch_size):
    index = np.arange(start, start + batch_size)
    valid = index < n
    yield np.minimum(index, n - 1), valid


def eval_image_batches(split: PrecompSplit, batch_size: int, *,
                       with_boxes: bool = False, with_pixels: bool = False,
                       with_photos: bool = False) -> Iterator[Batch]:
  """Every image once, in file order, in full batches with a ``valid`` mask (photos as
  stored: no augmentation)."""
  reader = _Reader(split, None, with_boxes=with_boxes, with_pixels=with_pixels,
                   with_photos=with_photos)
  for index, valid in _padded_ranges(split.num_images, batch_size):
    yield {**reader.images(index), "valid": valid}


def eval_text_batches(split: PrecompSplit, tokenizer, batch_size: int, *,
                      len_buckets: Sequence[int] = DEFAULT_BUCKETS,
                      deps_vocab: Optional[DepsVocab] = None,
                      deps_buckets: Sequence[int] = DEFAULT_DEPS_BUCKETS,
                      max_caption_len: int = 0, tokens=None,
                      text_states=None) -> Iterator[Batch]:
  """Every caption once, in file order, in full batches with ``valid``.

  ``image_index`` is the caption's image (caption // k). ``len_buckets``,
  ``deps_buckets``, ``max_caption_len``, ``tokens`` and ``text_states`` as in
  :func:`train_dataset`.
  """
  reader = _Reader(split, tokenizer, len_buckets=len_buckets,
                   deps_vocab=deps_vocab, deps_buckets=deps_buckets,
                   max_caption_len=max_caption_len, tokens=tokens, text_states=text_states)
  for index, valid in _padded_ranges(split.num_captions, batch_size):
    batch = reader.texts(index)
    batch["image_index"] = (index // split.k).astype(np.int32)
    batch["valid"] = valid
    yield batch


def data_info(split: PrecompSplit, tokenizer,
              deps_vocab: Optional[DepsVocab] = None) -> types.DataInfo:
  """What a model needs to size its parameters for this dataset."""
  return types.DataInfo(
      vocab_size=tokenizer.vocab_size,
      region_dim=int(split.images.shape[2]),
      num_regions=int(split.images.shape[1]),
      word_vocab_size=deps_vocab.word_vocab_size if deps_vocab else 0,
      num_relations=deps_vocab.num_relations if deps_vocab else 0,
      image_size=(tuple(int(s) for s in split.pixels.shape[1:3])
                  if split.pixels is not None else None),
      photo_size=int(split.photos.shape[1]) if split.photos is not None else 0)
