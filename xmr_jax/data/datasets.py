"""One entry point from the data config to data: ``open_dataset(config.data, needs=...)``.

``open_dataset`` reads only the ``config.data`` section; what a method needs beyond region
features and tokens comes as ``needs`` (a frozenset of :data:`NEEDS`), never from the model
config. ``data.name``:

  * ``synthetic`` (default): the built-in benchmark, generated once into ``$XMR_DATA_DIR``
    (default ``~/.cache/xmr_jax``) with ``data.synthetic`` sizes;
  * ``precomp``: any directory in the SCAN precomp layout (Flickr30K, MS-COCO, ours, a CUB
    export) given by ``data.dir``.

The tokenizer (``data.tokenizer``, one of :data:`~xmr_jax.data.tokenizers.TOKENIZER_KINDS`) is
trained (sentencepiece) or built (SCAN word vocab) from the training captions and cached
beside the data, or in the cache dir when the data dir is read-only.

Opening reads every split up front (features as memory maps, so only their headers): the
configured ``train_split``, ``dev_split`` and ``test_split`` and any other ``{split}_ims.npy``
(e.g. ``testall``). Each must agree with the training split (feature dtype and dimension,
region count, k, optional files, label classes, pixel size), else one DataError names the file;
and the caption length buckets grow to the longest caption of them all
(:attr:`Dataset.len_buckets`), since no caption is cut unless ``data.max_caption_len`` says so.
"""
import dataclasses
import functools
import hashlib
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np

from xmr_jax.common.errors import ConfigError
from xmr_jax.common.io import cache_root
from xmr_jax.data.errors import DataError

from xmr_jax.data import embeddings, pipeline, precomp, synthetic, text_states, tokenizers

# Optional batch inputs a method may need: rendered ``pixels``, dependency triples ``deps``
# (DeFrag), region ``boxes``. A needed input missing from the data is a DataError up front.
NEEDS = frozenset({"pixels", "deps", "boxes", "photos"})
DATA_NAMES = ("synthetic", "precomp", "images")

_MISSING = {
    "pixels": ("pixels.npy", "the method reads pixels (model.image_input='pixels'): use data "
                             "with (N, H, W, 3) uint8 pixels (data.synthetic.pixels=True, or a "
                             "CUB pixels export) or model.image_input='regions'"),
    "deps": ("deps.jsonl", "the method reads dependency triples (DeFrag with "
                           "fragments='dependency'): write one JSON list of [relation, head, "
                           "dependent] triples per caption"),
    "boxes": ("boxes.npy", "the method reads region boxes: write (N, R, 4) float32 boxes "
                           "x0, y0, x1, y1 in [0, 1]"),
    "photos": ("photos.npy", "the model runs the backbone on photos (model.image_input="
                             "'photos'): train on a photo folder (data.name=images, which "
                             "writes them) or use model.image_input='regions'"),
}


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


def check_needs(needs) -> frozenset:
  """``needs`` as a frozenset of :data:`NEEDS` names; ValueError for anything else."""
  if isinstance(needs, str):
    raise ConfigError(f"open_dataset(needs={needs!r}): needs is a set of names, e.g. "
                     f"frozenset({{{needs!r}}}), not a string")
  needs = frozenset(needs)
  unknown = needs - NEEDS
  if unknown:
    raise ConfigError(f"open_dataset(needs=...): unknown {sorted(unknown)}; the optional batch "
                     f"inputs are {sorted(NEEDS)}")
  return needs


def _check_choice(key: str, value: str, choices, removed: Dict[str, str]) -> str:
  """``value`` if it is one of ``choices``; else a ValueError naming ``config.<key>``, and for
  a removed option (``removed``: value -> what to use instead) the replacement."""
  if value in removed:
    raise ConfigError(f"config.{key}={value!r} was removed: {removed[value]}")
  if value not in choices:
    raise ConfigError(f"config.{key}={value!r} is unknown; choose one of {list(choices)}")
  return value


