"""Vocabularies, sizes and difficulty knobs shared by every stage of the generator."""
import dataclasses

VERSION = "1.0.0"
MAX_OBJECTS = 5
MIN_OBJECTS = 2
CAPTIONS_PER_IMAGE = 5
SPLITS = ("train", "dev", "test")

CATEGORIES = ("dog", "cat", "bird", "horse", "cow", "sheep", "elephant", "giraffe",
              "car", "bus", "truck", "bicycle", "boat", "airplane", "train", "cup",
              "bottle", "chair", "table", "lamp", "tree", "flower", "ball", "clock")
COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown",
           "white", "black")
SIZES = ("small", "medium", "large")
RELATIONS = ("left_of", "right_of", "above", "below", "near")


@dataclasses.dataclass(frozen=True)
class Difficulty:
  """Difficulty knobs (keyword arguments of :func:`generate`).

  Defaults aim at hard-but-learnable: a fragment model that reads each region's category and
  colour jointly can resolve captions, while mean-pooled (global) features mix the bindings of
  5 objects with 12 clutter regions and 60 % of test images have 3 siblings with the same
  caption vocabulary, so a global embedding should stay well below saturation.
  """
  feature_noise: float = 0.5         # std of additive feature noise (features have std ~1)
  nuisance: float = 1.0              # scale of the random appearance input of the MLP
  colour_confusion: float = 0.2      # P(region's colour evidence is blended with another)
  partial_frac: float = 0.3          # P(object region covers only part of the object)
  box_jitter: float = 0.12           # std of box-edge jitter, relative to the object extent
  object_region_frac: float = 2 / 3  # share of the 36 regions placed on objects
  clutter_strength: float = 0.35     # weight of false category evidence in clutter regions
  hard_negative_frac: float = 0.6    # share of images in groups of permuted siblings
  group_size: int = 4                # images per hard-negative group
  p_colour: float = 0.85             # P(caption states a mentioned object's colour)
  p_size: float = 0.4                # P(caption states a mentioned object's size)

