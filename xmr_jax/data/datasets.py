"""One entry point from a config to data: ``load(config) -> Dataset``.

``config.data.name``:
  * ``synthetic`` (default): the built-in benchmark, generated once into ``$XMR_DATA_DIR``
    (default ``~/.cache/xmr_jax``) with ``config.data.synthetic`` sizes;
  * ``precomp``: any directory in the SCAN precomp layout (Flickr30K, MS-COCO, ours) given by
    ``config.data.dir``.
The tokenizer is trained (sentencepiece) or built (SCAN word vocab) from the training
captions and cached beside the data, or in the cache dir when the data dir is read-only.
"""
import dataclasses
import functools
import hashlib
import os
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np

from xmr_jax import types
from xmr_jax.data import pipeline, precomp, synthetic, tokenizers


def cache_root() -> str:
  return os.path.expanduser(os.environ.get("XMR_DATA_DIR", "~/.cache/xmr_jax"))


@dataclasses.dataclass
class EvalData:
  """A split prepared for the evaluation engine."""
  k: int
  captions: List[str]
  image_batches: Callable[[], Iterator[Dict[str, np.ndarray]]]
  text_batches: Callable[[], Iterator[Dict[str, np.ndarray]]]
  img_labels: Optional[np.ndarray] = None
  cap_labels: Optional[np.ndarray] = None
  pixels: Optional[np.ndarray] = None
  boxes: Optional[np.ndarray] = None
  deps: Optional[list] = None


class Dataset:
  """Splits, tokenizer and batch makers for one config."""

  def __init__(self, config, data_dir: str):
    d = config.data
    self.config, self.data_dir = config, data_dir
    self._splits: Dict[str, precomp.PrecompSplit] = {}
    train = self.split(d.train_split)
    self.k = train.k
    tok_captions = list(train.captions)
    kind = {"vocab": "word"}.get(d.tokenizer, d.tokenizer)
    if kind == "word" and not d.vocab_path:   # SCAN builds its vocab from train + dev
      tok_captions += self.split(d.dev_split).captions
    self.tokenizer = tokenizers.get_tokenizer(
        kind, cache_dir=_writable_cache_dir(data_dir), train_captions=tok_captions,
        vocab_size=d.vocab_size, vocab_path=d.vocab_path, seed=0)
    self.deps_vocab = None
    if _needs_deps(config):
      if train.deps is None:
        raise precomp.DataError(f"{data_dir}/{d.train_split}_deps.jsonl is missing; "
                                f"{config.method} with fragments=dependency needs triples")
      self.deps_vocab = pipeline.DepsVocab.build(train.deps)
    self.with_pixels = _needs_pixels(config)
    self.with_boxes = train.boxes is not None
    info = pipeline.data_info(train, self.tokenizer, self.deps_vocab)
    vectors = None
    if d.word_embeddings:
      from xmr_jax.data import embeddings
      vectors = embeddings.load_word_vectors(d.word_embeddings, self.tokenizer,
                                             seed=config.seed)
    self.info = dataclasses.replace(info, word_vectors=vectors)

  def split(self, name: str) -> precomp.PrecompSplit:
    if name not in self._splits:
      self._splits[name] = precomp.load_split(self.data_dir, name,
                                              self.config.data.captions_per_image)
    return self._splits[name]

  @property
  def num_train_images(self) -> int:
    return self.split(self.config.data.train_split).num_images

  def _batch_kwargs(self) -> Dict[str, Any]:
    return dict(len_buckets=tuple(self.config.data.len_buckets), with_boxes=self.with_boxes,
                with_pixels=self.with_pixels, deps_vocab=self.deps_vocab)

  def train_iterator(self, batch_size: int, *, seed: int, shard_index: int = 0,
                     shard_count: int = 1):
    """Checkpointable grain iterator of training batches (distinct images)."""
    return pipeline.train_iterator(self.split(self.config.data.train_split), self.tokenizer,
                                   batch_size, seed=seed, shard_index=shard_index,
                                   shard_count=shard_count, **self._batch_kwargs())

  def sample_batch(self, batch_size: int) -> Dict[str, np.ndarray]:
    """The first training batch (for shape inference at init)."""
    ds = pipeline.train_dataset(self.split(self.config.data.train_split), self.tokenizer,
                                batch_size, seed=0, **self._batch_kwargs())
    return ds[0]

  def eval_data(self, split: str, batch_size: int, *, max_images: Optional[int] = None) -> EvalData:
    """Every image and caption of ``split`` (the first ``max_images`` images) once, in order.

    All captions are padded to one length (the smallest bucket that fits the longest caption
    of the split) so the encoded text reprs of all batches concatenate.
    """
    s = self.split(split)
    if max_images is not None and max_images < s.num_images:
      s = _head(s, max_images)
    lengths = np.diff(self.tokenizer.encode_ragged(s.captions)[1])
    bucket = (tokenizers.choose_bucket(int(lengths.max()), self.config.data.len_buckets),)
    deps_bucket = None
    if self.deps_vocab is not None:
      dl = np.diff(self.deps_vocab.encode_ragged(s.deps)[1])
      deps_bucket = (tokenizers.choose_bucket(max(int(dl.max()), 1),
                                              pipeline.DEFAULT_DEPS_BUCKETS),)
    images = functools.partial(pipeline.eval_image_batches, s, batch_size,
                               with_boxes=self.with_boxes, with_pixels=self.with_pixels)
    texts = functools.partial(pipeline.eval_text_batches, s, self.tokenizer, batch_size,
                              len_buckets=bucket, deps_vocab=self.deps_vocab,
                              **({"deps_buckets": deps_bucket} if deps_bucket else {}))
    return EvalData(k=s.k, captions=s.captions, image_batches=images, text_batches=texts,
                    img_labels=s.labels, cap_labels=s.cap_labels, pixels=s.pixels,
                    boxes=s.boxes, deps=s.deps)