def check_tokenizer(name: str) -> str:
  """``data.tokenizer`` if it is a tokenizer kind; else a ValueError naming the key and choices."""
  return _check_choice("data.tokenizer", name, tokenizers.TOKENIZER_KINDS, {
      "vocab": "use --config.data.tokenizer=word (the SCAN word vocabulary; "
               "config.data.vocab_path may name an official vocab json)"})


# data.vocab_path suffix -> (tokenizer kind it implies, what such a file is).
VOCAB_SUFFIXES = {".json": ("word", "SCAN/VSE++ word vocabulary"),
                  ".model": ("sentencepiece", "sentencepiece model")}


def _suffix(path: str) -> str:
  return os.path.splitext(path)[1].lower()


def tokenizer_kind(data_config) -> str:
  """The tokenizer a data config uses: ``data.tokenizer``, or the kind ``data.vocab_path``
  implies (``.json``: the SCAN word vocabulary the official checkpoints need; ``.model``: a
  sentencepiece model). ConfigError for an unknown kind, a missing file or another suffix."""
  kind = check_tokenizer(data_config.tokenizer)
  path = data_config.vocab_path
  if not path:
    return kind
  if not os.path.isfile(path):
    raise ConfigError(f"config.data.vocab_path={path!r}: no such file; give a SCAN/VSE++ word "
                      f"vocabulary (.json) or a sentencepiece model (.model), or leave it empty "
                      f"to build one from the training captions")
  if _suffix(path) not in VOCAB_SUFFIXES:
    raise ConfigError(f"config.data.vocab_path={path!r}: expected a .json word vocabulary or "
                      f"a .model sentencepiece model")
  return VOCAB_SUFFIXES[_suffix(path)][0]


def _say(message: str) -> None:
  """A notice the user should see once, on stderr (not also through absl's log, which prints
  to stderr too inside an absl app and so would show it twice)."""
  print(f"xmr_jax: {message}", file=sys.stderr, flush=True)


def check_name(name: str) -> str:
  """``data.name`` if it is a data source; else a ValueError naming the key and the fix."""
  return _check_choice("data.name", name, DATA_NAMES, {
      "tfds": "build the dataset and export it to the SCAN precomp layout (for CUB: python -m "
              "xmr_jax.data.cub_export --manual-dir M --data-dir D --out DIR), then set "
              "--config.data.name=precomp --config.data.dir=DIR"})


def _require(split: precomp.PrecompSplit, needs: frozenset) -> None:
  """DataError naming the missing file if ``split`` lacks an input in ``needs``."""
  for need in sorted(needs):
    if getattr(split, need) is None:
      suffix, why = _MISSING[need]
      raise DataError(f"{split.data_dir}/{split.split}_{suffix} is missing; {why}")


