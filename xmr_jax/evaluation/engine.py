"""The evaluation engine: encode every image and caption once, then score all pairs in tiles.

``score`` of cross-attention methods is quadratic in pairs, so the N_img x N_txt grid is cut
into fixed-size tiles. One jitted function scores one image tile against every caption tile:
the caption tiles are sharded over the devices of a ``"data"`` mesh (a one-device mesh on one
device: the same code path) and each device ``lax.map``s its tiles. It compiles once per tile
shape and peak device memory is bounded by a tile row (tile_images x N_txt scores plus one
tile's intermediates per device), not by N.

``score_pairs`` scores given pairs only (each query against its own K gallery items, for
two-stage ranking): the gallery is placed on every device, queries are sharded, and each
group of queries gathers its candidates and ``vmap``s the same ``score`` over them.
"""
import collections
from typing import Any, Callable, Iterable, List, Mapping, Optional, Tuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from xmr_jax.common import mesh as mesh_lib
from xmr_jax.types import image_inputs, text_inputs

PyTree = Any
# Compiled encoders and row scorers, keyed by (Method.key, ...): what determines the program.
# Bounded, so building many models in one process (tests, sweeps) does not keep them all.
_CACHE_SIZE = 16
_COMPILED: "collections.OrderedDict[tuple, Callable]" = collections.OrderedDict()


def _cached(key: tuple, make: Callable[[], Callable]) -> Callable:
  if key in _COMPILED:
    _COMPILED.move_to_end(key)
  else:
    _COMPILED[key] = make()
    while len(_COMPILED) > _CACHE_SIZE:
      _COMPILED.popitem(last=False)
  return _COMPILED[key]


def encode_all(method, variables, batches: Iterable[Mapping[str, Any]], side: str, *,
               seed: int = 0, progress: bool = False, desc: str = "") -> PyTree:
  """Encodes batches (each with a ``valid`` (B,) row mask) and concatenates the real rows.

  ``side`` is ``"image"`` or ``"text"``. Methods that sample at evaluation
  (``Method.samples_at_eval``: PCME) draw every item's numbers from ``fold_in(key(seed),
  item index in its split)`` (the batch's ``image_index`` / ``caption_index``), so no batch
  size, tile, length-group or device setting changes a result. Returns the repr pytree as
  numpy arrays, item axis first.
  """
  fn = _encoder(method, side)
  key = jax.random.key(seed)
  parts = []
  for batch in tqdm(batches, desc=desc or f"encode {side}", disable=not progress,
                    leave=False):
    out = fn(variables, batch, key)
    # ``valid`` (B,) marks real rows; the padded tail of the last batch is dropped.
    valid = np.asarray(batch["valid"]) if "valid" in batch else slice(None)
    parts.append(jax.tree.map(lambda x: np.asarray(x)[valid], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs, 0), *parts)


def _encoder(method, side: str) -> Callable:
  if side not in ("image", "text"):
    raise ValueError(f"encode_all: side must be 'image' or 'text', got {side!r}")
  pick = image_inputs if side == "image" else text_inputs
  name = "encode_images" if side == "image" else "encode_texts"
  index_key = "image_index" if side == "image" else "caption_index"
  model = method.model

  def apply(variables, inputs, key):
    return model.apply(variables, inputs, train=False, method=name, rngs={"sampling": key})

  def per_item(variables, batch, key):
    # One key per item, from its index in the split: each item is encoded as a batch of one
    # under vmap, so its samples never depend on which batch it came in.
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(batch[index_key])
    one = lambda x, k: jax.tree.map(lambda a: a[0], apply(
        variables, jax.tree.map(lambda a: a[None], x), k))
    return jax.vmap(one)(pick(batch), keys)

  def make():
    if method.samples_at_eval:
      return jax.jit(per_item)
    return jax.jit(lambda variables, batch, key: apply(variables, pick(batch), key))
  return _cached((method.key, side), make)


def pad_rows(tree: PyTree, multiple: int) -> PyTree:
  """Numpy leaves with the leading axis padded to a multiple by repeating the last row."""
  n = jax.tree.leaves(tree)[0].shape[0]
  pad = (-n) % multiple

  def fill(x):
    x = np.asarray(x)
    return np.concatenate([x, np.repeat(x[-1:], pad, 0)], 0) if pad else x
  return jax.tree.map(fill, tree)


# Caption-group lengths are rounded up to this many words: a few more padded (masked) words
# per caption, in exchange for one compiled scorer serving both splits and every evaluation.
LENGTH_STEP = 8


