"""What a trained workdir keeps besides its checkpoints, and the checks that read it.

A model's parameters only mean something together with the map from raw captions to ids it
was trained on. A workdir therefore carries:

``W/inputs/``      the vocabularies the model's ids come from: the tokenizer (``vocab.json``,
                   SCAN's word vocabulary, or ``spm.model``) and, for dependency triples
                   (DeFrag), ``deps_vocab.json``;
``W/data.json``    their records (kind, file, sha256), the fingerprint of every split the
                   model was trained with (per split: caption text hash in file order, feature
                   shape, dtype and content hash, captions per image, optional inputs present)
                   and, for an extracted photo folder, the backbone its features came from
                   (name, input size, weights sha256, from its ``meta.json``).

Training writes both once, before the first step, and a resumed run reads them back;
``--mode=eval`` and ensembles use them and never rebuild a vocabulary from data, which would
renumber the words when a split is re-saved in another order. Evaluating on other data is
allowed (cross-dataset numbers): it is announced on stderr and ``results.json`` records the
evaluated data's fingerprint. The config a workdir was trained with (``W/config.json``) is
compared with a rerun's or an evaluation's before any checkpoint is read.
"""
import hashlib
import json
import os
import sys
from typing import Any, Dict, Optional, Tuple

import ml_collections

from xmr_jax.common.errors import ConfigError, WorkdirError
from xmr_jax.common.io import atomic_write_json
from xmr_jax.data import pipeline, tokenizers

INPUTS = "inputs"
DATA_JSON = "data.json"
DEPS_VOCAB_FILE = "deps_vocab.json"

# Config keys whose change makes a checkpoint unloadable or its ids meaningless, for any use
# of a workdir (a key or a whole section).
FIXED = ("method", "model", "data.tokenizer", "data.vocab_path", "data.vocab_size",
         "data.word_embeddings", "data.word_vectors", "data.captions_per_image")
# Also fixed when training resumes: the optimiser state's structure and the batch order.
FIXED_FOR_TRAINING = ("train.batch_size", "train.optimizer", "train.weight_decay",
                      "train.grad_clip", "seed", "data.max_caption_len")


