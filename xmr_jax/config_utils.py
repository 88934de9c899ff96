"""Config helpers: ``get_config(arg)`` argument parsing and the base config every method extends.

Config files live in ``configs/<method>.py`` and follow big_vision's convention:
``get_config(arg=None)`` where ``arg`` is the text after the colon in
``--config=configs/sgraf.py:variant=saf,runlocal``.
"""
import importlib.util
import os
from typing import Any, Dict, Optional

import ml_collections

from xmr_jax.common.errors import ConfigError


def parse_arg(arg: str, **defaults) -> ml_collections.ConfigDict:
  """Parses ``"k=v,flag"`` into a ConfigDict over ``defaults``.

  Values are cast to the type of their default (bools accept true/false/1/0/yes/no); a bare
  ``flag`` sets a bool default to True. A key that has no default is an error naming it.
  """
  result = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, has_value, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"unknown config argument {key!r} in {arg!r}; known: {sorted(defaults)}")
    default = defaults[key]
    if not has_value:
      if not isinstance(default, bool):
        raise ConfigError(f"config argument {key!r} needs a value ({key}=...)")
      result[key] = True
    elif isinstance(default, bool):
      low = value.strip().lower()
      if low not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"config argument {key}={value!r} is not a boolean")
      result[key] = low in ("true", "1", "yes")
    elif default is None:
      result[key] = value
    else:
      try:
        result[key] = type(default)(value)
      except ValueError as e:
        raise ConfigError(f"config argument {key}={value!r}: expected {type(default).__name__}") from e
  return ml_collections.ConfigDict(result)