def group_by_length(method, txt: PyTree, n_groups: int,
                    multiple: int = 1) -> List[Tuple[np.ndarray, PyTree]]:
  """Captions split into at most ``n_groups`` groups of similar length, padding trimmed.

  Only for methods that declare ``Method.text_padding`` = (mask key, keys with a word axis);
  otherwise (or with ``n_groups`` <= 1) one group holds every caption unchanged. Captions are
  sorted by length (stable) and cut into equal runs rounded to ``multiple`` (the caption
  tile), each run's word axis cut to its longest caption rounded up to a multiple of
  ``LENGTH_STEP`` (at most the padded width); runs that end up with the same length are
  merged, so the scorer compiles once per distinct length, and the dev and test splits (and
  every evaluation of a run) mostly reuse the same few compiled lengths. Returns
  [(caption indices, sub-tree)], the indices covering 0..N_txt-1 once.
  """
  n_txt = jax.tree.leaves(txt)[0].shape[0]
  spec = method.text_padding
  if n_groups <= 1 or spec is None or spec[0] not in txt:
    return [(np.arange(n_txt), txt)]
  mask_key, keys = spec
  lengths = np.asarray(txt[mask_key]).sum(1)
  width = np.asarray(txt[mask_key]).shape[1]
  order = np.argsort(lengths, kind="stable")
  size = max(multiple, -(-n_txt // n_groups // multiple) * multiple)
  groups = []
  for start in range(0, n_txt, size):
    idx = order[start:start + size]
    top = min(-(-max(int(lengths[idx].max()), 1) // LENGTH_STEP) * LENGTH_STEP, width)
    if groups and groups[-1][1] == top:
      groups[-1] = (np.concatenate([groups[-1][0], idx]), top)
    else:
      groups.append((idx, top))
  trim = lambda k, v, idx, top: np.asarray(v)[idx, :top] if k in keys or k == mask_key \
      else np.asarray(v)[idx]
  return [(idx, {k: trim(k, v, idx, top) for k, v in txt.items()}) for idx, top in groups]


def score_all(method, variables, img: PyTree, txt: PyTree, *, tile_images: int = 128,
              tile_texts: int = 512, mesh: Optional[jax.sharding.Mesh] = None,
              length_groups: int = 1, progress: bool = False) -> np.ndarray:
  """All-pairs (N_img, N_txt) scores of encoded reprs, tile by tile: the one tiled scorer.

  ``mesh``: a ``"data"`` mesh whose devices share the caption tiles (default: every local
  device, ``common.mesh.local_mesh``). ``length_groups`` > 1 scores captions grouped by length
  with their padding trimmed (``group_by_length``; same scores, fewer FLOPs for methods whose
  cost grows with the padded caption length). Padded rows (repeats) are cut off. Several
  processes: each scores ``common.mesh.process_block`` of the image rows and every process
  returns the whole grid (``common.mesh.gather_blocks``).
  """
  mesh = mesh or mesh_lib.local_mesh()
  n_img = jax.tree.leaves(img)[0].shape[0]
  n_txt = jax.tree.leaves(txt)[0].shape[0]
  # Several processes: each scores its block of image rows (whole image tiles) against every
  # caption, and the rows are gathered once at the end (one collective).
  rows = mesh_lib.process_block(n_img, tile_images)
  mine = jax.tree.map(lambda x: np.asarray(x)[rows], img) if jax.process_count() > 1 else img
  out = np.zeros((rows.stop - rows.start, n_txt), np.float32)   # scores are float32
  groups = group_by_length(method, txt, length_groups, multiple=tile_texts) if len(out) else []
  for idx, sub in groups:
    out[:, idx] = _score_grid(method, variables, mine, sub, tile_images, tile_texts, mesh,
                              progress)
  return mesh_lib.gather_blocks(out, n_img, tile_images)


def _score_grid(method, variables, img, txt, tile_images, tile_texts, mesh, progress):
  """One caption group: image tiles one after another, caption tiles sharded over the mesh."""
  n_dev = mesh.shape[mesh_lib.DATA_AXIS]
  n_img = jax.tree.leaves(img)[0].shape[0]
  n_txt = jax.tree.leaves(txt)[0].shape[0]
  # Small splits: shrink the tiles so that every device gets at least one caption tile.
  tile_images, tile_texts = min(tile_images, n_img), min(tile_texts, -(-n_txt // n_dev))
  img = pad_rows(img, tile_images)
  txt = pad_rows(txt, tile_texts * n_dev)
  n_tiles = jax.tree.leaves(txt)[0].shape[0] // tile_texts
  tiles = jax.tree.map(lambda x: x.reshape((n_tiles, tile_texts) + x.shape[1:]), txt)
  tiles = jax.device_put(tiles, NamedSharding(mesh, P(mesh_lib.DATA_AXIS)))
  variables = mesh_lib.replicate(variables, mesh)
  row_fn = _row_scorer(method, mesh)
  rows = []
  n_rows = jax.tree.leaves(img)[0].shape[0] // tile_images
  for r in tqdm(range(n_rows), desc="score tiles", disable=not progress, leave=False):
    tile = jax.tree.map(lambda x: x[r * tile_images:(r + 1) * tile_images], img)
    out = np.asarray(row_fn(variables, mesh_lib.replicate(tile, mesh), tiles))  # (T, ti, tt)
    rows.append(out.transpose(1, 0, 2).reshape(tile_images, -1))
  return np.concatenate(rows, 0)[:n_img, :n_txt]


def _row_scorer(method, mesh: jax.sharding.Mesh) -> Callable:
  model = method.model

  def make():
    def local(variables, img_tile, txt_tiles):
      score = lambda t: model.apply(variables, img_tile, t, train=False, method="score")
      return jax.lax.map(score, txt_tiles)
    axis = P(mesh_lib.DATA_AXIS)
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), axis), out_specs=axis))
  devices = tuple(d.id for d in mesh.devices.flat)
  return _cached((method.key, "score", devices), make)


def score_pairs(method, variables, queries: PyTree, gallery: PyTree, candidates: np.ndarray,
                *, query_side: str, tile_queries: int = 128, pairs_per_step: int = 512,
                length_groups: int = 1, mesh: Optional[jax.sharding.Mesh] = None,
                progress: bool = False) -> np.ndarray:
  """Exact scores of each query against its own K gallery items: (Q, K) float32.

  ``query_side`` ``"image"``: ``queries`` are Q encoded images and ``gallery`` N encoded
  captions; ``"text"``: the reverse. ``candidates`` (Q, K) int: gallery rows, so ``out[q, j]``
  is the method's ``score`` of the pair (query q, gallery ``candidates[q, j]``), the number
  :func:`score_all` gives for it (up to float rounding of other tile shapes). Only these
  Q x K pairs are scored (two-stage ranking, ``evaluation/rerank.py``).

  One jitted call per tile of ``tile_queries`` queries (the last padded by repeating a row);
  the gallery is placed on every device once, a tile's queries are sharded over the mesh's
  devices, and each device ``lax.map``s over groups of ``max(1, pairs_per_step // K)``
  queries: a group gathers its (group, K) candidates from the gallery and scores them by
  ``vmap``ping ``score`` over its queries, (1, K) per query. Compiles once per shape.
  ``length_groups`` > 1 with caption queries: the queries are scored in groups of similar
  length with their padding trimmed (:func:`group_by_length`; same scores).
  """
  if query_side not in ("image", "text"):
    raise ValueError(f"score_pairs: query_side must be 'image' or 'text', got {query_side!r}")
  mesh = mesh or mesh_lib.local_mesh()
  candidates = np.asarray(candidates)
  n_q, k = candidates.shape
  if n_q == 0 or k == 0:
    return np.zeros((n_q, k), np.float32)
  if query_side == "text" and length_groups > 1:
    out = np.zeros((n_q, k), np.float32)
    for idx, sub in group_by_length(method, queries, length_groups):
      out[idx] = score_pairs(method, variables, sub, gallery, candidates[idx], query_side="text",
                             tile_queries=tile_queries, pairs_per_step=pairs_per_step,
                             mesh=mesh, progress=progress)
    return out
  n_dev = mesh.shape[mesh_lib.DATA_AXIS]
  group = max(1, pairs_per_step // k)
  per_device = -(-min(tile_queries, n_q) // n_dev)
  tile = -(-per_device // group) * group * n_dev        # whole groups on every device
  queries, candidates = pad_rows((queries, candidates), tile)
  shard = NamedSharding(mesh, P(mesh_lib.DATA_AXIS))
  fn = _pair_scorer(method, mesh, query_side, group)
  variables, gallery = mesh_lib.replicate((variables, gallery), mesh)
  out = []
  for start in tqdm(range(0, len(candidates), tile), desc="score pairs", disable=not progress,
                    leave=False):
    part = jax.device_put(jax.tree.map(lambda x: x[start:start + tile],
                                       (queries, candidates)), shard)
    out.append(np.asarray(fn(variables, gallery, *part)))
  return np.concatenate(out, 0)[:n_q]


def _pair_scorer(method, mesh: jax.sharding.Mesh, query_side: str, group: int) -> Callable:
  model = method.model

  def one(variables, query, items):
    """One query (a repr without its item axis) against its K gathered items: (K,)."""
    query = jax.tree.map(lambda a: a[None], query)
    if query_side == "image":
      return model.apply(variables, query, items, train=False, method="score")[0]
    return model.apply(variables, items, query, train=False, method="score")[:, 0]

  def make():
    def local(variables, gallery, queries, candidates):
      n = candidates.shape[0]
      grouped = lambda x: x.reshape((n // group, group) + x.shape[1:])

      def step(part):
        q, c = part
        items = jax.tree.map(lambda g: g[c], gallery)            # (group, K, ...)
        return jax.vmap(one, in_axes=(None, 0, 0))(variables, q, items)
      out = jax.lax.map(step, jax.tree.map(grouped, (queries, candidates)))
      return out.reshape(n, -1)
    axis = P(mesh_lib.DATA_AXIS)
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), axis, axis),
                                 out_specs=axis))
  devices = tuple(d.id for d in mesh.devices.flat)
  return _cached((method.key, "pairs", query_side, group, devices), make)


def score_untiled(method, variables, img: PyTree, txt: PyTree) -> np.ndarray:
  """Reference: the whole (N_img, N_txt) grid in one call (small N only; used by tests)."""
  return np.asarray(method.model.apply(variables, jax.tree.map(np.asarray, img),
                                       jax.tree.map(np.asarray, txt), train=False,
                                       method="score"))
