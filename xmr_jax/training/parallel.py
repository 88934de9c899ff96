"""The training forward pass over a ``"data"`` mesh: one path for every device count.

The global batch is split over the devices of the mesh (a one-device mesh on one device).
Inside ``jax.shard_map`` each device encodes its local images and captions, all-gathers the
image representations (``tiled=True``: the global batch in order), scores its LOCAL captions
against ALL images with ``Method.train_score``, giving the (B, B_local) columns a
cross-attention method can only compute with both sides at hand, and all-gathers those columns
into the full (B, B) matrix. Every device then evaluates the method loss on the whole matrix
(every negative of the global batch) and the function returns ``pmean`` of that loss, which
the caller differentiates. Differentiating the ``pmean`` of the loss is what gives the
single-device gradient: the transpose of ``all_gather`` sums the cotangents of all devices
onto each shard and the replicated parameters' implicit broadcast transposes to a ``psum``.
Averaging per-device gradients instead would double count (README, "Many devices").

Random numbers: every device but the first folds its mesh index into the dropout and sampling
keys (``_device_key``), so a run is deterministic for a fixed device count and a one-device
run draws the step's own keys. A method that draws no random numbers in
training (dropout 0, no sampling) gives the single-device result on any device count up to
float reduction order; with dropout > 0 or PCME's Monte-Carlo samples the masks/samples of an
N-device run differ from a 1-device run (equal in distribution, not bitwise). The loss key is
the same on every device.

BatchNorm in train mode (SGRAF) reduces its statistics over the mesh through the method's
cross-device hook (``Method.for_mesh``); running statistics are averaged over devices.
Mesh construction, batch placement and multi-host helpers are in ``xmr_jax.common.mesh``.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from xmr_jax.common.mesh import DATA_AXIS
from xmr_jax.models.registry import Method
from xmr_jax.types import image_inputs, text_inputs

PyTree = Any


def _gather(tree: PyTree, axis: int = 0) -> PyTree:
  return jax.tree.map(lambda x: jax.lax.all_gather(x, DATA_AXIS, axis=axis, tiled=True), tree)


def _device_key(key: jax.Array, idx: jax.Array) -> jax.Array:
  """Device 0 draws from ``key`` itself, device i > 0 from ``fold_in(key, i)``.

  So a one-device run (a one-device mesh) draws exactly the numbers of the step's key, and
  the first device of a larger mesh draws the same ones.
  """
  folded = jax.random.key_data(jax.random.fold_in(key, idx))
  return jax.random.wrap_key_data(jnp.where(idx == 0, jax.random.key_data(key), folded))


def _forward(module, images, texts, score_name: str):
  """(all images' reprs, all captions' reprs, (B, B) training scores) inside the shard_map."""
  img = module.encode_images(images, train=True)
  txt = module.encode_texts(texts, train=True)
  img_all = _gather(img)                        # (B, ...) every image of the global batch
  cols = getattr(module, score_name)(img_all, txt, train=True)   # (B, B_local)
  return img_all, _gather(txt), _gather(cols, axis=1)


def sharded_loss_and_aux(method: Method, mesh: jax.sharding.Mesh) -> Callable:
  """``fn(params, batch_stats, batch, hparams, rng) -> (loss, (metrics, batch_stats))``.

  ``batch`` leaves (B, ...) are split over the mesh on axis 0 (B a multiple of the device
  count); the other arguments are replicated. ``loss`` is the method loss of the global batch
  (see the module docstring), ``metrics`` the loss's metrics and ``batch_stats`` the updated
  BatchNorm statistics (empty for methods without BatchNorm).
  """
  model = method.for_mesh(DATA_AXIS) if method.for_mesh else method.model

  def body(params, batch_stats, batch, hparams, rng):
    k_drop, k_sample, k_loss = jax.random.split(rng, 3)
    # Per-device dropout/sampling streams (module docstring: what this does to equivalence).
    idx = jax.lax.axis_index(DATA_AXIS)
    rngs = {"dropout": _device_key(k_drop, idx), "sampling": _device_key(k_sample, idx)}
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    forward = lambda module, i, t: _forward(module, i, t, method.train_score)
    (img, txt, scores), updates = model.apply(
        variables, image_inputs(batch), text_inputs(batch), method=forward, rngs=rngs,
        mutable=["batch_stats"])
    loss, metrics = method.loss_fn(img, txt, scores, hparams, k_loss)
    # Every device holds the same loss value; pmean makes it replicated for the caller's grad.
    loss = jax.lax.pmean(loss, DATA_AXIS)
    metrics = jax.lax.pmean(dict(metrics), DATA_AXIS)
    new_stats = jax.lax.pmean(updates.get("batch_stats", batch_stats), DATA_AXIS)
    return loss, (metrics, new_stats)

  def fn(params, batch_stats, batch, hparams, rng):
    sharded = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS), P(), P()),
                            out_specs=(P(), (P(), P())), check_vma=False)
    return sharded(params, batch_stats, batch, hparams, rng)
  return fn
