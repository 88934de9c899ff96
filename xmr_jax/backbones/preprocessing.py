"""Photo -> network input, by named policy: how a photo is resized (:data:`RESIZE`) and how
its pixels are normalised (:data:`NORMALISE`). A backbone entry of :mod:`.registry` names one
of each; adding a policy is one entry here.

The EfficientNet-Lite policy (``squash_bilinear`` + ``inception``) is the project's since
the first extractor: the whole photo (EXIF orientation applied, so it is upright as a viewer
shows it), converted to RGB, resized to S x S with PIL bilinear (no crop, so the aspect ratio
is not kept), then ``x / 255 * 2 - 1``. The Lite weights were trained with ``(x - 127) / 128``
(the Lite builder's MEAN_RGB/STDDEV_RGB), which differs by less than 0.008.
"""
from typing import Callable, Dict

import numpy as np

from xmr_jax.common.errors import InputError

MIN_SIZE = 32   # one cell of the final map of a stride-32 network


class BackboneError(InputError):
  """Bad input to the backbone: images of the wrong shape/dtype, a bad size, no weights."""


def _squash_bilinear(rgb, size: int):
  from PIL import Image
  return rgb.resize((size, size), Image.BILINEAR)


def _inception(pixels: np.ndarray) -> np.ndarray:
  return pixels / 255.0 * 2.0 - 1.0


# name -> (RGB PIL image, side S) -> S x S PIL image
RESIZE: Dict[str, Callable] = {"squash_bilinear": _squash_bilinear}
# name -> (S, S, 3) float32 pixels in [0, 255] -> network input
NORMALISE: Dict[str, Callable[[np.ndarray], np.ndarray]] = {"inception": _inception}


def check_size(size, where: str) -> None:
  """BackboneError naming ``where`` unless ``size`` is an integer >= 32 (not a bool).

  Any such side works: with TF "SAME" padding a stride-32 network's map has ceil(S / 32)
  cells per side.
  """
  if not (isinstance(size, (int, np.integer)) and not isinstance(size, bool)
          and size >= MIN_SIZE):
    raise BackboneError(f"{where}: {size!r} must be an integer >= {MIN_SIZE} (the map has "
                        f"ceil(S / 32) cells per side)")


def preprocess(pil_image, size: int, resize: str = "squash_bilinear",
               normalise: str = "inception") -> np.ndarray:
  """A photo as a network's input: (size, size, 3) float32.

  Args:
    pil_image: a ``PIL.Image.Image`` (any mode PIL can convert to RGB); EXIF orientation is
      applied first.
    size: output side in pixels, an integer >= 32.
    resize, normalise: names in :data:`RESIZE` and :data:`NORMALISE`.
  Returns: (size, size, 3) float32 (``inception``: in [-1, 1]).
  Raises:
    BackboneError: not a PIL image, a bad size, or an unknown policy name.
  """
  if normalise not in NORMALISE:
    raise BackboneError(f"preprocess: unknown policy normalise={normalise!r}; known "
                        f"{sorted(NORMALISE)}")
  return NORMALISE[normalise](resized(pil_image, size, resize).astype(np.float32))


def resized(pil_image, size: int, resize: str = "squash_bilinear") -> np.ndarray:
  """A photo resized as a network sees it, before normalisation: (size, size, 3) uint8 RGB.

  :func:`preprocess` is this followed by the normalisation; models that run the backbone
  themselves (``model.image_input=photos``) store this and normalise on the device.

  Raises:
    BackboneError: not a PIL image, a bad size, or an unknown ``resize`` policy.
  """
  from PIL import Image, ImageOps
  if not isinstance(pil_image, Image.Image):
    raise BackboneError(f"preprocess(pil_image): expected a PIL.Image.Image, got "
                        f"{type(pil_image).__name__}")
  check_size(size, "preprocess(size)")
  if resize not in RESIZE:
    raise BackboneError(f"preprocess: unknown policy resize={resize!r}; known "
                        f"{sorted(RESIZE)}")
  rgb = ImageOps.exif_transpose(pil_image).convert("RGB")
  return np.asarray(RESIZE[resize](rgb, size), np.uint8)
