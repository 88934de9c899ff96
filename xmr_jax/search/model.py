"""A trained workdir as a search model: its identity, its restored variables, and photos and
captions encoded exactly as its training data was.

Photos go through the backbone, preprocessing and region layout of the extracted folder the
workdir was trained on (its ``meta.json``; ``xmr_jax.data.extract``'s own functions), then
through the workdir's image encoder; captions through its stored tokenizer (``W/inputs/``)
and text encoder, padded as the evaluation pads them.
"""
import dataclasses
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from xmr_jax.common.errors import ConfigError, WorkdirError
from xmr_jax.data import captions as captions_lib, extract, tokenizers
from xmr_jax.evaluation import engine
from xmr_jax.training import identity as identity_lib, workdirs


def workdir_identity(workdir: str) -> Dict[str, Any]:
  """``training.identity.model_identity`` of a workdir search can use, read without restoring.

  Raises:
    WorkdirError: not a trained workdir, no checkpoint, or not trained on photos turned into
      region features by ``xmr_jax.data.extract`` (no backbone in ``W/data.json``).
  """
  found = identity_lib.model_identity(workdir)
  if found["checkpoint_step"] is None:
    raise WorkdirError(f"{workdir} holds no checkpoint; train it first")
  if found["backbone"] is None:
    raise WorkdirError(f"{workdir} was not trained on photos (its data.json names no backbone: "
                       f"the data was not made by data.name=images or python -m "
                       f"xmr_jax.data.extract); search encodes new photos the way the "
                       f"training photos were encoded, so it needs a workdir trained on photos")
  return found


@dataclasses.dataclass
class SearchModel:
  """A restored workdir with what encoding new photos and captions needs.

  Attributes:
    workdir: the workdir's absolute path.
    identity: :func:`workdir_identity`.
    config: the ConfigDict it was trained with.
    dataset: its training data, opened with its own tokenizer (``data.datasets.Dataset``).
    method: the ``Method``; ``method.embedding`` names the dot-product leaf, if any.
    variables: the best checkpoint's variables (else the latest).
    settings: the extraction settings of the training photos (backbone, size, regions).
  """
  workdir: str
  identity: Dict[str, Any]
  config: Any
  dataset: Any
  method: Any
  variables: Any
  settings: extract.Settings
  _backbone: Optional[Any] = None

  def backbone(self):
    """The jitted region function of :attr:`settings` (built on first use); None for a
    workdir whose model runs its own, fine-tuned backbone on the photos."""
    if "photos" in self.method.inputs:
      return None
    if self._backbone is None:
      self._backbone = extract.region_extractor(self.settings)
    return self._backbone

  def keep(self, reprs: Dict[str, Any]) -> Dict[str, Any]:
    """What an index stores of an encoded repr: the dot-product leaf alone, else all of it."""
    key = self.method.embedding
    return {key: reprs[key]} if key else reprs


def load(workdir: str) -> SearchModel:
  """Restores ``workdir`` (``workdirs.restore_variables``) as a :class:`SearchModel`.

  Raises:
    WorkdirError: as :func:`workdir_identity`; the extracted training folder lost its
      ``meta.json`` or names another backbone than the workdir recorded.
    ConfigError: the method reads dependency triples of captions (DeFrag with
      ``fragments='dependency'``), which search does not make.
  """
  found = workdir_identity(workdir)
  config = workdirs.config_from_workdir(workdir)
  dataset, method, variables = workdirs.restore_variables(config, workdir)
  settings = extract.settings_of_folder(dataset.data_dir)
  recorded = found["backbone"]
  if settings is None or (settings.backbone, settings.size) != (recorded["name"],
                                                                 recorded["size"]):
    raise WorkdirError(f"{dataset.data_dir}/meta.json does not say how {workdir}'s training "
                       f"photos were extracted (expected backbone {recorded['name']} at "
                       f"{recorded['size']} px); restore that folder or train a new workdir")
  if "deps" in method.inputs:
    raise ConfigError(f"{workdir}'s method reads dependency triples of captions, which search "
                      f"does not make; use a workdir trained with model.fragments='bigram'")
  return SearchModel(os.path.abspath(workdir), found, config, dataset, method, variables,
                     settings)


