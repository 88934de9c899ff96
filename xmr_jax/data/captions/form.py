"""The internal form every caption reader returns, and the steps that only need that form.

:class:`CaptionedImage` is one photo with its captions (in file order), optional instance
boxes and classes, and an optional split; :class:`CaptionSet` is the images of one caption
file plus what was left out (``dropped``) and why. The steps here are pure: each returns a
new :class:`CaptionSet` and never changes its argument.
"""
import dataclasses
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from xmr_jax.common.errors import ConfigError
from xmr_jax.common.io import atomic_write_bytes
from xmr_jax.data.errors import DataError

SPLITS = ("train", "dev", "test")

# Why an item was left out. All but the last are faults of a real dataset: each is a
# DataError under ``strict``. BEYOND_K is not a fault (the image keeps its first k captions)
# but is still listed, so dropped.txt accounts for every caption that is not used.
MISSING_IMAGE = "missing image"          # a caption names a file that is not in the folder
NO_CAPTION = "no caption"                # a photo (in the folder or the file) has no caption
TOO_FEW = "too few captions"             # fewer than captions_per_image
UNREADABLE = "unreadable image"          # not a photo PIL can read, or truncated
EMPTY_CAPTION = "empty caption"          # no visible character after normalize_caption
REPEATED_ID = "repeated caption id"      # a COCO annotations[].id given to an earlier entry
BEYOND_K = "beyond k"                    # a caption after an image's first k
REASONS = (MISSING_IMAGE, NO_CAPTION, TOO_FEW, UNREADABLE, EMPTY_CAPTION, REPEATED_ID,
           BEYOND_K)


class Dropped(NamedTuple):
  """One left-out item: ``item`` names it (file, line, detail), ``reason`` is in REASONS."""
  item: str
  reason: str


@dataclasses.dataclass(frozen=True)
class CaptionedImage:
  """One photo and its captions.

  Attributes:
    file: the photo's path relative to the images folder, "/"-separated, as the caption
      file spells it (e.g. "val2014/COCO_val2014_000000391895.jpg").
    captions: its captions in file order, each through ``precomp.normalize_caption``.
    sources: where each caption came from, one per caption ("captions.txt:226",
      "captions.json: annotations[17]"), for messages that name the line.
    boxes: (n, 4) float32 instance boxes x0, y0, x1, y1 in pixels of the photo; None when
      no instance file was given, (0, 4) for a photo without instances.
    classes: (n,) int32 class index (0..C-1) of each box, or None like ``boxes``.
    split: "train", "dev" or "test" when the source gives splits, else None.
  """
  file: str
  captions: List[str]
  sources: List[str]
  boxes: Optional[np.ndarray] = None
  classes: Optional[np.ndarray] = None
  split: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class CaptionSet:
  """The images of one caption file, in the file's order, and what was left out.

  Attributes:
    images: the kept images.
    format: "coco", "flickr", "karpathy" or "csv": the layout the file was read as.
    path: the caption file.
    class_names: the C instance class names (index = class index) when an instance file
      was given, else None.
    dropped: every left-out item with its reason, in the order found.
  """
  images: List[CaptionedImage]
  format: str
  path: str
  class_names: Optional[List[str]] = None
  dropped: List[Dropped] = dataclasses.field(default_factory=list)

  @property
  def num_captions(self) -> int:
    """Total number of kept captions."""
    return sum(len(im.captions) for im in self.images)


def fault(strict: bool, dropped: List[Dropped], reason: str, item: str, message: str) -> None:
  """Records one fault: a DataError(``message``) when ``strict``, else appends to ``dropped``.

  ``message`` names the file (and line) and what to do; ``item`` is the short form that
  goes into dropped.txt.
  """
  if strict:
    raise DataError(message + " (without strict=True such items are dropped and listed "
                    "in dropped.txt)")
  dropped.append(Dropped(item, reason))


def where(image: CaptionedImage) -> str:
  """Where an image's captions are: "captions.txt:226,227,228" or "x.json: annotations[4] (+2)"."""
  if not image.sources:
    return image.file
  heads = {source.rpartition(":")[0] for source in image.sources}
  lines = [source.rpartition(":")[2] for source in image.sources]
  if len(heads) == 1 and all(line.isdigit() for line in lines):
    return f"{heads.pop()}:{','.join(lines)}"
  more = len(image.sources) - 1
  return image.sources[0] + (f" (+{more} more)" if more else "")