def _head(s: precomp.PrecompSplit, n: int) -> precomp.PrecompSplit:
  """The first ``n`` images of a split and their captions (dev evaluation during training)."""
  cut = lambda a, rows: None if a is None else a[:rows]
  return dataclasses.replace(
      s, images=s.images[:n], captions=s.captions[:n * s.k], num_images=n,
      labels=cut(s.labels, n), cap_labels=cut(s.cap_labels, n * s.k), boxes=cut(s.boxes, n),
      pixels=cut(s.pixels, n), deps=cut(s.deps, n * s.k))


def _needs_pixels(config) -> bool:
  return config.model.get("image_input", "regions") == "pixels"


def _needs_deps(config) -> bool:
  return config.method == "defrag" and config.model.get("fragments", "dependency") == "dependency"


def _writable_cache_dir(data_dir: str) -> str:
  if os.access(data_dir, os.W_OK):
    return data_dir
  digest = hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:12]
  path = os.path.join(cache_root(), "tokenizers", digest)
  os.makedirs(path, exist_ok=True)
  return path


def resolve_data_dir(config) -> str:
  """The dataset directory for ``config`` (generating the synthetic benchmark if needed)."""
  d = config.data
  if d.name == "synthetic":
    p = d.synthetic
    return synthetic.get_or_create(seed=p.seed, n_train=p.n_train, n_dev=p.n_dev,
                                   n_test=p.n_test, pixels=p.pixels,
                                   cache_dir=d.dir or os.path.join(cache_root(), "synthetic"))
  if d.name == "precomp":
    if not d.dir:
      raise ValueError("config.data.name='precomp' needs --config.data.dir=/path/to/dataset "
                       "(a directory with {split}_ims.npy and {split}_caps.txt)")
    if not os.path.isdir(d.dir):
      raise FileNotFoundError(f"config.data.dir={d.dir!r} is not a directory")
    return d.dir
  raise ValueError(f"config.data.name={d.name!r}: use 'synthetic' or 'precomp'")


def load(config) -> Dataset:
  return Dataset(config, resolve_data_dir(config))