def load_config(path: str, arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of the config file at ``path`` (e.g. a method config a sweep extends).

  Sweep files resolve ``path`` against their own location (``config_path(__file__, ...)``),
  so they work from any working directory and from an installed (non-editable) package.
  Raises ConfigError naming the path when it does not exist.
  """
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path} does not exist")
  name = "xmr_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def config_path(anchor_file: str, *parts: str) -> str:
  """A path relative to the directory of ``anchor_file`` (pass ``__file__``)."""
  return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(anchor_file)), *parts))


def data_config() -> ml_collections.ConfigDict:
  """The ``data`` section every config starts from (see each key's comment)."""
  return ml_collections.ConfigDict(dict(
      name="synthetic",        # synthetic | precomp | images (TFDS-built data: export to precomp)
      dir="",                  # precomp dir; photos folder (images); cache override (synthetic)
      captions_per_image=5,
      # data.name=images: a folder with images/ and a caption file, extracted once into the
      # cache with a backbone of xmr_jax.backbones.registry (efficientnet_lite0/1/2) at its
      # input side (size=0: the backbone's, 192/240/260) (data/images_cache.py, extract.py).
      images=dict(captions="", instances="", format="auto", regions="grid",
                  backbone="efficientnet_lite0", size=0, max_boxes=36, parse="auto"),
      split_sizes=(0, 0),      # images: (dev, test) images of a seeded split by image
      split_seed=0,            # images: the seed of that split
      strict=False,            # images: every fault of the data is an error, not a drop
      synthetic=dict(n_train=10000, n_dev=500, n_test=1000, seed=0, pixels=True),
      tokenizer="sentencepiece",   # sentencepiece | word (SCAN word2idx vocab json)
      vocab_path="",           # explicit vocab json / sentencepiece model (else built + cached)
      vocab_size=1000,         # sentencepiece vocabulary size
      # Captions are padded to the smallest bucket that fits; opening the data adds one
      # bucket (a multiple of 16) if a caption of any split is longer (Dataset.len_buckets).
      len_buckets=(16, 24, 32, 64),
      max_caption_len=0,       # 0: never cut; N > 0: cut longer captions to N tokens, <end> last
      word_embeddings="",      # optional GloVe-format text file (its own dim) for word vectors
      # or packaged vectors (xmr_jax/data/embeddings.py): "" | glove_6b_50d (model.word_dim=50;
      # coverage printed at start; pip install 'xmr_jax[text]')
      word_vectors="",
      train_split="train", dev_split="dev", test_split="test",
  ))


def photo_folder(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The shared part of every ``data=images`` preset: a folder of photos + a caption file
  (``data.name=images``, grid regions of ``data.images.backbone``, EfficientNet-Lite0 unless
  set), a seeded 250/250 dev/test split by image (uitviic's; coco_mini:
  ``--config.data.split_sizes='(50, 50)'``) and dev evaluation on all 250 dev images.
  Returns ``c`` for chaining."""
  c.data.name = "images"
  c.data.split_sizes = (250, 250)
  c.eval.dev_max_images = 250
  return c


def photos_arg(a: ml_collections.ConfigDict) -> bool:
  """``data=photos`` of a method file's argument: True, and ``a.data`` becomes "images" (the
  preset is the photo-folder one, then :func:`photo_input`); False for any other data."""
  if a.data != "photos":
    return False
  a.data = "images"
  return True


def photo_input(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The ``data=photos`` presets: the photo-folder preset with the backbone inside the model
  (``model.image_input=photos``, models/image_tower.py), fine-tuned at a tenth of the
  learning rate (``train.backbone_lr_scale=0.1``, VSE-infinity's backbone factor for grid
  features; assumed for the others), batches of at most 32 photos (PCME's 128 through
  EfficientNet-Lite0's backward pass held over 18 GB on a CPU and was killed), photos encoded
  64 at a time at evaluation (each goes through the backbone). Returns ``c``."""
  c.model.image_input = "photos"
  c.train.batch_size = min(c.train.batch_size, 32)
  c.train.backbone_lr_scale = 0.1
  c.eval.encode_batch_size = 64
  return c


# The ``text=`` config argument of the method files: which text tower a preset trains.
TEXT_TOWERS = ("gru", "glove", "minilm", "e5_small")


def text_tower(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Sets the text tower of a preset, with the tokenizer that goes with it; returns ``c``.

  ``gru``: the method's own encoder from scratch (nothing changes). ``glove``: the word
  vocabulary with its table initialised from the packaged GloVe 6B 50-d
  (``data.word_vectors=glove_6b_50d``, ``model.word_dim=50``; English captions). ``minilm`` /
  ``e5_small``: the pretrained all-MiniLM-L6-v2 / multilingual-e5-small
  (``model.text_encoder=<name>``) on the ids of its own tokenizer (``data.tokenizer=wordpiece``
  / ``e5_small``: ``xmr_jax.backbones.text_towers``). Raises ConfigError for another name.
  """
  if name == "glove":
    c.data.tokenizer = "word"
    c.data.word_vectors = "glove_6b_50d"
    c.model.word_dim = 50
  elif name in TEXT_TOWERS[2:]:
    from xmr_jax.backbones.text_towers import text_tower as tower   # flax: only when asked
    c.data.tokenizer = tower(name).tokenizer
    c.model.text_encoder = name
  elif name != "gru":
    raise ConfigError(f"config argument text={name!r}; choose one of {TEXT_TOWERS}")
  return c


def _model_defaults() -> ml_collections.ConfigDict:
  """The ``model`` keys every method has: compute dtype, text tower, image input."""
  m = ml_collections.ConfigDict()
  # Compute dtype of the matmuls / einsums / convs (xmr_jax/models/precision.py): "auto" |
  # "float32" | "bfloat16" (bfloat16 operands, float32 accumulation; params, losses and
  # scores float32). "auto": bfloat16 only on hardware with bfloat16 units (TPU, NVIDIA
  # compute capability >= 8, CPUs with avx512_bf16 / amx_bf16); the CLI records the choice.
  m.dtype = "auto"
  # The text tower (xmr_jax/models/text_tower.py): "gru" (each method's own encoder, trained
  # from scratch) | "minilm" (pretrained all-MiniLM-L6-v2; needs data.tokenizer=wordpiece and
  # the text extra) | "e5_small" (pretrained multilingual-e5-small; needs
  # data.tokenizer=e5_small and the e5 extra). text_frozen: never update the tower (MMCA's paper setting);
  # text_lr_scale: its learning rate relative to hparams.learning_rate (0 = frozen).
  # text_cache: with the tower frozen, compute its token vectors once per caption (stored with
  # the data's cache) instead of running it every step (same vectors; false runs it every step).
  m.text_encoder = "gru"
  m.text_frozen = False
  m.text_lr_scale = 1.0
  m.text_cache = True
  # The image input (xmr_jax/models/image_tower.py): "regions" (the data's frozen features) |
  # "photos" (the backbone that extracted them runs inside the model and is fine-tuned with
  # train.backbone_lr_scale; data.name=images) | "pixels" (VSE++/PCME's small pixel CNN).
  m.image_input = "regions"
  return m


def base_config(method: str) -> ml_collections.ConfigDict:
  """Fields every method's config has. Method files fill ``model`` and ``hparams``."""
  c = ml_collections.ConfigDict()
  c.method = method
  c.seed = 0
  c.data = data_config()
  c.model = _model_defaults()
  # Swept scalars: everything here becomes an array in the hparams pytree (docs/architecture.md, "Rules").
  c.hparams = ml_collections.ConfigDict(dict(learning_rate=2e-4, margin=0.2))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=128,
      num_epochs=30.0,         # may be fractional
      num_steps=-1,            # > 0 overrides num_epochs
      lr_decay_epochs=15,      # step decay: lr *= lr_decay_factor every lr_decay_epochs
      lr_decay_factor=0.1,
      grad_clip=2.0,
      optimizer="adam",        # adam | sgd (momentum below)
      momentum=0.9,
      weight_decay=0.0,        # L2 penalty coefficient alpha of alpha * ||theta||^2
      log_every_steps=50,      # metrics are read (a host sync) only every this many steps
      prefetch=2,              # batches placed on the devices ahead of the running step
      eval_every_epochs=1,
      checkpoint_every_steps=500,
      max_to_keep=2,
      num_devices=0,           # devices of the data mesh; 0 = all visible devices
      backbone_lr_scale=1.0,   # model.image_input=photos: the backbone's lr / learning_rate
      # model.image_input=photos: epochs the backbone stays at its ImageNet weights before it
      # is fine-tuned (VSE++ trains the head on a fixed CNN, then fine-tunes it); 0 = from
      # the first step.
      backbone_frozen_epochs=0.0,
      # model.image_input=photos: recompute each backbone block's activations in the
      # backward pass instead of keeping them (nn.remat per MBConv block): less memory for
      # about one more forward pass of the backbone.
      backbone_remat=False,
  ))
  c.eval = ml_collections.ConfigDict(dict(
      split="test",
      protocol="default",      # default | coco1k | coco5k
      tile_images=128,
      tile_texts=512,
      # Captions are sorted by length and scored in up to this many groups, each with its
      # padding trimmed to the group's longest caption (methods that declare a padded text
      # axis, Method.text_padding); 1 = off. Scores are identical either way.
      length_groups=4,
      encode_batch_size=256,
      dev_max_images=1000,     # dev evaluation during training uses at most this many images
      # Two-stage ranking after training and in --mode=eval (xmr_jax/evaluation/rerank.py):
      # rerank_k = K > 0 scores only each query's top K by a dot-product shortlist, "own"
      # (the method's global term: MMCA, PCME) or a trained workdir of an embedding method
      # on the same data (VSE++, PCME). 0 = every pair (dev evaluation is always exact).
      rerank_k=0,
      shortlist="",
  ))
  # Evaluators run after training, in order (xmr_jax/evaluation/__init__.py): ``retrieval``
  # first (R@K, rsum, PMRP; the others read its scores), then pictures and analyses. Method
  # configs append theirs (PCME ``uncertainty``, DeFrag ``alignments``).
  c.evals = ("retrieval", "retrieval_examples")
  return c


def to_dict(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """``config`` as nested plain dicts (``ConfigDict.to_dict``), e.g. for JSON or logging."""
  return config.to_dict()
