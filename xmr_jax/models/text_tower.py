"""The text-tower seam: ``config.model.text_encoder`` = ``gru`` | a pretrained tower of
``xmr_jax.backbones.text_towers.TEXT_TOWERS`` (``minilm``, ``e5_small``).

``gru`` (the default) is each method's own text encoder, unchanged. A pretrained tower
replaces the word embedding + recurrent/Transformer encoder: ``minilm`` is all-MiniLM-L6-v2
(``xmr_jax.backbones.minilm``: a 6-layer BERT, 384-d, English WordPiece), ``e5_small`` is
multilingual-e5-small (``xmr_jax.backbones.e5``: a 12-layer XLM-R encoder, 384-d, 250k
SentencePiece ids of about 100 languages). Every model holds it as the top-level submodule
``text_tower`` (so its parameters are ``params["text_tower"]`` in every method,
:data:`TOWER_PATH`). Methods that attend over words (SGRAF, MMCA, PCME's local attention,
DeFrag's word/bigram fragments) read its per-token contextual vectors (B, L, D); VSE++ and
PCME's global terms read the mean of the real tokens' vectors (the towers' own pooling). Each
method maps D (the tower's ``dim``) to its own width with a Dense layer it owns.

Around the model: the trainer copies the pretrained weights into ``params["text_tower"]`` at
initialisation (``Method.pretrained``) and the optimiser updates them with
``model.text_lr_scale`` times the learning rate (``optax.multi_transform``), or not at all
with ``model.text_frozen`` (MMCA's paper setting), in which case the model also stops their
gradient and the optimiser holds no state for them. A frozen tower's token vectors depend on
nothing that trains, so with ``model.text_cache`` (the default) the data computes them once
per caption (``Dataset.use_text_states``, stored with the data's cache) and batches carry them
as ``text_states``: the model then reads those instead of running the tower (the same vectors,
computed once instead of every step; the tower's parameters stay in the model, which still
encodes new sentences with them, e.g. for ``xmr_jax.search``). Each tower reads the ids of its own
tokenizer (``data.tokenizer=wordpiece`` for minilm, ``e5_small`` for e5_small), checked here
through the number of ids the data's tokenizer gives.
"""
import dataclasses
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmr_jax.backbones.text_towers import TEXT_TOWERS, text_tower
from xmr_jax.common.errors import ConfigError
from xmr_jax.kernels.common import compute_dtype, l2norm
from xmr_jax.models.precision import dense_kwargs, read_dtype
from xmr_jax.types import DataInfo

TEXT_ENCODERS = ("gru",) + tuple(TEXT_TOWERS)
TOWER_PATH = ("text_tower",)
# Keys of the seam itself: read only with a pretrained tower.
TOWER_KEYS = ("text_frozen", "text_lr_scale", "text_cache")


def text_encoder(model_config) -> str:
  """``model.text_encoder`` (default "gru"), checked: ConfigError naming the key and choices."""
  name = model_config.get("text_encoder", "gru")
  if name not in TEXT_ENCODERS:
    raise ConfigError(f"config.model.text_encoder={name!r} is unknown; choose one of "
                      f"{TEXT_ENCODERS}")
  return name


def uses_tower(model_config) -> bool:
  """True when ``model.text_encoder`` names a pretrained tower (not "gru")."""
  return text_encoder(model_config) != "gru"


def make_tower(model_config, info: DataInfo):
  """The pretrained tower's Flax encoder (``TEXT_TOWERS[model.text_encoder].network``) for
  ``model.dtype``, or None for "gru". Raises ConfigError naming ``data.tokenizer`` and the
  fix when the data's tokenizer does not give the tower's ids (another number of ids)."""
  if not uses_tower(model_config):
    return None
  name = text_encoder(model_config)
  tower = text_tower(name)
  if info.vocab_size != tower.token_ids:
    raise ConfigError(
        f"model.text_encoder={name} reads {tower.ids} ({tower.token_ids:,} ids) but the "
        f"data's tokenizer gives {info.vocab_size:,}: set "
        f"--config.data.tokenizer={tower.tokenizer}")
  return tower.network(dtype=compute_dtype(read_dtype(model_config)))


