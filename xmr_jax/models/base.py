"""The method contract every retrieval model follows (docs/architecture.md, "The method contract").

A method is a ``flax.linen.Module`` with three methods:

* ``encode_images(images, *, train)``: ``images`` is the dict of image-side arrays of a
  batch (``xmr_jax.types.IMAGE_KEYS``); returns an ``ImageRepr`` pytree whose leaves all have
  the image axis first. Called once per image at evaluation, so it is cacheable.
* ``encode_texts(texts, *, train)``: ``texts`` is the dict of text-side arrays
  (``TEXT_KEYS``: ``tokens``, ``token_mask`` and, for DeFrag, ``deps``); returns a ``TextRepr``
  pytree, caption axis first.
* ``score(img, txt, *, train=False)``: an ``(n_img, n_txt)`` float matrix of similarities (higher = better
  match) for every image x caption pair. It must be a pure function of the two reprs
  (parameters aside), vectorised over both axes, so the evaluation engine can feed it
  fixed-size tiles and ``jax.lax.map`` over them.

The inputs are dicts rather than ``(tokens, mask)`` positional arrays (the original design sketch)
because DeFrag needs dependency triples and the pixel encoders need pixels: one signature
serves every method.

``__call__`` (used by training) encodes both sides and scores the B x B grid. A method's
loss is a pure function ``loss(img, txt, scores, hparams, rng) -> (loss, metrics)``
registered next to the model in ``xmr_jax.models.registry``.
"""
from typing import Any, Mapping, Tuple

import flax.linen as nn
import jax

PyTree = Any


class RetrievalModel(nn.Module):
  """Base class: subclasses implement the three contract methods."""

  def encode_images(self, images: Mapping[str, jax.Array], *, train: bool) -> PyTree:
    """Image repr of a batch: ``images`` maps ``IMAGE_KEYS`` (e.g. ``regions`` (N, R, F)
    float32, ``region_mask`` (N, R) bool) to arrays; returns a pytree, leaves (N, ...).

    Raises NotImplementedError here; every method overrides it.
    """
    raise NotImplementedError

  def encode_texts(self, texts: Mapping[str, jax.Array], *, train: bool) -> PyTree:
    """Text repr of a batch: ``texts`` maps ``TEXT_KEYS`` (``tokens`` (M, L) int32,
    ``token_mask`` (M, L) bool, DeFrag's ``deps``) to arrays; returns a pytree, leaves (M, ...).

    Raises NotImplementedError here; every method overrides it.
    """
    raise NotImplementedError

  def score(self, img: PyTree, txt: PyTree, *, train: bool = False) -> jax.Array:
    """(N, M) float32 similarities (higher = better) of every image x caption pair of the
    reprs; pure in them and vectorised over both axes (evaluated in tiles).

    Raises NotImplementedError here; every method overrides it.
    """
    raise NotImplementedError

  def __call__(self, images, texts, *, train: bool) -> Tuple[PyTree, PyTree, jax.Array]:
    img = self.encode_images(images, train=train)
    txt = self.encode_texts(texts, train=train)
    return img, txt, self.score(img, txt, train=train)
