"""The data mesh: one axis, ``"data"``, over the devices of one or several processes.

Training shards every global batch over this axis (``xmr_jax.training.parallel``) and
evaluation spreads caption tiles over it (``xmr_jax.evaluation.engine``). A single device is
a one-device mesh: there is one code path for every device count (docs/architecture.md).

Multi-host: :func:`maybe_initialize_distributed` calls ``jax.distributed.initialize()`` when
``XMR_DISTRIBUTED=1``; each process then reads only its rows of every global batch
(:func:`process_shard`) and :func:`global_batch` assembles the global array.
"""
import os
from typing import Any, Mapping, Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from xmr_jax.common.errors import ConfigError

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
  """A 1-D mesh named ``"data"`` over the first ``num_devices`` devices (default: all).

  Raises ConfigError when more devices are asked for than are visible.
  """
  n = jax.device_count() if not num_devices else int(num_devices)
  if n > jax.device_count():
    raise ConfigError(f"num_devices={n} but only {jax.device_count()} devices are visible")
  devices = None if n == jax.device_count() else jax.devices()[:n]
  return jax.make_mesh((n,), (DATA_AXIS,), devices=devices)


def local_mesh(num_devices: Optional[int] = None) -> jax.sharding.Mesh:
  """A ``"data"`` mesh over this process's devices (default all; evaluation needs no other host)."""
  devices = jax.local_devices()[:num_devices or None]
  return jax.sharding.Mesh(np.array(devices), (DATA_AXIS,))


def train_mesh(num_devices: int, batch_size: int) -> jax.sharding.Mesh:
  """The training mesh for ``train.num_devices`` (0: all devices; 1: a one-device mesh).

  Raises ConfigError when ``batch_size`` is not a multiple of the device count.
  """
  mesh = make_data_mesh(int(num_devices or 0) or None)
  n = mesh.shape[DATA_AXIS]
  if batch_size % n:
    raise ConfigError(f"train.batch_size={batch_size} must be a multiple of the {n} devices "
                     f"of the data mesh (set train.batch_size or train.num_devices)")
  return mesh


def replicate(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
  """Places every leaf fully replicated on the mesh (train state, hparams, variables)."""
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
  """Pads ``tokens``/``token_mask`` (B, L) to ``length`` columns (0 / False).

  The pipeline pads each (local) batch to the smallest length bucket that fits; processes of a
  multi-host run may pick different buckets, so they all pad to the largest bucket instead.
  """
  out = dict(batch)
  pad = length - out["tokens"].shape[1]
  if pad > 0:
    out["tokens"] = np.pad(out["tokens"], ((0, 0), (0, pad)))
    out["token_mask"] = np.pad(out["token_mask"], ((0, 0), (0, pad)))
  return out


def process_shard() -> dict:
  """``train_iterator`` kwargs so each process reads only its rows of every global batch."""
  if jax.process_count() == 1:
    return {}
  return {"shard_index": jax.process_index(), "shard_count": jax.process_count()}