def tower_states(tower, texts, *, frozen: bool, train: bool) -> jax.Array:
  """Contextual token vectors (M, L, D) float32 of ``tokens`` / ``token_mask`` (M, L),
  padded positions zero; gradients stopped when ``frozen``. A batch that carries the frozen
  tower's vectors (``text_states`` (M, L, D), see the module doc) gives those instead of
  running the tower (except at initialisation, which creates the tower's parameters)."""
  mask = texts["token_mask"].astype(bool)
  if "text_states" in texts and not tower.is_initializing():
    hidden = texts["text_states"].astype(jnp.float32)
  else:
    hidden = tower(texts["tokens"], mask, train=train)
  if frozen:
    hidden = jax.lax.stop_gradient(hidden)
  return hidden * mask[..., None].astype(hidden.dtype)


class TowerWords(nn.Module):
  """Per-word vectors from a pretrained tower: the text batch (``tokens``, ``token_mask``
  (M, L), and ``text_states`` when the data carries the frozen tower's vectors) ->
  (M, L, embed_dim) float32, ``fc`` of the tower's token vectors, each l2-normalised
  (``normalize``), padding zero. ``tower`` is shared with the parent model (its parameters
  stay at ``params["text_tower"]``)."""
  embed_dim: int
  frozen: bool
  tower: Any
  dtype: str = "float32"
  normalize: bool = True

  @nn.compact
  def __call__(self, texts, *, train: bool) -> jax.Array:
    token_mask = texts["token_mask"]
    hidden = tower_states(self.tower, texts, frozen=self.frozen, train=train)
    x = nn.Dense(self.embed_dim, kernel_init=nn.initializers.xavier_uniform(), name="fc",
                 **dense_kwargs(self.dtype))(hidden)
    if self.normalize:
      x = l2norm(x)    # finite gradient at padding's zero vectors (fc's zero initial bias)
    return x * token_mask[..., None].astype(x.dtype)


def pooled(hidden: jax.Array, token_mask: jax.Array) -> jax.Array:
  """(M, L, D), (M, L) -> (M, D): the mean of the real tokens' vectors (start/end tokens in)."""
  m = token_mask.astype(hidden.dtype)[..., None]
  return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def is_frozen(model_config) -> bool:
  """The tower never trains: ``model.text_frozen`` or ``model.text_lr_scale=0``."""
  return bool(model_config.get("text_frozen", False)) or model_config.get("text_lr_scale",
                                                                           1.0) == 0


def with_tower(method, model_config):
  """``method`` with the seam's :class:`~xmr_jax.models.registry.Method` fields added
  (``pretrained``: (path, tower name, lr scale; 0 when frozen); ``text_states``: (tower name,
  model.dtype) when the tower is frozen and ``model.text_cache``); unchanged for "gru".
  ConfigError for a negative ``text_lr_scale``."""
  if not uses_tower(model_config):
    return method
  scale = float(model_config.get("text_lr_scale", 1.0))
  if scale < 0:
    raise ConfigError(f"config.model.text_lr_scale={scale} must be >= 0 (0 freezes the "
                      f"tower's weights, as model.text_frozen)")
  frozen = is_frozen(model_config)
  name = text_encoder(model_config)
  entry = (TOWER_PATH, name, 0.0 if frozen else scale)
  states = None
  if frozen and model_config.get("text_cache", True):
    states = (name, read_dtype(model_config))
  return dataclasses.replace(method, pretrained=method.pretrained + (entry,),
                             text_states=states)


def unread(model_config, gru_only: Dict[str, str]) -> Dict[str, str]:
  """Keys these settings never read: the seam's own keys under "gru"; under a tower, the
  method's ``gru_only`` keys ({key: what reads it}) of the text encoder it replaces."""
  name = text_encoder(model_config)
  if name == "gru":
    return {k: "model.text_encoder='gru'; only a pretrained text tower reads it"
            for k in TOWER_KEYS}
  out = {k: f"model.text_encoder={name!r} replaces {what}" for k, what in gru_only.items()}
  if not is_frozen(model_config):
    out["text_cache"] = ("the tower is fine-tuned (model.text_frozen=false), so its token "
                         "vectors change every step and cannot be computed once")
  if model_config.get("text_frozen", False):
    # MMCA's preset freezes the tower: a learning-rate scale alone would train nothing.
    out["text_lr_scale"] = ("the tower is frozen (model.text_frozen=true), so no learning "
                            "rate reaches it; add --config.model.text_frozen=false to "
                            "fine-tune it")
  return out
