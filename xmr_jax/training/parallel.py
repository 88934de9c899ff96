"""Data parallelism over a ``jax.sharding.Mesh`` with one axis, ``"data"``.

Training (:func:`sharded_loss_and_aux`): the global batch is split over the devices. Inside
``jax.shard_map`` each device encodes its local images and captions, all-gathers the image
representations (``tiled=True``: the global batch in order), scores its LOCAL captions against
ALL images, giving the (B, B_local) columns a cross-attention method can only compute with
both sides at hand, and all-gathers those columns into the full (B, B) matrix. Every device
then evaluates the method loss on the whole matrix (every negative of the global batch) and
the function returns ``pmean`` of that loss, which the caller differentiates. Differentiating
the ``pmean`` of the loss is what gives the single-device gradient: the transpose of
``all_gather`` sums the cotangents of all devices onto each shard and the replicated
parameters' implicit broadcast transposes to a ``psum``. Averaging per-device gradients
instead would double count (DESIGN.md, "Parallelism").

Random numbers: every device folds its mesh index into the dropout and sampling keys, so a
run is deterministic for a fixed device count. A method that draws no random numbers in
training (dropout 0, no sampling) gives the single-device result on any device count up to
float reduction order; with dropout > 0 or PCME's Monte-Carlo samples the masks/samples of an
N-device run differ from a 1-device run (equal in distribution, not bitwise). The loss key is
the same on every device.

BatchNorm in train mode (SGRAF) computes statistics over the LOCAL shard unless the model
offers a cross-device hook (an ``axis_name`` field, set here when present); running
statistics are averaged over devices.

Evaluation (:func:`score_all_sharded`): the caption-tile axis of the all-pairs grid is sharded
over the local devices; each device ``lax.map``s its tiles against the current image tile.

Multi-host: :func:`maybe_initialize_distributed` calls ``jax.distributed.initialize()`` when
``XMR_DISTRIBUTED=1`` (or asked); each process then reads only its rows of every global batch
and :func:`global_batch` assembles the global array from the per-process pieces.
"""
import os
from typing import Any, Callable, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from xmr_jax.models.registry import Method
from xmr_jax.types import image_inputs, text_inputs

DATA_AXIS = "data"
PyTree = Any


def maybe_initialize_distributed(force: Optional[bool] = None) -> bool:
  """``jax.distributed.initialize()`` when ``force`` or env ``XMR_DISTRIBUTED=1``.

  On Cloud TPU pods and SLURM/Open MPI clusters ``initialize()`` finds the coordinator itself;
  elsewhere set ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
  Must run before anything touches a device. Returns whether it initialised.
  """
  want = force if force is not None else os.environ.get("XMR_DISTRIBUTED", "") in ("1", "true")
  if not want:
    return False
  jax.distributed.initialize()
  return True


def make_data_mesh(num_devices: Optional[int] = None) -> jax.sharding.Mesh:
  """A 1-D mesh named ``"data"`` over the first ``num_devices`` devices (default: all)."""
  n = jax.device_count() if not num_devices else int(num_devices)
  if n > jax.device_count():
    raise ValueError(f"num_devices={n} but only {jax.device_count()} devices are visible")
  devices = None if n == jax.device_count() else jax.devices()[:n]
  return jax.make_mesh((n,), (DATA_AXIS,), devices=devices)


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
  n = mesh.shape[DATA_AXIS]
  if batch_size % n:
    raise ValueError(f"train.batch_size={batch_size} must be a multiple of the {n} devices "
                     f"of the data mesh (set train.batch_size or train.num_devices)")