class Dataset:
  """Splits, tokenizer and batch makers for one data config (``config.data``).

  Opening checks every split against the training split (:func:`precomp.check_agreement`)
  and fits the length buckets to the longest caption of all splits, so nothing trains to
  the end on data that cannot be evaluated, and no caption is cut unless
  ``data.max_caption_len`` asks for it.

  Attributes:
    data_config: the ``config.data`` ConfigDict this dataset was opened with (read only).
    data_dir: the dataset directory (SCAN precomp layout).
    needs: the optional inputs batches carry (:data:`NEEDS`); boxes also come whenever the
      training split has them.
    k: captions per image.
    tokenizer: WordVocab or SentencePieceTokenizer.
    split_names: every split opened: ``data.train_split``, ``dev_split``, ``test_split``
      and any other ``{split}_ims.npy`` in ``data_dir`` (e.g. ``testall``).
    len_buckets: the effective caption length buckets, sorted: ``data.len_buckets`` plus,
      if the longest tokenised caption of any split (after ``max_caption_len``) exceeds
      them, one bucket for it rounded up to a multiple of 16. Every batch (training,
      sample, evaluation) is padded to one of these; use ``max(len_buckets)``, not the
      config's, for a fixed caption length.
    deps_buckets: the same for dependency triples per caption
      (``pipeline.DEFAULT_DEPS_BUCKETS`` fitted to the data), None without ``deps``.
    max_caption_len: ``data.max_caption_len`` (0 = no cap).
    cut_captions: {split: number of captions longer than ``max_caption_len``, cut to it},
      only splits with cut captions; empty when nothing is cut.
    info: :class:`~xmr_jax.types.DataInfo`; ``word_vectors`` is (vocab_size, D) float32 from
      ``data.word_embeddings`` (D the file's dimension) or None.
  """

  def __init__(self, data_config, data_dir: str, *, needs=frozenset(), seed: int = 0,
               tokenizer=None, deps_vocab=None):
    """Opens every split, builds the tokenizer, checks ``needs`` and fits the buckets.

    ``tokenizer`` / ``deps_vocab``: use these (a trained workdir's own) instead of building
    them from the training split.

    Raises:
      ValueError: unknown ``needs`` or ``data.tokenizer``, bad ``data.max_caption_len`` or
        ``data.len_buckets``.
      DataError: a split file is missing or malformed, a split disagrees with the training
        split, or the training split lacks a needed input.
    """
    d = data_config
    self.data_config, self.data_dir = d, data_dir
    self.needs = check_needs(needs)
    # .get: configs saved by workdirs trained before the key existed lack it.
    self.max_caption_len = check_max_caption_len(d.get("max_caption_len", 0))
    self._splits = _open_splits(data_dir, d)
    self.split_names = list(self._splits)
    train = self._splits[d.train_split]
    self.k = train.k
    self.tokenizer = tokenizer if tokenizer is not None else self._make_tokenizer(train)
    _require(train, self.needs)
    self.deps_vocab = None
    if "deps" in self.needs:
      self.deps_vocab = deps_vocab or pipeline.DepsVocab.build(train.deps)
    self.with_pixels = "pixels" in self.needs
    self.with_photos = "photos" in self.needs
    self.with_boxes = train.boxes is not None   # needed boxes were checked by _require
    # Every split is tokenised once (and cached on disk by tokenizer and captions); batches
    # only gather and pad these ids.
    cache = _writable_cache_dir(data_dir)
    self._tokens = {name: tokenizers.encode_ragged_cached(self.tokenizer, s.captions, cache)
                    for name, s in self._splits.items()}
    self._lengths = {name: np.diff(t[1]) for name, t in self._tokens.items()}
    self._text_states = {}    # {split: (T, D) float32} once use_text_states is called
    if tokenizer is None and not d.vocab_path:   # a vocabulary built from these captions
      check_known_words(self.tokenizer, self._tokens[d.train_split], f"{data_dir}/"
                        f"{d.train_split}_caps.txt")
    self._fit_buckets()
    info = pipeline.data_info(train, self.tokenizer, self.deps_vocab)
    vectors = embeddings.initial_vectors(d, self.tokenizer, self._tokens[d.train_split][0],
                                         seed=seed)
    # Models with learned positions check it before anything trains (MMCA's max_len).
    self.info = dataclasses.replace(info, word_vectors=vectors,
                                    max_text_len=int(self.max_text_len),
                                    backbone=_backbone_of(data_dir))

  def use_text_states(self, name: str, dtype: str) -> None:
    """From now on every batch (training, sample, evaluation) also carries ``text_states``
    (B, L, D) float32: the frozen pretrained text tower ``name``'s vectors of its tokens,
    computed in ``dtype`` once per split and stored with the data's cache
    (:mod:`xmr_jax.data.text_states`; ``Method.text_states`` says when a model reads them)."""
    cache = _writable_cache_dir(self.data_dir)
    for split, tokens in self._tokens.items():
      if self.max_caption_len:    # the vectors of the ids the batches carry
        tokens = tokenizers.cap_ragged(*tokens, self.max_caption_len)[:2]
      self._text_states[split] = text_states.cached_states(cache, name, dtype, tokens)

  def _make_tokenizer(self, train: precomp.PrecompSplit):
    d = self.data_config
    kind = tokenizer_kind(d)
    if kind != d.tokenizer:
      _say(f"data.vocab_path={d.vocab_path} is a {VOCAB_SUFFIXES[_suffix(d.vocab_path)][1]}: "
           f"using data.tokenizer={kind} (data.tokenizer={d.tokenizer} is overridden)")
    groups = [train.captions]
    if kind == "word" and not d.vocab_path:   # SCAN builds its vocab from train + dev
      groups.append(self.split(d.dev_split).captions)
    return tokenizers.get_tokenizer(
        kind, cache_dir=_writable_cache_dir(self.data_dir),
        train_captions=[c for g in groups for c in g], vocab_size=d.vocab_size,
        vocab_path=d.vocab_path, seed=0, groups=groups)

  def _fit_buckets(self) -> None:
    """Sets ``len_buckets``, ``deps_buckets`` and ``cut_captions`` from every split."""
    cap = self.max_caption_len
    longest = max((int(n.max()) for n in self._lengths.values() if n.size), default=0)
    self.cut_captions = {}
    if cap:
      self.cut_captions = {name: int(np.sum(n > cap)) for name, n in self._lengths.items()
                           if np.any(n > cap)}
      longest = min(longest, cap)
      if self.cut_captions:
        _report_cut(self.data_dir, cap, self.cut_captions)
    self.len_buckets = tokenizers.fit_buckets(self.data_config.len_buckets, longest)
    # The longest padded caption any batch of any split can have (not max(len_buckets): a
    # configured bucket may be longer than every caption).
    self.max_text_len = tokenizers.choose_bucket(max(longest, 1), self.len_buckets)
    self.deps_buckets = None
    if self.deps_vocab is not None:
      # Triples are never cut: the largest deps bucket grows to the longest triple list.
      longest_deps = max((len(t) for s in self._splits.values() for t in s.deps), default=0)
      self.deps_buckets = tokenizers.fit_buckets(pipeline.DEFAULT_DEPS_BUCKETS, longest_deps)

  def fingerprint(self, name: str) -> Dict[str, Any]:
    """What identifies split ``name``'s data: its location, sizes, and hashes of its captions
    (in file order) and features (shape, dtype and the first, middle and last rows: enough to
    tell two exports apart without reading a multi-GB file). Ensembles compare these."""
    s = self.split(name)
    captions = hashlib.sha256("\n".join(s.captions).encode("utf-8")).hexdigest()[:16]
    features = hashlib.sha256(f"{s.images.shape}{s.images.dtype}".encode())
    for row in sorted({0, s.num_images // 2, s.num_images - 1}):
      features.update(np.ascontiguousarray(s.images[row]).tobytes())
    extras = [key for key in ("labels", "boxes", "pixels", "deps", "region_mask")
              if getattr(s, key) is not None]
    return {"location": os.path.abspath(self.data_dir), "split": name,
            "images": int(s.num_images), "captions_per_image": int(s.k),
            "captions": captions, "features": features.hexdigest()[:16],
            "feature_shape": [int(n) for n in s.images.shape[1:]],
            "feature_dtype": str(s.images.dtype), "extras": extras}

  def split(self, name: str) -> precomp.PrecompSplit:
    """The split ``name`` (memory-mapped, opened with the dataset).

    Raises:
      DataError: ``name`` is none of :attr:`split_names` (its files are missing).
    """
    if name not in self._splits:
      precomp.load_split(self.data_dir, name)   # raises the missing-file error, listing files
      raise DataError(
          f"{self.data_dir}/{name}_ims.npy appeared after the dataset was opened (splits "
          f"opened: {self.split_names}); open the dataset again so it is checked and fitted")
    return self._splits[name]

  @property
  def num_train_images(self) -> int:
    """Number of images in the ``data_config.train_split`` split."""
    return self.split(self.data_config.train_split).num_images

  def _batch_kwargs(self) -> Dict[str, Any]:
    return dict(len_buckets=self.len_buckets, with_boxes=self.with_boxes,
                tokens=self._tokens[self.data_config.train_split],
                with_pixels=self.with_pixels, with_photos=self.with_photos,
                deps_vocab=self.deps_vocab,
                max_caption_len=self.max_caption_len,
                text_states=self._text_states.get(self.data_config.train_split),
                **({"deps_buckets": self.deps_buckets} if self.deps_buckets else {}))

  def train_iterator(self, batch_size: int, *, seed: int, shard_index: int = 0,
                     shard_count: int = 1):
    """Checkpointable grain iterator of training batches (distinct images)."""
    return pipeline.train_iterator(self.split(self.data_config.train_split), self.tokenizer,
                                   batch_size, seed=seed, shard_index=shard_index,
                                   shard_count=shard_count, **self._batch_kwargs())

  def sample_batch(self, batch_size: int) -> Dict[str, np.ndarray]:
    """The first training batch (for shape inference at init)."""
    ds = pipeline.train_dataset(self.split(self.data_config.train_split), self.tokenizer,
                                batch_size, seed=0, **self._batch_kwargs())
    return ds[0]

  def eval_data(self, split: str, batch_size: int, *, max_images: Optional[int] = None) -> EvalData:
    """Every image and caption of ``split`` (the first ``max_images`` images) once, in order.

    All captions are padded to one length (the smallest of :attr:`len_buckets` that fits the
    longest caption of the split, after ``max_caption_len``) so the encoded text reprs of
    all batches concatenate; triples likewise with :attr:`deps_buckets`. DataError if the
    split lacks an input in ``needs``.
    """
    s = self.split(split)
    _require(s, self.needs)
    if max_images is not None and max_images < s.num_images:
      s = _head(s, max_images)
    longest = int(self._lengths[split][:s.num_captions].max())
    if self.max_caption_len:
      longest = min(longest, self.max_caption_len)
    deps_bucket = {}
    if self.deps_vocab is not None:
      longest_deps = max((len(t) for t in s.deps), default=1)
      deps_bucket = {"deps_buckets": (tokenizers.choose_bucket(longest_deps,
                                                               self.deps_buckets),)}
    images = functools.partial(pipeline.eval_image_batches, s, batch_size,
                               with_boxes=self.with_boxes, with_pixels=self.with_pixels,
                               with_photos=self.with_photos)
    flat, offsets = self._tokens[split]
    texts = functools.partial(
        pipeline.eval_text_batches, s, self.tokenizer, batch_size,
        tokens=(flat, offsets[:s.num_captions + 1]), text_states=self._text_states.get(split),
        len_buckets=(tokenizers.choose_bucket(longest, self.len_buckets),),
        deps_vocab=self.deps_vocab, max_caption_len=self.max_caption_len, **deps_bucket)
    return EvalData(k=s.k, captions=s.captions, image_batches=images, text_batches=texts,
                    img_labels=s.labels, cap_labels=s.cap_labels, pixels=s.pixels,
                    boxes=s.boxes, deps=s.deps)


def check_max_caption_len(value) -> int:
  """``data.max_caption_len`` as an int: 0 (no cap) or at least 2 tokens; else ValueError."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0 \
      or value == 1:
    raise ConfigError(f"config.data.max_caption_len={value!r}: use 0 (no cap: captions are "
                     "never cut) or a token count of at least 2 (a cut caption keeps its "
                     "start and end tokens)")
  return int(value)


def _split_names(data_dir: str, data_config) -> List[str]:
  """The configured splits (train first), then any other split found in ``data_dir``."""
  d = data_config
  named = list(dict.fromkeys((d.train_split, d.dev_split, d.test_split)))
  return named + [s for s in precomp.find_splits(data_dir) if s not in named]


def _open_splits(data_dir: str, data_config) -> Dict[str, precomp.PrecompSplit]:
  """Every split of :func:`_split_names`, each checked against the training split.

  The training split takes ``data.captions_per_image``; the others infer k from their files
  so a disagreement is reported as one (expected k from train, found k) rather than as a
  caption count.
  """
  names = _split_names(data_dir, data_config)
  train = precomp.load_split(data_dir, names[0], data_config.captions_per_image)
  splits = {names[0]: train}
  for name in names[1:]:
    splits[name] = precomp.load_split(data_dir, name)
    precomp.check_agreement(train, splits[name])
  return splits


def _report_cut(data_dir: str, cap: int, cut: Dict[str, int]) -> None:
  """Warns (absl log and one stderr line) that ``data.max_caption_len`` cut captions."""
  per_split = ", ".join(f"{name}: {count}" for name, count in cut.items())
  message = (f"data.max_caption_len={cap}: {sum(cut.values())} captions of {data_dir} are "
             f"longer than {cap} tokens and are cut to their first {cap - 1} tokens and the "
             f"end token ({per_split}); set data.max_caption_len=0 to keep every caption "
             "whole")
  _say(message)


def _head(s: precomp.PrecompSplit, n: int) -> precomp.PrecompSplit:
  """The first ``n`` images of a split and their captions (dev evaluation during training)."""
  cut = lambda a, rows: None if a is None else a[:rows]
  return dataclasses.replace(
      s, images=s.images[:n], captions=s.captions[:n * s.k], num_images=n,
      labels=cut(s.labels, n), cap_labels=cut(s.cap_labels, n * s.k), boxes=cut(s.boxes, n),
      pixels=cut(s.pixels, n), photos=cut(s.photos, n), deps=cut(s.deps, n * s.k),
      region_mask=cut(s.region_mask, n))


def _writable_cache_dir(data_dir: str) -> str:
  if os.access(data_dir, os.W_OK):
    return data_dir
  digest = hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:12]
  path = os.path.join(cache_root(), "tokenizers", digest)
  os.makedirs(path, exist_ok=True)
  return path


def _synthetic_dir(d) -> str:
  p = d.synthetic
  return synthetic.get_or_create(seed=p.seed, n_train=p.n_train, n_dev=p.n_dev,
                                 n_test=p.n_test, pixels=p.pixels,
                                 cache_dir=d.dir or os.path.join(cache_root(), "synthetic"))


def _precomp_dir(d) -> str:
  if not d.dir:
    raise ConfigError("config.data.name='precomp' needs --config.data.dir=/path/to/dataset "
                      "(a directory with {split}_ims.npy and {split}_caps.txt)")
  if not os.path.isdir(d.dir):
    raise ConfigError(f"config.data.dir={d.dir!r} is not a directory; point it at a dataset in "
                      f"the SCAN precomp layout ({{split}}_ims.npy, {{split}}_caps.txt)")
  return d.dir


def _images_dir(d, needs=frozenset()) -> str:
  from xmr_jax.data import images_cache   # the backbone only for photo folders
  return images_cache.dataset_dir(d, photos="photos" in needs)


def _backbone_of(data_dir: str) -> str:
  """The backbone that extracted ``data_dir`` (its ``meta.json``), "" for other folders."""
  from xmr_jax.data import extract   # reads meta.json only; the backbone is not loaded
  settings = extract.settings_of_folder(data_dir)
  return settings.backbone if settings is not None else ""


@dataclasses.dataclass(frozen=True)
class DataSource:
  """A value of ``data.name``: how it becomes a SCAN-layout folder and what it reads.

  Attributes:
    name: the ``data.name`` value.
    resolve: ``data_config -> folder`` in the SCAN precomp layout (generated or extracted
      into the cache on first use).
    keys: ``data.*`` keys only this source reads (set with another source: an error).
    what: how messages name it.
  """
  name: str
  resolve: Callable[[Any], str]
  keys: tuple
  what: str


# Adding a data source: a resolver into the precomp layout and one entry here.
DATA_SOURCES = (
    DataSource("synthetic", _synthetic_dir, ("synthetic",), "the synthetic benchmark"),
    DataSource("precomp", _precomp_dir, (), "a SCAN-layout folder (data.name=precomp)"),
    DataSource("images", _images_dir, ("images", "split_sizes", "split_seed", "strict"),
               "a photo folder (data.name=images)"),
)
DATA_NAMES = tuple(s.name for s in DATA_SOURCES)


def unread_keys(data_config) -> Dict[str, str]:
  """``data.*`` keys (or sections) the chosen source and tokenizer never read, with the
  reason: a user who sets one gets an error naming it, not a silent no-op."""
  d = data_config
  chosen = next(s for s in DATA_SOURCES if s.name == check_name(d.name))
  out = {}
  for source in DATA_SOURCES:
    for key in source.keys:
      if key not in chosen.keys:
        out[f"data.{key}"] = f"data.name={d.name!r}; only {source.what} reads it"
  if tokenizer_kind(d) != "sentencepiece" or d.vocab_path:
    out["data.vocab_size"] = ("only a sentencepiece model trained here reads it (not the word "
                              "vocabulary, not a data.vocab_path)")
  return out


def resolve_data_dir(data_config, needs=frozenset()) -> str:
  """The dataset directory for ``data_config``: the synthetic benchmark (generated once), a
  precomp directory, or a folder of photos + captions (extracted once, ``images_cache``,
  with its resized photos when ``needs`` has "photos"); see :data:`DATA_SOURCES`."""
  name = check_name(data_config.name)
  source = next(s for s in DATA_SOURCES if s.name == name)
  if source.name == "images":
    return source.resolve(data_config, needs)
  return source.resolve(data_config)


def open_dataset(data_config, *, needs=frozenset(), seed: int = 0, tokenizer=None,
                 deps_vocab=None) -> Dataset:
  """Opens the dataset that ``data_config`` (``config.data``) describes.

  Args:
    data_config: the ``data`` section of a config (see ``config_utils.base_config``); nothing
      outside it is read.
    needs: optional batch inputs the method reads, a subset of :data:`NEEDS` ("pixels",
      "deps", "boxes"); a needed input the data lacks is a DataError here, not a KeyError in
      the model.
    seed: seeds the rows of words missing from ``data.word_embeddings``.
    tokenizer, deps_vocab: a trained workdir's own vocabularies, used instead of building
      them from the training captions (None: build them).

  Returns:
    A :class:`Dataset`.

  Raises:
    ConfigError: unknown ``needs``, ``data.name`` or ``data.tokenizer``, a missing or
      unknown ``data.vocab_path`` (checked before anything is generated or read),
      ``data.name='precomp'`` without ``data.dir``, or ``data.dir`` not a directory.
    DataError: a dataset or word-vector file is missing or malformed.
  """
  needs = check_needs(needs)
  check_name(data_config.name)
  tokenizer_kind(data_config)
  return Dataset(data_config, resolve_data_dir(data_config, needs), needs=needs, seed=seed,
                 tokenizer=tokenizer, deps_vocab=deps_vocab)


# A word vocabulary that maps more than this share of the training words to <unk> cannot
# tell captions apart (e.g. Chinese or Thai captions, which have no spaces between words).
MAX_UNKNOWN_SHARE = 0.5


def check_known_words(tokenizer, train_tokens, where: str) -> None:
  """DataError when a word vocabulary maps most training words to ``<unk>``.

  ``train_tokens``: the training split's (flat ids, offsets); ``<start>``/``<end>`` are not
  counted. Sentencepiece always splits text into known pieces and is never refused.
  """
  if not isinstance(tokenizer, tokenizers.WordVocab):
    return
  flat = np.asarray(train_tokens[0])
  words = flat[(flat != tokenizer.start_id) & (flat != tokenizer.end_id)]
  share = float(np.mean(words == tokenizer.unk_id)) if words.size else 1.0
  if share > MAX_UNKNOWN_SHARE:
    raise DataError(
        f"{where}: the word vocabulary built from these captions ({len(tokenizer)} entries) maps {share:.0%} of the "
        f"training words to <unk>, so captions cannot be told apart (captions in a language "
        f"without spaces between words?); use --config.data.tokenizer=sentencepiece, which "
        f"learns pieces of the text itself")
