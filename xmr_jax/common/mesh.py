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


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name, "")
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def maybe_initialize_distributed(force: Optional[bool] = None) -> bool:
  """``jax.distributed.initialize(...)`` when ``force`` or env ``XMR_DISTRIBUTED=1``.

  The interface is the same command on every process with ``JAX_COORDINATOR_ADDRESS``
  (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; this JAX does
  not read them itself, so they are passed explicitly. Without them (Cloud TPU pods, SLURM,
  Open MPI) ``initialize()`` detects the cluster. On CPU the cross-process collectives are
  gloo's (``jax_cpu_collectives_implementation``). Must run before anything touches a
  device. Returns whether it initialised; raises ConfigError for a malformed variable or only
  some of the three set.
  """
  want = force if force is not None else os.environ.get("XMR_DISTRIBUTED", "") in ("1", "true")
  if not want:
    return False
  names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
  given = [n for n in names if os.environ.get(n)]
  if given and len(given) != len(names):
    raise ConfigError(f"XMR_DISTRIBUTED=1 with {', '.join(given)} set but not "
                      f"{', '.join(n for n in names if n not in given)}: set all three (or "
                      f"none, where the cluster is detected)")
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if given:
    kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                  num_processes=_env_int("JAX_NUM_PROCESSES"),
                  process_id=_env_int("JAX_PROCESS_ID"))
  jax.distributed.initialize(**kwargs)
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
  """Pads ``tokens``/``token_mask`` (B, L) (and ``text_states`` (B, L, D)) to ``length``
  columns (0 / False).

  The pipeline pads each (local) batch to the smallest length bucket that fits; processes of a
  multi-host run may pick different buckets, so they all pad to the largest bucket instead.
  """
  out = dict(batch)
  pad = length - out["tokens"].shape[1]
  if pad > 0:
    out["tokens"] = np.pad(out["tokens"], ((0, 0), (0, pad)))
    out["token_mask"] = np.pad(out["token_mask"], ((0, 0), (0, pad)))
    if "text_states" in out:    # a frozen text tower's (B, L, D) vectors
      out["text_states"] = np.pad(out["text_states"], ((0, 0), (0, pad), (0, 0)))
  return out


def process_shard() -> dict:
  """``train_iterator`` kwargs so each process reads only its rows of every global batch."""
  if jax.process_count() == 1:
    return {}
  return {"shard_index": jax.process_index(), "shard_count": jax.process_count()}


def is_primary() -> bool:
  """Whether this is process 0, the one that writes results, plots, logs and caches."""
  return jax.process_index() == 0


def primary_first(fn, name: str):
  """``fn()`` on process 0 first, then on the others (a barrier between): process 0 builds a
  shared cache (the synthetic benchmark, extracted photos) that the others then only read.
  A single process just calls ``fn()``."""
  if jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils
  out = fn() if is_primary() else None
  multihost_utils.sync_global_devices(f"xmr_jax {name}: process 0 done")
  return fn() if not is_primary() else out


def to_host(tree: PyTree) -> PyTree:
  """A replicated tree (a train state's variables) usable by this process alone.

  A replicated global array of a multi-process mesh is not fully addressable; each process
  holds a complete copy on its own devices, returned as numpy. Arrays this process can
  address whole (every array of a single-process run) and numpy leaves pass through.
  Raises ValueError for an array split (not replicated) over processes.
  """
  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return x
    if not x.sharding.is_fully_replicated:
      raise ValueError(f"to_host: a {x.shape} array sharded over processes is not replicated")
    return np.asarray(x.addressable_data(0))
  return jax.tree.map(one, tree)


def process_block(n: int, multiple: int) -> slice:
  """This process's contiguous share of ``n`` rows in whole blocks of ``multiple`` rows.

  The blocks are dealt out evenly (the last processes may get one block fewer, or none);
  every process calls this with the same arguments. One process: every row.
  """
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return slice(0, n)
  blocks = -(-n // multiple)
  per = -(-blocks // count)
  return slice(min(n, index * per * multiple), min(n, (index + 1) * per * multiple))


def gather_blocks(local: np.ndarray, n: int, multiple: int) -> np.ndarray:
  """Every process's :func:`process_block` rows of ``local`` (rows, ...) stacked in process
  order: the (n, ...) whole, on every process, in one collective. One process: ``local``."""
  count = jax.process_count()
  if count == 1:
    return local
  from jax.experimental import multihost_utils
  per = -(-(-(-n // multiple)) // count) * multiple
  padded = np.zeros((per,) + local.shape[1:], local.dtype)
  padded[:local.shape[0]] = local
  allrows = np.asarray(multihost_utils.process_allgather(padded, tiled=False))
  return allrows.reshape((count * per,) + local.shape[1:])[:n]