def replicate(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
  """Places every leaf fully replicated on the mesh (train state, hparams)."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def global_batch(local_batch: Mapping[str, Any], mesh: jax.sharding.Mesh) -> PyTree:
  """Global arrays sharded on their leading (batch) axis from this process's rows.

  Single process: the local batch is the global batch. Multi-host: each process passes its
  ``shard_index = process_index`` rows (token lengths must agree across processes; see
  :func:`pad_text_to`).
  """
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def pad_text_to(batch: Mapping[str, Any], length: int) -> dict:
  """Pads ``tokens``/``token_mask`` to ``length`` columns (0 / False).

  The pipeline pads each (local) batch to the smallest length bucket that fits; processes of a
  multi-host run may pick different buckets, so they all pad to the largest bucket instead.
  """
  out = dict(batch)
  pad = length - out["tokens"].shape[1]
  if pad > 0:
    out["tokens"] = np.pad(out["tokens"], ((0, 0), (0, pad)))
    out["token_mask"] = np.pad(out["token_mask"], ((0, 0), (0, pad)))
  return out


def train_score_method(method: Method) -> str:
  """Name of the model method that gives the training (B, B) matrix of ``__call__``.

  ``score`` for every method except PCME, whose training scores are match log-odds (its
  ``__call__``); a model may declare ``train_score`` to override.
  """
  if hasattr(type(method.model), "train_score"):
    return "train_score"
  return "match_log_odds" if method.name == "pcme" else "score"


def _model_for_mesh(method: Method):
  """The model with its cross-device BatchNorm hook on, if it has one (``axis_name``)."""
  model = method.model
  if "axis_name" in getattr(model, "__dataclass_fields__", {}):
    return model.clone(axis_name=DATA_AXIS)
  return model


def _gather(tree: PyTree, axis: int = 0) -> PyTree:
  return jax.tree.map(lambda x: jax.lax.all_gather(x, DATA_AXIS, axis=axis, tiled=True), tree)


def sharded_loss_and_aux(method: Method, mesh: jax.sharding.Mesh) -> Callable:
  """``fn(params, batch_stats, batch, hparams, rng) -> (loss, (metrics, batch_stats))``.

  Same signature and meaning as ``step.loss_and_aux`` with ``method`` bound, computed over the
  mesh (see the module docstring). ``batch`` leaves are split on axis 0; the rest replicated.
  """
  model = _model_for_mesh(method)
  score_name = train_score_method(method)

  def forward(module, images, texts):
    img = module.encode_images(images, train=True)
    txt = module.encode_texts(texts, train=True)
    img_all = _gather(img)                        # (B, ...) every image of the global batch
    score = getattr(module, score_name)
    cols = score(img_all, txt, train=True) if score_name != "match_log_odds" else \
        score(img_all, txt)                       # (B, B_local): local captions vs all images
    return img_all, _gather(txt), _gather(cols, axis=1)

  def body(params, batch_stats, batch, hparams, rng):
    k_drop, k_sample, k_loss = jax.random.split(rng, 3)
    # Per-device dropout/sampling streams (module docstring: what this does to equivalence).
    idx = jax.lax.axis_index(DATA_AXIS)
    rngs = {"dropout": jax.random.fold_in(k_drop, idx),
            "sampling": jax.random.fold_in(k_sample, idx)}
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
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


# ------------------------------------------------------------------------------ evaluation
def local_mesh(num_devices: Optional[int] = None) -> jax.sharding.Mesh:
  """A ``"data"`` mesh over this process's devices (evaluation needs no other host)."""
  devices = jax.local_devices()[:num_devices or None]
  return jax.sharding.Mesh(np.array(devices), (DATA_AXIS,))


def score_all_sharded(method: Method, variables, img: PyTree, txt: PyTree, *,
                      tile_images: int = 128, tile_texts: int = 512,
                      mesh: Optional[jax.sharding.Mesh] = None) -> np.ndarray:
  """``engine.score_all`` with the caption tiles spread over the mesh's devices.

  The caption reprs are cut into ``tile_texts`` tiles (padded by repeating the last caption,
  then by whole repeated tiles to a multiple of the device count); for each image tile every
  device scores its tiles under ``lax.map``. Padding is cut off the result.
  """
  mesh = mesh or local_mesh()
  n_dev = mesh.shape[DATA_AXIS]
  n_img = jax.tree.leaves(img)[0].shape[0]
  n_txt = jax.tree.leaves(txt)[0].shape[0]
  # Small splits: shrink the caption tile so every device gets at least one.
  tile_images, tile_texts = min(tile_images, n_img), min(tile_texts, -(-n_txt // n_dev))
  img = _pad_rows(img, tile_images)
  txt = _pad_rows(txt, tile_texts * n_dev)
  n_tiles = jax.tree.leaves(txt)[0].shape[0] // tile_texts
  tiles = jax.tree.map(lambda x: x.reshape((n_tiles, tile_texts) + x.shape[1:]), txt)
  tiles = jax.device_put(tiles, NamedSharding(mesh, P(DATA_AXIS)))
  variables = replicate(variables, mesh)
  row_fn = _sharded_row_scorer(method, mesh)
  rows = []
  for r in range(jax.tree.leaves(img)[0].shape[0] // tile_images):
    tile = jax.tree.map(lambda x: x[r * tile_images:(r + 1) * tile_images], img)
    out = np.asarray(row_fn(variables, replicate(tile, mesh), tiles))   # (tiles, ti, tt)
    rows.append(out.transpose(1, 0, 2).reshape(tile_images, -1))
  return np.concatenate(rows, 0)[:n_img, :n_txt]


def _pad_rows(tree: PyTree, multiple: int) -> PyTree:
  n = jax.tree.leaves(tree)[0].shape[0]
  pad = (-n) % multiple
  if pad:
    tree = jax.tree.map(lambda x: np.concatenate([x, np.repeat(np.asarray(x)[-1:], pad, 0)], 0),
                        tree)
  return jax.tree.map(np.asarray, tree)


_ROW_SCORERS = {}


def _sharded_row_scorer(method: Method, mesh: jax.sharding.Mesh) -> Callable:
  key = (id(method.model), mesh)
  if key not in _ROW_SCORERS:
    def local(variables, img_tile, txt_tiles):
      score = lambda t: method.model.apply(variables, img_tile, t, train=False, method="score")
      return jax.lax.map(score, txt_tiles)
    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS)),
                               out_specs=P(DATA_AXIS)))
    _ROW_SCORERS[key] = (method.model, fn)   # hold the model so its id stays unique
  return _ROW_SCORERS[key][1]


# ------------------------------------------------------------------------- trainer hooks
def mesh_for(config) -> Optional[jax.sharding.Mesh]:
  """The data mesh for ``config.train.num_devices`` (0 or absent: all devices); None for 1."""
  n = int(config.train.get("num_devices", 0) or 0) or jax.device_count()
  if n <= 1:
    return None
  mesh = make_data_mesh(n)
  check_batch_size(config.train.batch_size, mesh)
  return mesh


def process_shard() -> dict:
  """``train_iterator`` kwargs so each process reads only its rows of every global batch."""
  if jax.process_count() == 1:
    return {}
  return {"shard_index": jax.process_index(), "shard_count": jax.process_count()}


def placing_batches(step_fn: Callable, mesh: jax.sharding.Mesh,
                    text_len: Optional[int] = None) -> Callable:
  """Wraps ``step_fn(state, batch, hparams)`` to turn host batches into global arrays.

  ``text_len`` (multi-host): pad captions to this length so every process's shard agrees.
  """
  def fn(state, batch, hparams):
    if text_len is not None and jax.process_count() > 1:
      batch = pad_text_to(batch, text_len)
    return step_fn(state, global_batch(batch, mesh), hparams)
  return fn
