"""Config checks that run before anything else: values, paths, and options set but not used.

``check_config(config)`` runs in every entry point (``loop.setup``); ``check_overrides(config,
overrides)`` runs in the CLI with the ``--config.x=...`` values the user typed, so that a value
the chosen path never reads is an error naming the key instead of being silently ignored.
Every problem is a ``ConfigError`` (the CLI prints it as one line, exit status 2).
"""
import math
import os
from typing import Any, Dict, Mapping

from xmr_jax.common.errors import ConfigError
from xmr_jax.data import datasets
from xmr_jax.models import image_tower, registry
from xmr_jax.models import text_tower as tt
# main resolves model.dtype=auto through this room (the choice then lands in config.json).
from xmr_jax.models.precision import resolve_auto  # noqa: F401
from xmr_jax.training import identity

# File paths a config may name: each must exist when set (data.dir is checked by the data room,
# since the synthetic benchmark uses it as a cache directory that may not exist yet).
PATH_KEYS = ("data.vocab_path", "data.word_embeddings")
# train.* values that must be positive (> 0) or non-negative (>= 0) numbers.
POSITIVE = ("batch_size", "log_every_steps", "checkpoint_every_steps", "max_to_keep",
            "eval_every_epochs", "prefetch")
NON_NEGATIVE = ("grad_clip", "weight_decay", "lr_decay_epochs", "momentum", "num_devices")


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def check_hparams(hparams: Mapping[str, Any], where: str = "config.hparams") -> None:
  """Every swept scalar is a finite number >= 0, and the learning rate is > 0.

  ``where`` names the source in the message (``config.hparams`` or a sweep variant).
  """
  for key, value in hparams.items():
    try:
      value = float(value)
    except (TypeError, ValueError):
      raise ConfigError(f"{where}.{key}={value!r} is not a number") from None
    if not math.isfinite(value):
      raise ConfigError(f"{where}.{key}={value} is not a finite number; set a finite value "
                        f"(e.g. --config.hparams.{key}=...)")
    if value < 0 or (key == "learning_rate" and value == 0):
      bound = "> 0" if key == "learning_rate" else ">= 0"
      raise ConfigError(f"{where}.{key}={value:g} must be {bound}")


def _check_train(train) -> None:
  for key in POSITIVE + NON_NEGATIVE:
    if key not in train:
      continue
    value = train[key]
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (key in POSITIVE and value <= 0) or value < 0:
      bound = "> 0" if key in POSITIVE else ">= 0"
      raise ConfigError(f"config.train.{key}={value!r} must be a finite number {bound}")
  if train.num_steps <= 0 and not (math.isfinite(train.num_epochs) and train.num_epochs > 0):
    raise ConfigError(f"config.train.num_epochs={train.num_epochs!r} must be > 0 (or set "
                      f"config.train.num_steps > 0)")
  if not 0 < train.lr_decay_factor <= 1:
    raise ConfigError(f"config.train.lr_decay_factor={train.lr_decay_factor!r} must be in "
                      f"(0, 1]")


def _check_paths(config) -> None:
  for key in PATH_KEYS:
    path = _get(config, key)
    if path and not os.path.isfile(path):
      raise ConfigError(f"config.{key}={path!r}: no such file; give an existing file or leave "
                        f"it empty")


def _check_rerank(settings) -> None:
  """``eval.rerank_k`` / ``eval.shortlist`` (two-stage ranking, evaluation/rerank.py)."""
  k, shortlist = settings.get("rerank_k", 0), settings.get("shortlist", "")
  if isinstance(k, bool) or not isinstance(k, int) or k < 0:
    raise ConfigError(f"config.eval.rerank_k={k!r} must be an integer >= 0 (0: score every "
                      f"pair; K > 0: two-stage ranking, the exact score on each query's top K)")
  if k == 0:
    if shortlist:
      raise ConfigError(f"config.eval.shortlist={shortlist!r} is set but config.eval.rerank_k"
                        f"=0 scores every pair and reads no shortlist; set "
                        f"--config.eval.rerank_k=K (e.g. 128) or leave the shortlist empty")
    return
  if not shortlist:
    raise ConfigError(f"config.eval.rerank_k={k} needs config.eval.shortlist: 'own' (the "
                      f"method's own dot-product global term, where it has one) or a trained "
                      f"workdir of an embedding method on the same data, e.g. "
                      f"--config.eval.shortlist=W_vsepp")
  if shortlist != "own" and not os.path.isfile(os.path.join(shortlist, "config.json")):
    raise ConfigError(f"config.eval.shortlist={shortlist!r}: not a trained xmr_jax workdir (no "
                      f"config.json there); give 'own' or the workdir of a VSE++ or PCME model "
                      f"trained on the same data")
  if shortlist != "own" and not identity.has_checkpoint(shortlist):
    raise ConfigError(f"config.eval.shortlist={shortlist!r} holds no checkpoint; train it "
                      f"first")


