"""Method registry: a config's ``method`` name -> model, loss and default swept scalars.

Each ``xmr_jax/models/<name>.py`` defines ``build_method(config, info: DataInfo) -> Method``.
Modules are imported lazily so that one method's optional dependencies never affect another.
"""
import dataclasses
import importlib
from typing import Any, Callable, Dict, Optional, Tuple

import jax

from xmr_jax.models.base import RetrievalModel
from xmr_jax.types import DataInfo

METHODS = ("vsepp", "defrag", "pcme", "sgraf", "mmca")

# loss_fn(img_repr, txt_repr, scores (B, B), hparams dict of arrays, rng) -> (loss, metrics)
LossFn = Callable[[Any, Any, jax.Array, Dict[str, jax.Array], jax.Array],
                  Tuple[jax.Array, Dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Method:
  """Everything the generic trainer and evaluator need to know about a method."""
  name: str
  model: RetrievalModel
  loss_fn: LossFn
  # Names of the scalar hyperparameters the loss reads from ``hparams`` (DESIGN.md: swept
  # scalars live in the hparams pytree). The values come from ``config.hparams``.
  hparam_names: Tuple[str, ...] = ()
  # Top-level parameter names whose gradients skip global-norm clipping (PCME's a and b: the
  # official code clips only the encoders' gradients).
  unclipped_params: Tuple[str, ...] = ()
  # Text representations with a padded word axis (axis 1): (mask key, keys of the arrays
  # carrying that axis). The evaluation engine then scores captions in length groups with the
  # padding trimmed (``engine.score_all(length_groups=...)``); declare it only when scores do
  # not depend on padding (each such method has a mask-invariance test).
  text_padding: Optional[Tuple[str, Tuple[str, ...]]] = None


def get_method(config, info: DataInfo) -> Method:
  """Builds the method named by ``config.method``."""
  name = config.method
  if name not in METHODS:
    raise ValueError(f"config.method={name!r} is not a known method; choose one of {METHODS}")
  module = importlib.import_module(f"xmr_jax.models.{name}")
  return module.build_method(config, info)
