"""The method contract: a config's ``method`` name -> a :class:`Method`.

``Method`` says everything generic code (trainer, evaluation engine, evaluators, data) needs
to know about a method, so nothing outside ``xmr_jax/models`` names one
(docs/architecture.md, "The method contract"). Each ``xmr_jax/models/<name>.py`` defines

* ``inputs(model_config) -> frozenset``: the optional batch inputs the method reads
  (``"pixels"``, ``"deps"``, ``"boxes"``), asked for before the data is opened;
* ``build_method(model_config, info: DataInfo) -> Method`` (``config.model`` only);
* ``unread(model_config) -> {key: reason}``: model keys these settings never read
  (a user who sets one on the command line gets an error instead of a silent no-op).

Modules are imported lazily so that one method's optional dependencies never affect another.
"""
import dataclasses
import hashlib
import importlib
from typing import Any, Callable, Dict, FrozenSet, Optional, Tuple

import flax.linen as nn
import jax
import numpy as np

from xmr_jax.common.errors import ConfigError
from xmr_jax.models.base import RetrievalModel
from xmr_jax.types import OPTIONAL_INPUTS, DataInfo

METHODS = ("vsepp", "defrag", "pcme", "sgraf", "mmca")

# loss_fn(img_repr, txt_repr, scores (B, B), hparams dict of arrays, rng) -> (loss, metrics)
LossFn = Callable[[Any, Any, jax.Array, Dict[str, jax.Array], jax.Array],
                  Tuple[jax.Array, Dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Method:
  """Everything the generic trainer, evaluation engine and evaluators need about a method.

  Attributes:
    name: the config's ``method``; used in messages and results only, never to branch on.
    model: the Flax module (``encode_images`` / ``encode_texts`` / ``score``, models/base.py).
    loss_fn: the training loss on the (B, B) training scores (``xmr_jax.losses``).
    hparam_names: scalar hyperparameters the loss reads from ``hparams`` (swept scalars).
    unclipped_params: top-level parameter names whose gradients skip global-norm clipping
      (PCME's a and b: the official code clips only the encoders' gradients).
    text_padding: ``(mask key, keys with a word axis)`` of the text repr when scores do not
      depend on padding (each such method has a mask-invariance test); the engine then
      scores captions in length groups with the padding trimmed.
    train_score: the model method giving the (B, B) training matrix from ``(img, txt,
      train=True)``: ``"score"``, or PCME's ``"match_log_odds"`` (its loss decodes log-odds).
    for_mesh: the cross-device hook: ``for_mesh(axis_name)`` returns the model to train under
      a data mesh (SGRAF: train-mode BatchNorm statistics reduced over ``axis_name``); None
      when the model needs nothing.
    inputs: optional batch inputs the method reads (``types.OPTIONAL_INPUTS``).
    uncertainty: ``uncertainty(repr) -> (N,) float`` per-item uncertainty of an encoded
      image or caption batch (PCME's mean sigma^2), for the ``uncertainty`` evaluator.
    alignments: name of the model method ``(img, txt) -> {"index", "score"}`` giving the best
      image fragment of every sentence fragment of matched pairs (DeFrag), for the
      ``alignments`` evaluator.
    samples_at_eval: the encoders draw random numbers at evaluation (PCME's J samples); the
      engine then keys every item's draws by its index in the split.
    pretrained: ``((params path, tower name, lr scale), ...)``: subtrees the trainer fills
      with pretrained weights (and BatchNorm statistics) at initialisation, and the factor
      of the learning rate the optimiser gives them (``optax.multi_transform``; 0 = frozen):
      ``model.text_encoder=minilm`` adds ``(("text_tower",), "minilm", model.text_lr_scale)``
      (the names of ``backbones.text_towers.TEXT_TOWERS``, models/text_tower.py), ``model.image_input=photos`` adds ``(("image_tower", "net"),
      <backbone>, train.backbone_lr_scale)`` (models/image_tower.py); empty for models
      trained from scratch.
    text_states: ``(tower name, model.dtype)`` when a frozen pretrained text tower's token
      vectors can be computed once by the data (``Dataset.use_text_states``; batches then
      carry ``text_states`` and the model reads them instead of running the tower,
      models/text_tower.py); None otherwise.
    embedding: the repr key whose dot product is the score, when there is one:
      ``score(img, txt) == img[embedding] @ txt[embedding].T`` with (N, D) and (M, D) leaves
      (VSE++: ``"emb"``); a photo collection is then searched with a matrix product and a
      top-k over a stored (N, D) matrix (``xmr_jax.search``). None: the score needs the
      model (cross attention, similarity graphs, sampling), and search scores exactly.
    global_embedding: the repr key whose dot product is a cheap global term of the score,
      when there is one: (N, D) and (M, D) leaves of the encoded images and captions (MMCA:
      ``"emb"``, the <i0, c0> term of its score; PCME: ``"mu"``, the mean cosine beside its
      match probability). Two-stage ranking shortlists with it (``eval.shortlist=own``; a
      workdir named by ``eval.shortlist`` serves with its own). Defaults to ``embedding``
      (a dot-product score is its own global term); None: the method has none.
    key: a fingerprint of what determines the compiled programs (the model's class and
      fields, array fields by content; ``model_fingerprint``): compiled encoders and scorers
      are cached under it. Filled in when left empty.
  """
  name: str
  model: RetrievalModel
  loss_fn: LossFn
  hparam_names: Tuple[str, ...] = ()
  unclipped_params: Tuple[str, ...] = ()
  text_padding: Optional[Tuple[str, Tuple[str, ...]]] = None
  train_score: str = "score"
  for_mesh: Optional[Callable[[str], RetrievalModel]] = None
  inputs: FrozenSet[str] = frozenset()
  uncertainty: Optional[Callable[[Any], np.ndarray]] = None
  alignments: Optional[str] = None
  samples_at_eval: bool = False
  pretrained: Tuple[Tuple[Tuple[str, ...], str, float], ...] = ()
  text_states: Optional[Tuple[str, str]] = None
  embedding: Optional[str] = None
  global_embedding: Optional[str] = None
  key: str = ""

  def __post_init__(self):
    if self.global_embedding is None and self.embedding is not None:
      object.__setattr__(self, "global_embedding", self.embedding)
    if not self.key:
      object.__setattr__(self, "key", model_fingerprint(self.model))


def model_fingerprint(model: RetrievalModel) -> str:
  """sha1 of a Flax module's class and fields (arrays by content, submodules recursively).

  Two modules with equal fingerprints build the same programs, so compiled functions can be
  shared between them; unlike ``id(model)`` the key survives rebuilding the same method.
  """
  h = hashlib.sha1(type(model).__qualname__.encode())
  for f in dataclasses.fields(model):
    if f.name in ("parent", "name"):
      continue
    value = getattr(model, f.name)
    if isinstance(value, nn.Module):   # a submodule field
      h.update(model_fingerprint(value).encode())
    elif isinstance(value, (np.ndarray, jax.Array)):
      h.update(f"{f.name}{value.shape}{value.dtype}".encode())
      h.update(np.ascontiguousarray(value).tobytes())
    else:
      h.update(f"{f.name}={value!r};".encode())
  return h.hexdigest()


def _module(name: str):
  if name not in METHODS:
    raise ConfigError(f"config.method={name!r} is not a known method; choose one of {METHODS}")
  return importlib.import_module(f"xmr_jax.models.{name}")


def method_inputs(config) -> FrozenSet[str]:
  """The optional batch inputs ``config``'s method reads (before any data is opened)."""
  from xmr_jax.models import image_tower
  needs = frozenset(_module(config.method).inputs(config.model)) | image_tower.inputs(config.model)
  unknown = needs - set(OPTIONAL_INPUTS)
  assert not unknown, f"{config.method}.inputs returned unknown inputs {sorted(unknown)}"
  return needs


def unread_model_keys(config) -> Dict[str, str]:
  """``config.model`` keys the method does not read with these settings, with the reason
  (each model module's ``unread(model_config)``, empty when it has none)."""
  return dict(_module(config.method).unread(config.model))


def get_method(config, info: DataInfo) -> Method:
  """Builds the method named by ``config.method``; ConfigError for an unknown name."""
  method = _module(config.method).build_method(config.model, info)
  from xmr_jax.models import image_tower, text_tower   # the seams are the same for every method
  method = dataclasses.replace(method, inputs=method_inputs(config))
  method = text_tower.with_tower(method, config.model)
  return image_tower.with_tower(method, config, info)
