"""Shared names for the arrays that flow between data, models, losses and evaluation.

A *batch* is a flat ``dict`` of numpy/jax arrays (a pytree, so it shards and vmaps):

============== =============== ==========================================================
key            shape / dtype   meaning
============== =============== ==========================================================
regions        (B, R, F) f32   precomputed region features (SCAN layout: R = 36)
region_mask    (B, R) bool     True for real regions (all True for bottom-up features)
boxes          (B, R, 4) f32   optional, region boxes (x0, y0, x1, y1) in [0, 1]
pixels         (B, H, W, 3) u8 optional, rendered image (synthetic benchmark ``--pixels``)
photos         (B, S, S, 3) u8 optional, photos at the backbone's input size, augmented in
                               training (``model.image_input=photos``, data/photos.py)
tokens         (B, L) int32    caption token ids, 0 = padding
token_mask     (B, L) bool     True for real tokens
text_states    (B, L, D) f32   optional, a frozen pretrained text tower's token vectors,
                               computed once by the data (``model.text_cache``,
                               data/text_states.py); padding zero
deps           (B, T, 3) int32 optional, dependency triples [relation id, head word id,
                               dependent word id] (word ids from the word vocabulary)
deps_mask      (B, T) bool     optional, True for real triples
image_index    (B,) int32      index of the image in its split
caption_index  (B,) int32      index of the caption in its split (image = caption // k)
============== =============== ==========================================================

Models see the image side and the text side separately (the method contract in
``xmr_jax.models.base``): ``IMAGE_KEYS`` go to ``encode_images``, ``TEXT_KEYS`` to
``encode_texts``.
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import jax

Array = jax.Array
PyTree = Any
Batch = Dict[str, Any]

IMAGE_KEYS = ("regions", "region_mask", "boxes", "pixels", "photos")
TEXT_KEYS = ("tokens", "token_mask", "text_states", "deps", "deps_mask")
# Inputs a method may ask the data for (``Method.inputs``); regions and captions always come.
OPTIONAL_INPUTS = ("pixels", "deps", "boxes", "photos")


def image_inputs(batch: Mapping[str, Any]) -> Dict[str, Any]:
  """The image-side arrays of a batch (those present)."""
  return {k: batch[k] for k in IMAGE_KEYS if k in batch}


def text_inputs(batch: Mapping[str, Any]) -> Dict[str, Any]:
  """The text-side arrays of a batch (those present)."""
  return {k: batch[k] for k in TEXT_KEYS if k in batch}


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What a model needs to know about the dataset to build its parameters."""
  vocab_size: int                  # token vocabulary (sentencepiece or word vocab), 0 = pad
  region_dim: int                  # F of the region features
  num_regions: int                 # R
  word_vocab_size: int = 0         # word vocabulary of dependency triples (DeFrag)
  num_relations: int = 0           # dependency relation vocabulary (DeFrag)
  image_size: Optional[Tuple[int, int]] = None   # (H, W) of rendered pixels, if any
  word_vectors: Optional[Any] = None  # (vocab_size, word_dim) float32 init, if given
  max_text_len: int = 0            # longest padded caption (tokens) of any split; 0 = unknown
  backbone: str = ""               # the extracting backbone (data.name=images), "" unknown
  photo_size: int = 0              # S of the stored photos (needs "photos"), 0 = none