def _image_batch(model: SearchModel, photos: extract.PhotoBatch, first: int):
  """The engine batch of decoded photos, padded to one compiled shape; rows numbered from
  ``first`` (methods that sample at evaluation key each photo's draws by its number)."""
  n = len(photos.rows)
  batch = {"image_index": np.arange(first, first + n, dtype=np.int32)}
  if photos.regions is not None:    # else the model's own backbone reads ``photos``
    batch.update(regions=photos.regions, region_mask=photos.masks)
  if model.dataset.with_boxes:
    batch["boxes"] = photos.boxes
  if "pixels" in model.method.inputs:
    batch["pixels"] = photos.pixels
  if "photos" in model.method.inputs:      # the workdir's fine-tuned backbone reads these
    batch["photos"] = photos.photos
  batch = engine.pad_rows(batch, model.settings.batch_size)
  batch["valid"] = np.arange(len(batch["image_index"])) < n
  return batch


def encode_photos(model: SearchModel, images_dir: str, files: Sequence[str], first: int,
                  dropped: list, progress: bool = True,
                  strict: bool = False) -> Iterator[Tuple[List[int], Dict[str, Any]]]:
  """(indices into ``files``, stored repr) per batch of photos that decode; the others are
  appended to ``dropped`` (UNREADABLE), or raise DataError with ``strict``. Photos are
  numbered from ``first`` (their row in the index)."""
  settings = dataclasses.replace(model.settings, strict=strict)
  items = [captions_lib.CaptionedImage(f, [], []) for f in files]
  done = 0
  with tqdm(total=len(files), desc="encode photos", unit="photo", disable=not progress) as bar:
    for photos in extract.photo_batches(settings, images_dir, items, model.backbone(),
                                        dropped, bar):
      batch = _image_batch(model, photos, first + done)
      reprs = engine.encode_all(model.method, model.variables, [batch], "image",
                                seed=model.config.seed)
      done += len(photos.rows)
      yield photos.rows, model.keep(reprs)


def encode_photo(model: SearchModel, path: str) -> Dict[str, Any]:
  """The stored repr of one photo file (a batch of one). Raises DataError naming ``path``
  when it cannot be decoded."""
  folder, name = os.path.split(os.path.abspath(path))
  (_, reprs), = encode_photos(model, folder, [name], 0, [], progress=False, strict=True)
  return reprs


def _token_ids(model: SearchModel, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, int]:
  """(flat ids, offsets, padded length): texts longer than the longest caption the model was
  built for (``Dataset.max_text_len``) are cut to it (said on stderr), and all are padded to
  the smallest length bucket that fits, as the evaluation pads a split."""
  ds = model.dataset
  flat, offsets = ds.tokenizer.encode_ragged(list(texts))
  if np.diff(offsets).max() > ds.max_text_len:
    flat, offsets, cut = tokenizers.cap_ragged(flat, offsets, ds.max_text_len)
    print(f"xmr_jax search: {int(cut.sum())} text(s) cut to {ds.max_text_len} tokens, the "
          f"longest caption {model.workdir} was built for", file=sys.stderr)
  longest = max(int(np.diff(offsets).max()), 1)
  return flat, offsets, tokenizers.choose_bucket(longest, ds.len_buckets)


def encode_texts(model: SearchModel, texts: Sequence[str], first: int = 0,
                 progress: bool = False) -> Dict[str, Any]:
  """The stored repr of ``texts`` (captions or queries, already through
  ``precomp.normalize_caption``), numbered from ``first`` (methods that sample at evaluation
  key each text's draws by its number), in batches of ``eval.encode_batch_size``."""
  flat, offsets, length = _token_ids(model, texts)
  n = len(texts)
  size = min(model.config.eval.encode_batch_size, n)
  batches = []
  for start in range(0, n, size):
    rows = np.arange(start, min(start + size, n))
    tokens, mask = tokenizers.pad_ragged(flat, offsets, rows, (length,))
    batch = engine.pad_rows({"tokens": tokens, "token_mask": mask,
                             "caption_index": (first + rows).astype(np.int32)}, size)
    batch["valid"] = np.arange(size) < len(rows)
    batches.append(batch)
  reprs = engine.encode_all(model.method, model.variables, batches, "text",
                            seed=model.config.seed, progress=progress, desc="encode captions")
  return model.keep(reprs)
