"""The image-tower seam: ``config.model.image_input`` = ``regions`` | ``photos``.

``regions`` (the default) is every method as the papers' precomputed-feature settings train
it: the data's frozen region features (``regions`` / ``region_mask`` of the batch). With
``photos`` the backbone that extracted those features (``data.images.backbone``, recorded in
the extracted folder and carried by ``DataInfo.backbone``) runs inside the model, on the
batch's ``photos`` (B, S, S, 3) uint8 (``xmr_jax.data.photos``: augmented in training, the
extractor's whole-photo resize at evaluation), and its grid map replaces ``regions``: the
method's own image head is unchanged and sees (B, cells^2, 1280) as before. This is PCME's
and VSE++'s published setting (an ImageNet CNN fine-tuned end to end under the image head).

The network is held by every model as the top-level submodule ``image_tower``
(:class:`PhotoTower`; parameters ``params["image_tower"]["net"]``, BatchNorm statistics
``batch_stats["image_tower"]["net"]``). The trainer copies the ImageNet weights and
statistics in at initialisation (``Method.pretrained``) and the optimiser updates the weights
with ``train.backbone_lr_scale`` times the learning rate (``optax.multi_transform``; 0 keeps
them fixed and stops their gradient). BatchNorm always runs in eval mode with the ImageNet
statistics (never updated): training-mode statistics over small batches are a known trap of
fine-tuning (fartashf/vsepp issue #30). With ``model.dtype=bfloat16`` the backbone's dense
convolutions (stem, 1x1 expansions and projections, head) take bfloat16 operands and
accumulate in float32, like every other product of the model; its depthwise convolutions
(elementwise products, memory-bound), BatchNorm and activations stay float32.
``train.backbone_remat`` recomputes each block's activations in the backward pass
(``nn.remat`` per MBConv block) instead of keeping them.
"""
import dataclasses
from typing import Any, Dict, FrozenSet, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmr_jax.common.errors import ConfigError
from xmr_jax.models.precision import conv_kwargs, dense_kwargs, read_dtype
from xmr_jax.types import DataInfo

IMAGE_INPUTS = ("regions", "photos", "pixels")   # pixels: the methods with a pixel encoder
TOWER_PATH = ("image_tower", "net")


def image_input(model_config) -> str:
  """``model.image_input`` (default "regions"), checked: ConfigError naming the choices."""
  value = model_config.get("image_input", "regions")
  if value not in IMAGE_INPUTS:
    raise ConfigError(f"config.model.image_input={value!r} is unknown; choose one of "
                      f"{IMAGE_INPUTS[:2]} (or 'pixels' for VSE++/PCME's pixel encoder)")
  return value


def uses_photos(model_config) -> bool:
  """True when the backbone runs inside the model (``model.image_input=photos``)."""
  return image_input(model_config) == "photos"


def inputs(model_config) -> FrozenSet[str]:
  """The optional batch inputs the seam reads: ``{"photos"}`` with photos, else none."""
  return frozenset({"photos"}) if uses_photos(model_config) else frozenset()


class PhotoTower(nn.Module):
  """A backbone of ``xmr_jax.backbones.registry`` as a trainable image tower: (B, S, S, 3)
  uint8 photos -> (B, ceil(S/32)^2, feature_dim) float32, the row-major grid of its feature
  map (the extractor's ``features``), BatchNorm in eval mode. ``dtype``: ``model.dtype``
  (concrete); ``remat``: ``train.backbone_remat``."""
  backbone: str
  dtype: str = "float32"
  remat: bool = False

  def setup(self):
    from xmr_jax.backbones import registry
    self.entry = registry.get(self.backbone)
    conv = conv_kwargs(self.dtype).get("conv_general_dilated")   # None for float32
    dot = dense_kwargs(self.dtype).get("dot_general")
    self.net = self.entry.flax_network(conv=conv, dot_general=dot, remat=self.remat)

  def __call__(self, photos: jax.Array) -> jax.Array:
    x = self.entry.normalise_pixels(photos.astype(jnp.float32))
    fmap = self.net.feature_map(x)
    return fmap.reshape(fmap.shape[0], -1, fmap.shape[-1])


def photo_regions(tower, images: Mapping[str, jax.Array], *, frozen: bool) -> Dict[str, Any]:
  """The image inputs a method's head reads: ``images`` unchanged without a tower; with one,
  ``regions`` (B, R, F) float32 = the tower's grid of ``images["photos"]`` (gradient stopped
  when ``frozen``) and ``region_mask`` (B, R) all True, ``photos`` removed."""
  if tower is None:
    return dict(images)
  regions = tower(images["photos"])
  if frozen:
    regions = jax.lax.stop_gradient(regions)
  out = {k: v for k, v in images.items() if k not in ("photos", "regions", "region_mask")}
  return {**out, "regions": regions, "region_mask": jnp.ones(regions.shape[:2], bool)}


