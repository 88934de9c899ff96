"""Photos on disk: which files are photos, a cheap readability check, and loading as RGB.

The check (:func:`check_photo`) reads headers, not pixels, so checking a whole dataset
costs about as much as listing it; :func:`load_photo` decodes and converts whatever PIL
opens (CMYK, greyscale, palette, alpha, 16-bit, EXIF-rotated) into one RGB form instead of
dropping such photos.
"""
import os
import struct
from typing import List, Optional

import numpy as np
from PIL import Image, ImageOps

from xmr_jax.data.errors import DataError

# File suffixes counted as photos when a folder is listed (compared in lower case).
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Exceptions PIL raises for files it cannot parse: OSError (UnidentifiedImageError and
# "image file is truncated"), SyntaxError (bad PNG chunks), struct.error and EOFError (short
# headers), ValueError (bad fields), DecompressionBombError (absurd pixel counts).
_PIL_ERRORS = (OSError, SyntaxError, struct.error, EOFError, ValueError,
               Image.DecompressionBombError)
# A JPEG's end-of-image marker. Inside compressed data a 0xFF byte is always followed by
# 0x00 or a restart marker, so FF D9 near the end means the file was written to its end.
_JPEG_END = b"\xff\xd9"
_JPEG_TAIL_BYTES = 1024   # cameras may append padding or maker data after the marker
_WHITE = (255, 255, 255, 255)


def is_photo_name(name: str) -> bool:
  """True for a file name ending in one of PHOTO_SUFFIXES (any case)."""
  return name.lower().endswith(PHOTO_SUFFIXES)


def list_photos(images_dir: str) -> List[str]:
  """Every photo under ``images_dir`` (recursively), as sorted "/"-separated relative paths.

  Files and folders whose name starts with "." (.DS_Store, .thumbnails) are skipped, and so
  are files without a photo suffix (README, .txt lists).

  Raises:
    DataError: ``images_dir`` is not a directory.
  """
  if not os.path.isdir(images_dir):
    raise DataError(f"{images_dir}: images folder not found; pass the folder that holds the "
                    "photos the caption file names")
  out = []
  for root, dirs, files in os.walk(images_dir):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    rel = os.path.relpath(root, images_dir)
    for name in files:
      if not name.startswith(".") and is_photo_name(name):
        out.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
  return sorted(out)


def _jpeg_is_complete(path: str) -> bool:
  with open(path, "rb") as f:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - _JPEG_TAIL_BYTES))
    return _JPEG_END in f.read()


def check_photo(path: str) -> Optional[str]:
  """None if ``path`` looks like a whole photo, else why not (one short phrase).

  Cheap: PIL parses the header and ``verify()`` checks what the format allows without
  decoding pixels (PNG chunk checksums up to IEND); a JPEG must also end with its
  end-of-image marker (a download cut short does not). A file that passes can still fail
  to decode if its compressed data is corrupt in the middle; :func:`load_photo` then raises.
  """
  try:
    with Image.open(path) as image:
      kind = image.format
      image.verify()
  except _PIL_ERRORS as e:
    return f"PIL cannot read it ({type(e).__name__}: {e})"
  if kind == "JPEG" and not _jpeg_is_complete(path):
    return "truncated JPEG (no end-of-image marker)"
  return None


def _scale_16bit(image: Image.Image) -> Image.Image:
  # Modes I;16* and I hold 16-bit samples (PNG 16-bit greyscale); convert("L") would clip
  # everything above 255 to white, so keep the top 8 bits instead.
  values = np.asarray(image, dtype=np.int64)
  return Image.fromarray(np.clip(values >> 8, 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
  """``image`` as mode "RGB" (8 bits per channel).

  Alpha (RGBA, LA, PA, palette with a transparent colour) is composited on white: a
  transparent background then looks like the page it was drawn for, where dropping alpha
  would show whatever colour the transparent pixels happen to store (often black). CMYK,
  YCbCr, greyscale "L" and bilevel "1" go through PIL's conversion; 16-bit greyscale keeps
  its top 8 bits.

  Raises:
    ValueError: a mode PIL cannot convert to RGB (e.g. floating-point "F").
  """
  if image.mode == "RGB":
    return image
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  elif image.mode.startswith("I;16") or image.mode == "I":
    image = _scale_16bit(image)
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
  if image.mode not in ("RGB", "CMYK", "YCbCr", "L", "1"):
    raise ValueError(f"mode {image.mode!r} has no RGB conversion")
  return image.convert("RGB")


def load_photo(path: str) -> Image.Image:
  """The photo at ``path`` as an RGB PIL image (``np.asarray`` gives (H, W, 3) uint8).

  The EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so a portrait photo a
  phone stored sideways comes out upright with width and height swapped; then
  :func:`to_rgb` converts the mode. The pixels are decoded here, so a file corrupt in the
  middle is found here.

  Raises:
    DataError: naming ``path``: not a photo PIL can read, truncated or corrupt, or a
      pixel mode without an RGB conversion.
  """
  try:
    with Image.open(path) as image:
      image.load()
      upright = ImageOps.exif_transpose(image)
      return to_rgb(upright)
  except FileNotFoundError as e:
    raise DataError(f"{path}: photo not found; check the images folder") from e
  except _PIL_ERRORS as e:
    raise DataError(f"{path}: cannot be read as a photo ({type(e).__name__}: {e}); replace "
                    "the file with a whole copy, or remove it and its captions") from e