def _flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def _jsonable(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The config as ``config.json`` holds it (tuples as lists)."""
  return json.loads(json.dumps(config.to_dict()))


def _matches(key: str, prefixes) -> bool:
  return any(key == p or key.startswith(p + ".") for p in prefixes)


def check_config(config, workdir: str, mode: str) -> None:
  """ConfigError naming every key whose value differs from ``W/config.json`` and that a
  workdir cannot change (:data:`FIXED`; for ``mode='train'`` also
  :data:`FIXED_FOR_TRAINING`). Keys that change neither shapes nor data (steps, epochs,
  logging, checkpointing, evaluation settings, hyperparameters) may differ. A workdir
  without ``config.json`` (new) passes. Runs before orbax is touched."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    stored = _flatten(json.load(f))
  new = _flatten(_jsonable(config))
  # Workdirs store absolute paths; one written before that compares as its cwd resolves it.
  from xmr_jax.training.config_check import absolute_path
  stored = {k: absolute_path(k, v) for k, v in stored.items()}
  new = {k: absolute_path(k, v) for k, v in new.items()}
  fixed = FIXED + (FIXED_FOR_TRAINING if mode == "train" else ())
  diff = [f"{key}: stored {stored[key]!r}, new {new[key]!r}" for key in sorted(new)
          if key in stored and _matches(key, fixed) and stored[key] != new[key]]
  if diff:
    raise ConfigError(f"{workdir} was trained with another config ({'; '.join(diff)}); its "
                      f"checkpoint cannot serve this one. Use a new workdir or the config "
                      f"{workdir} was trained with (--mode=eval without --config uses it)")


def _read_record(workdir: str) -> Optional[Dict[str, Any]]:
  path = os.path.join(workdir, DATA_JSON)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def load_vocabularies(workdir: str) -> Optional[Tuple[Any, Any]]:
  """(tokenizer, deps_vocab or None) stored in ``workdir``, or None if it stores none.

  Raises DataError when a stored file is missing or was changed (sha256).
  """
  record = _read_record(workdir)
  if record is None:
    return None
  directory = os.path.join(workdir, INPUTS)
  tokenizer = tokenizers.load_tokenizer(directory, record["tokenizer"])
  deps = None
  if record.get("deps_vocab"):
    deps = pipeline.DepsVocab.load(os.path.join(directory, record["deps_vocab"]["file"]))
  return tokenizer, deps


def checkpoint_step(workdir: str) -> Optional[int]:
  """The step of the checkpoint ``workdirs.restore_variables`` restores: the best one, else
  the latest; None without either. Read from the step folders' names (orbax writes a step
  into a temporary name and renames it when complete, so only finished steps count)."""
  for folder in ("best", "checkpoints"):
    path = os.path.join(workdir, folder)
    steps = [int(n) for n in (os.listdir(path) if os.path.isdir(path) else []) if n.isdigit()]
    if steps:
      return max(steps)
  return None


def model_identity(workdir: str) -> Dict[str, Any]:
  """What identifies the model a trained workdir serves, read without restoring it.

  Returns ``{"method", "checkpoint_step", "tokenizer_sha256", "config_sha256", "backbone"}``:
  the checkpoint step of :func:`checkpoint_step`, the sha256 of the stored tokenizer file
  (``W/data.json``; None for a workdir that keeps none), the sha256 of the config keys a
  checkpoint depends on (:data:`FIXED`, as canonical JSON) and the backbone record of an
  extracted photo folder (None for other data). Two equal identities encode alike.

  Raises:
    WorkdirError: ``workdir`` has no ``config.json``.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise WorkdirError(f"{path} not found: {workdir} is not a trained xmr_jax workdir")
  with open(path) as f:
    stored = json.load(f)
  fixed = {k: v for k, v in _flatten(stored).items() if _matches(k, FIXED)}
  digest = hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()
  record = _read_record(workdir) or {}
  return {"method": stored.get("method"), "checkpoint_step": checkpoint_step(workdir),
          "tokenizer_sha256": (record.get("tokenizer") or {}).get("sha256"),
          "config_sha256": digest, "backbone": record.get("backbone")}


def has_checkpoint(workdir: str) -> bool:
  """Whether ``workdir`` holds a latest or best checkpoint folder."""
  return any(os.path.isdir(os.path.join(workdir, d)) for d in ("best", "checkpoints"))


def vocabularies_for(workdir: str, rebuild: bool = False) -> Optional[Tuple[Any, Any]]:
  """The vocabularies a run on ``workdir`` must use: the stored ones; None for a workdir
  without a checkpoint (they are built from the data and stored), or with ``rebuild``.

  Raises WorkdirError for a workdir trained before workdirs stored their tokenizer: its
  model's word ids cannot be recovered safely from the data.
  """
  stored = load_vocabularies(workdir)
  if stored is not None or not has_checkpoint(workdir) or rebuild:
    return stored
  raise WorkdirError(
      f"{workdir} holds a checkpoint but not the tokenizer it was trained with ({workdir}/"
      f"{DATA_JSON} is missing: it was trained by an older xmr_jax). Rebuilding it from the data "
      f"gives other word ids if the training captions changed in any way, order included. "
      f"Train a new workdir, or, if the training data is exactly what {workdir} was trained "
      f"on, add --rebuild_tokenizer once: the tokenizer built from it is then stored in "
      f"{workdir}")


def save(workdir: str, dataset) -> None:
  """Stores ``dataset``'s vocabularies and every split's fingerprint in ``workdir``
  (atomic writes; ``data.json`` last, so it never names a file not yet written)."""
  directory = os.path.join(workdir, INPUTS)
  record = {"version": 1,
            "tokenizer": tokenizers.save_tokenizer(dataset.tokenizer, directory),
            "splits": {name: dataset.fingerprint(name) for name in dataset.split_names}}
  if dataset.deps_vocab is not None:
    dataset.deps_vocab.save(os.path.join(directory, DEPS_VOCAB_FILE))
    record["deps_vocab"] = {"file": DEPS_VOCAB_FILE}
  backbone = _extraction_backbone(dataset.data_dir)
  if backbone is not None:      # photo folders: the network the features came from
    record["backbone"] = backbone
  atomic_write_json(os.path.join(workdir, DATA_JSON), record)


def _extraction_backbone(data_dir: str) -> Optional[Dict[str, Any]]:
  """The backbone record (name, input size, weights sha256) of an extracted photo folder's
  ``meta.json``, None for data not made by ``xmr_jax.data.extract``."""
  path = os.path.join(data_dir, "meta.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    meta = json.load(f)
  return meta.get("backbone") if isinstance(meta, dict) else None


def _differences(stored: Dict[str, Any], now: Dict[str, Any]):
  """Fingerprint fields that differ, ignoring where the data lies (a moved folder is the
  same data)."""
  return [k for k in sorted(now) if k != "location" and stored.get(k) != now[k]]


def check_training_data(workdir: str, dataset, train_split: str) -> None:
  """WorkdirError when a resumed run's training split is not the data ``workdir`` was
  trained on (the data iterator's position and the stored word ids would then be wrong)."""
  record = _read_record(workdir)
  stored = (record or {}).get("splits", {}).get(train_split)
  if stored is None:
    return
  diff = _differences(stored, dataset.fingerprint(train_split))
  if diff:
    raise WorkdirError(f"{workdir} was trained on other data than {dataset.data_dir} (split "
                       f"{train_split!r} differs in {', '.join(diff)}); resuming would go on "
                       f"with other batches and word ids. Use a new workdir")


def check_feature_shape(workdir: str, dataset) -> None:
  """ConfigError, before any checkpoint is read, when ``dataset``'s region features have
  another dimension than the ones ``workdir`` was trained on (e.g. another backbone): the
  image encoder's weights cannot take them."""
  record = _read_record(workdir) or {}
  train = dataset.data_config.train_split
  stored = record.get("splits", {}).get(train, {}).get("feature_shape")
  now = dataset.fingerprint(train)["feature_shape"]
  if stored and stored[-1:] != now[-1:]:
    raise ConfigError(f"{workdir} was trained on {stored[-1]}-dimensional region features; "
                      f"{dataset.data_dir} has {now[-1]}-dimensional ones (another backbone or "
                      f"feature extractor?). Evaluate it on features made the same way")


def announce_data(workdir: str, dataset, split: str) -> None:
  """One stderr line when split ``split`` of ``dataset`` is not data ``workdir`` was trained
  and evaluated with (allowed: cross-dataset evaluation)."""
  record = _read_record(workdir) or {}
  stored = record.get("splits", {}).get(split)
  now = dataset.fingerprint(split)
  if stored is not None and not _differences(stored, now):
    return
  why = ("it has no split of that name" if stored is None else
         "it differs in " + ", ".join(_differences(stored, now)))
  print(f"xmr_jax: evaluating {workdir} on data it was not trained with: {dataset.data_dir} "
        f"split {split!r} ({why}); results.json records this data's fingerprint",
        file=sys.stderr, flush=True)