def backbone_lr_scale(train_config) -> float:
  """``train.backbone_lr_scale`` (default 1): ConfigError unless a finite number >= 0."""
  scale = train_config.get("backbone_lr_scale", 1.0)
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0 \
      or scale == float("inf"):
    raise ConfigError(f"config.train.backbone_lr_scale={scale!r} must be a finite number >= 0 "
                      f"(0 keeps the backbone's ImageNet weights)")
  return float(scale)


def _check_data(info: DataInfo) -> None:
  from xmr_jax.backbones import registry
  if not info.backbone or not info.photo_size:
    raise ConfigError("config.model.image_input='photos' runs the backbone that extracted "
                      "the data's features: train on a photo folder (data.name=images, e.g. "
                      "the configs' data=photos preset), whose extraction records it")
  cells = registry.get(info.backbone).cells(info.photo_size) ** 2
  if cells != info.num_regions:
    raise ConfigError(f"config.model.image_input='photos' gives the {cells} grid cells of "
                      f"{info.backbone}'s map, but the data has {info.num_regions} regions "
                      f"per image: use --config.data.images.regions=grid")


def with_tower(method, config, info: DataInfo):
  """``method`` with its model holding the :class:`PhotoTower` of ``info.backbone`` and the
  tower in ``Method.pretrained`` (weights and BatchNorm statistics copied in at
  initialisation, learning-rate scale ``train.backbone_lr_scale``); unchanged for regions.

  Raises:
    ConfigError: data without a recorded backbone or stored photos, regions other than the
      grid, a bad ``backbone_lr_scale``, or ``image_input='pixels'`` for a method without a
      pixel encoder.
  """
  kind = image_input(config.model)
  if kind == "pixels" and "pixels" not in method.inputs:
    raise ConfigError(f"config.model.image_input='pixels' is read only by methods with a "
                      f"pixel encoder (VSE++, PCME); {method.name} takes 'regions' or 'photos'")
  if kind != "photos":
    return method
  _check_data(info)
  scale = backbone_lr_scale(config.train)
  remat = config.train.get("backbone_remat", False)
  if not isinstance(remat, bool):
    raise ConfigError(f"config.train.backbone_remat={remat!r} must be true or false")
  tower = PhotoTower(info.backbone, dtype=read_dtype(config.model), remat=remat)
  fields = {"image_tower": tower, "image_frozen": scale == 0}
  for_mesh = method.for_mesh
  if for_mesh is not None:
    for_mesh = lambda axis, f=for_mesh: f(axis).clone(**fields)
  return dataclasses.replace(method, model=method.model.clone(**fields), for_mesh=for_mesh,
                             pretrained=method.pretrained + ((TOWER_PATH, info.backbone, scale),),
                             key="")


def frozen_phase(method):
  """``method`` with the tower's output gradient stopped, for the steps of
  ``train.backbone_frozen_epochs``: the same parameters and forward values, but no backward
  pass through the backbone (its gradient is zero, so it is also out of the clipping norm,
  as the official VSE++ code's ``requires_grad=False`` CNN is out of ``clip_grad_norm_``).
  None for a method without a trained tower."""
  model = method.model
  if getattr(model, "image_tower", None) is None or getattr(model, "image_frozen", True):
    return None
  for_mesh = method.for_mesh
  if for_mesh is not None:
    for_mesh = lambda axis, f=for_mesh: f(axis).clone(image_frozen=True)
  return dataclasses.replace(method, model=model.clone(image_frozen=True), for_mesh=for_mesh,
                             key="")


def unread(config) -> Dict[str, str]:
  """``train.backbone_lr_scale``, ``train.backbone_frozen_epochs`` and
  ``train.backbone_remat`` unless the backbone runs in the model (photos); the latter two
  also when the backbone never trains (scale 0)."""
  if uses_photos(config.model):
    if config.train.get("backbone_lr_scale", 1.0) == 0:
      frozen = "train.backbone_lr_scale=0 keeps the backbone frozen for the whole run"
      return {"train.backbone_frozen_epochs": frozen,
              "train.backbone_remat": frozen + " (no backward pass through it)"}
    return {}
  why = "model.image_input is not 'photos'; only a backbone inside the model reads it"
  return {k: why for k in ("train.backbone_lr_scale", "train.backbone_frozen_epochs",
                           "train.backbone_remat")}


def frozen_steps(train_config, steps_per_epoch: int) -> Dict[Tuple[str, ...], int]:
  """{TOWER_PATH: steps} the backbone stays frozen: ``train.backbone_frozen_epochs`` (default
  0, a number >= 0, else ConfigError) in steps, for ``make_optimizer(frozen_steps=...)``."""
  epochs = train_config.get("backbone_frozen_epochs", 0.0)
  if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not 0 <= epochs \
      or epochs == float("inf"):
    raise ConfigError(f"config.train.backbone_frozen_epochs={epochs!r} must be a finite "
                      f"number >= 0 (epochs before the backbone is fine-tuned)")
  return {TOWER_PATH: int(round(epochs * steps_per_epoch))} if epochs else {}