# Paths a workdir's config.json keeps absolute, so search, --mode=eval, ensembles and resumes
# find the data from any working directory (eval.shortlist's "own" is a word, not a path).
ABSOLUTE_KEYS = ("data.dir", "data.vocab_path", "data.word_embeddings", "data.images.instances",
                 "eval.shortlist")


def absolute_path(key: str, value):
  """``value`` of ``key`` made absolute when ``key`` is one of :data:`ABSOLUTE_KEYS` and it
  is a relative path (empty, "own" and other keys' values are returned as they are)."""
  if key in ABSOLUTE_KEYS and isinstance(value, str) and value and value != "own":
    return os.path.abspath(value)
  return value


def absolute_paths(config) -> None:
  """Rewrites the relative paths of :data:`ABSOLUTE_KEYS` in ``config`` (in place) against the
  current directory."""
  for key in ABSOLUTE_KEYS:
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      node = node.get(name) if node is not None else None
    if node is not None and leaf in node:
      node[leaf] = absolute_path(key, node[leaf])


def check_config(config) -> None:
  """ConfigError naming the key for a non-finite or out-of-range value, a missing file, or
  an inconsistent two-stage ranking setting (``eval.rerank_k`` / ``eval.shortlist``)."""
  check_hparams(config.hparams)
  _check_train(config.train)
  _check_paths(config)
  _check_rerank(config.eval)


def unread_keys(config) -> Dict[str, str]:
  """Config keys (or sections) the chosen paths of ``config`` do not read, with the reason."""
  t = config.train
  out = dict(datasets.unread_keys(config.data))    # the data room knows what its sources read
  if t.optimizer != "sgd":
    out["train.momentum"] = f"train.optimizer={t.optimizer!r}; only 'sgd' reads it"
  if t.num_steps > 0:
    out["train.num_epochs"] = f"train.num_steps={t.num_steps} sets the length instead"
  for key, why in registry.unread_model_keys(config).items():
    out[f"model.{key}"] = why
  out.update(image_tower.unread(config))
  return out


def summary(config) -> str:
  """One line naming what a run trains on: the method, the data and (for a photo folder) the
  backbone and whether it is fine-tuned, the text tower and whether it is frozen, the batch,
  the length and the dtype — the settings a preset chooses that change the numbers."""
  m, d, t = config.model, config.data, config.train
  parts = [f"{config.method} on {d.name}"]
  if d.name == "images":
    how = ("fine-tuned inside the model" if m.get("image_input") == "photos"
           else "frozen grid features")
    parts.append(f"backbone {d.images.backbone} ({how})")
  tower = tt.text_encoder(m)
  if tower == "gru":   # the seam's name for "the method's own encoder" (MMCA's is a Transformer)
    vectors = d.get("word_vectors")
    parts.append("text: the method's own encoder, "
                 + (f"words initialised from {vectors}" if vectors else "from scratch"))
  elif tt.is_frozen(m):
    parts.append(f"text tower {tower} (frozen)")
  else:
    parts.append(f"text tower {tower} (fine-tuned at {m.get('text_lr_scale', 1.0):g} x the "
                 f"learning rate)")
  length = f"{t.num_steps} steps" if t.num_steps > 0 else f"{t.num_epochs:g} epochs"
  parts.append(f"batch {t.batch_size}, {length}, model.dtype={m.get('dtype', 'auto')}")
  return "xmr_jax: " + "; ".join(parts)


def check_overrides(config, overrides: Mapping[str, Any]) -> None:
  """ConfigError for a ``--config.<key>`` the user set that this config's path never reads."""
  unread = unread_keys(config)
  for key in sorted(overrides):
    for prefix, why in unread.items():
      if key == prefix or key.startswith(prefix + "."):
        raise ConfigError(f"--config.{key} is set but not used: {why}. Remove it, or change "
                          f"the setting that makes it unused")