def check_k(k: int) -> None:
  """ConfigError unless ``k`` (captions_per_image) is a positive int."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ConfigError(f"captions_per_image={k!r}: use a positive int (5 for COCO and "
                      "Flickr30K), or None to keep every caption")


def keep_k(captions: CaptionSet, k: int, strict: bool = False) -> CaptionSet:
  """Every image with exactly ``k`` captions: its first k in file order.

  An image with more keeps its first k (the rest are listed as BEYOND_K, never an error);
  an image with fewer is dropped as TOO_FEW, or is a DataError under ``strict`` naming the
  image, its caption count and its lines.

  Raises:
    ConfigError: k is not a positive int.
    DataError: ``strict`` and an image has fewer than k captions.
  """
  check_k(k)
  kept, dropped = [], list(captions.dropped)
  for image in captions.images:
    n = len(image.captions)
    if n < k:
      fault(strict, dropped, TOO_FEW, f"{image.file} ({plural(n, 'caption')}; {where(image)})",
            f"{where(image)}: image {image.file!r} has {plural(n, 'caption')}, fewer "
            f"than captions_per_image={k}; add its missing captions, remove its lines, or "
            "lower captions_per_image")
      continue
    for source in image.sources[k:]:
      dropped.append(Dropped(f"{source}: {image.file} (caption {k + 1} or later)", BEYOND_K))
    kept.append(dataclasses.replace(image, captions=image.captions[:k],
                                    sources=image.sources[:k]))
  return dataclasses.replace(captions, images=kept, dropped=dropped)


def split_images(captions: CaptionSet, n_dev: int, n_test: int, seed: int) -> CaptionSet:
  """A seeded split by image: ``n_dev`` dev images, ``n_test`` test images, train the rest.

  The images are sorted by file name and permuted with ``np.random.default_rng(seed)``;
  the first ``n_dev`` of the permutation are dev, the next ``n_test`` test. Sorting first
  makes the split depend only on the set of file names and the seed, not on the caption
  file's line order. The images keep their order in the returned set; only ``split`` is set.

  Raises:
    ConfigError: negative or non-int counts, more dev+test images than exist, or a set
      whose source already gives splits (Karpathy's json: use those).
  """
  for name, value in (("n_dev", n_dev), ("n_test", n_test)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      raise ConfigError(f"split_images: {name}={value!r}; use a count of images >= 0")
  if any(image.split is not None for image in captions.images):
    raise ConfigError(f"split_images: {captions.path} gives its own splits ({captions.format}"
                      "); use them, or read the captions without splits to draw new ones")
  n = len(captions.images)
  if n_dev + n_test > n:
    raise ConfigError(f"split_images: n_dev={n_dev} + n_test={n_test} images requested but "
                      f"{captions.path} has {n} usable images; lower them (extract: --dev/--test; "
                      f"a config: --config.data.split_sizes='(DEV, TEST)')")
  by_name = sorted(range(n), key=lambda i: captions.images[i].file)
  order = np.random.default_rng(seed).permutation(n)
  split_of = {}
  for rank, position in enumerate(order):
    split_of[by_name[position]] = ("dev" if rank < n_dev else
                                   "test" if rank < n_dev + n_test else "train")
  images = [dataclasses.replace(image, split=split_of[i])
            for i, image in enumerate(captions.images)]
  return dataclasses.replace(captions, images=images)


def multi_hot(captions: CaptionSet) -> np.ndarray:
  """(N, C) uint8 multi-hot instance classes per image (1 where the image has a box of c).

  An image without instances is all zero (PCME's PMRP leaves such queries out).

  Raises:
    DataError: the set was read without an instance file (``class_names`` is None).
  """
  if captions.class_names is None:
    raise DataError(f"{captions.path}: no instance classes; pass instances=<instances.json> "
                    "(COCO instance annotations) when reading the captions")
  out = np.zeros((len(captions.images), len(captions.class_names)), np.uint8)
  for row, image in enumerate(captions.images):
    if image.classes is not None:
      out[row, image.classes] = 1
  return out


def count_dropped(dropped: Sequence[Dropped]) -> Dict[str, int]:
  """{reason: number of dropped items} for the reasons that occur, in REASONS order."""
  counts = {reason: 0 for reason in REASONS}
  for item in dropped:
    counts[item.reason] = counts.get(item.reason, 0) + 1
  return {reason: n for reason, n in counts.items() if n}


def summary(captions: CaptionSet, dropped_path: Optional[str] = None) -> str:
  """The one line a user sees after reading: what was kept, and counts per drop reason.

  E.g. "xmr_jax captions: captions.txt (csv): kept 2,924 images, 14,620 captions; dropped:
  missing image: 2, no caption: 3, too few captions: 5, beyond k: 19 captions; each item is
  listed in out/dropped.txt" (``dropped_path``, or a pointer to ``write_dropped``).
  """
  line = (f"xmr_jax captions: {captions.path} ({captions.format}): kept "
          f"{len(captions.images):,} images, {captions.num_captions:,} captions")
  counts = count_dropped(captions.dropped)
  if not counts:
    return line + "; nothing dropped"
  parts = [f"{reason}: {n:,}" + (" captions" if reason == BEYOND_K else "")
           for reason, n in counts.items()]
  listed = (f"listed in {dropped_path}" if dropped_path else
            "in CaptionSet.dropped (write_dropped saves them as dropped.txt)")
  return f"{line}; dropped: {', '.join(parts)}; each item is {listed}"


def plural(n: int, word: str) -> str:
  """"1 caption", "2 captions": counts in messages."""
  return f"{n:,} {word}{'s' * (n != 1)}"


def write_dropped(path: str, dropped: Sequence[Dropped]) -> None:
  """Writes every dropped item as "reason<TAB>item" lines (UTF-8) to ``path``, atomically.

  An empty list writes an empty file, so "nothing was dropped" is visible beside the output.
  """
  text = "".join(f"{d.reason}\t{d.item}\n" for d in dropped)
  atomic_write_bytes(path, text.encode("utf-8"))


def split_counts(captions: CaptionSet) -> Dict[Optional[str], int]:
  """{split: number of images} (None for images without a split)."""
  counts: Dict[Optional[str], int] = {}
  for image in captions.images:
    counts[image.split] = counts.get(image.split, 0) + 1
  return counts

