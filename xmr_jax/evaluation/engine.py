"""The evaluation engine: encode every image and caption once, then score all pairs in tiles.

``score`` of cross-attention methods is quadratic in pairs, so the N_img x N_txt grid is cut
into fixed-size tiles: one jitted function scores one image tile against every caption tile
under ``jax.lax.map``, so it compiles once per (tile shape) and peak device memory is bounded
by a tile row (tile_images x N_txt scores plus one tile's intermediates), not by N.
"""
import time
from typing import Any, Callable, Iterable, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from xmr_jax.types import image_inputs, text_inputs

PyTree = Any


def encode_all(method, variables, batches: Iterable[Mapping[str, Any]], side: str, *,
               seed: int = 0, progress: bool = False, desc: str = "") -> PyTree:
  """Encodes batches (each with a ``valid`` row mask) and concatenates the real rows (numpy).

  Each batch is encoded with ``rngs={'sampling': fold_in(key(seed), batch_index)}`` so methods
  that sample (PCME) are deterministic for a fixed seed and batch size.
  """
  fn = _encoder(method, side)
  key = jax.random.key(seed)
  parts = []
  for i, batch in enumerate(tqdm(batches, desc=desc or f"encode {side}", disable=not progress,
                                 leave=False)):
    out = fn(variables, batch, jax.random.fold_in(key, i))
    # ``valid`` (B,) marks real rows; the padded tail of the last batch is dropped.
    valid = np.asarray(batch["valid"]) if "valid" in batch else slice(None)
    parts.append(jax.tree.map(lambda x: np.asarray(x)[valid], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs, 0), *parts)


_ENCODERS = {}


def _encoder(method, side: str) -> Callable:
  cache_key = (id(method.model), side)
  if cache_key not in _ENCODERS:
    pick = image_inputs if side == "image" else text_inputs
    name = "encode_images" if side == "image" else "encode_texts"

    @jax.jit
    def fn(variables, batch, key):
      return method.model.apply(variables, pick(batch), train=False, method=name,
                                rngs={"sampling": key})
    _ENCODERS[cache_key] = (method.model, fn)  # hold the model so its id stays unique
  return _ENCODERS[cache_key][1]


def _pad_rows(tree: PyTree, multiple: int) -> Tuple[PyTree, int]:
  n = jax.tree.leaves(tree)[0].shape[0]
  pad = (-n) % multiple
  if pad:
    tree = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[-1:], pad, 0)], 0), tree)
  return tree, n


def group_by_length(method, txt: PyTree, n_groups: int,
                  multiple: int = 1) -> List[Tuple[np.ndarray, PyTree]]:
  """Captions split into at most ``n_groups`` groups of similar length, padding trimmed.

  Only for methods that declare ``Method.text_padding`` = (mask key, keys with a word axis);
  otherwise (or with ``n_groups`` <= 1) one group holds every caption unchanged. Captions are
  sorted by length (stable) and cut into equal runs rounded to ``multiple`` (the caption
  tile), each run's word axis cut to its longest caption; runs that end up with the same
  length are merged, so the scorer compiles once per distinct length. Returns
  [(caption indices, sub-tree)], the indices covering 0..N_txt-1 once.
  """
  n_txt = jax.tree.leaves(txt)[0].shape[0]
  spec = method.text_padding
  if n_groups <= 1 or spec is None or spec[0] not in txt:
    return [(np.arange(n_txt), txt)]
  mask_key, keys = spec
  lengths = np.asarray(txt[mask_key]).sum(1)
  order = np.argsort(lengths, kind="stable")
  size = max(multiple, -(-n_txt // n_groups // multiple) * multiple)
  groups = []
  for start in range(0, n_txt, size):
    idx = order[start:start + size]
    top = max(int(lengths[idx].max()), 1)
    if groups and groups[-1][1] == top:
      groups[-1] = (np.concatenate([groups[-1][0], idx]), top)
    else:
      groups.append((idx, top))
  out = []
  for idx, top in groups:
    sub = {k: (np.asarray(v)[idx, :top] if k in keys or k == mask_key else np.asarray(v)[idx])
           for k, v in txt.items()}
    out.append((idx, sub))
  return out


def score_all(method, variables, img: PyTree, txt: PyTree, *, tile_images: int = 128,
              tile_texts: int = 512, progress: bool = False,
              num_devices: Optional[int] = None, length_groups: int = 1) -> np.ndarray:
  """All-pairs (N_img, N_txt) scores, tile by tile. Padded rows (repeats) are cut off.

  With more than one local device (``num_devices``: default all of this process's) the caption
  tiles are spread over them (``training.parallel.score_all_sharded``). ``length_groups`` > 1
  scores captions grouped by length with their padding trimmed (``group_by_length``; same
  scores, fewer FLOPs for methods whose cost grows with the padded caption length).
  """
  groups = group_by_length(method, txt, length_groups, multiple=tile_texts)
  if len(groups) > 1:
    out = None
    for idx, sub in groups:
      part = score_all(method, variables, img, sub, tile_images=tile_images,
                       tile_texts=tile_texts, progress=progress, num_devices=num_devices)
      if out is None:
        out = np.empty((part.shape[0], jax.tree.leaves(txt)[0].shape[0]), part.dtype)
      out[:, idx] = part
    return out
  if (num_devices or jax.local_device_count()) > 1:
    from xmr_jax.training import parallel  # lazy: evaluation does not need training otherwise
    mesh = parallel.local_mesh(num_devices)
    return parallel.score_all_sharded(method, variables, img, txt, tile_images=tile_images,
                                      tile_texts=tile_texts, mesh=mesh)
  n_img = jax.tree.leaves(img)[0].shape[0]
  n_txt = jax.tree.leaves(txt)[0].shape[0]
  tile_images = min(tile_images, n_img)
  tile_texts = min(tile_texts, n_txt)
  img, _ = _pad_rows(img, tile_images)
  txt, _ = _pad_rows(txt, tile_texts)
  n_txt_tiles = jax.tree.leaves(txt)[0].shape[0] // tile_texts
  txt_tiles = jax.tree.map(lambda x: jnp.asarray(x).reshape((n_txt_tiles, tile_texts) + x.shape[1:]),
                           txt)
  row_fn = _row_scorer(method)
  rows = []
  n_rows = jax.tree.leaves(img)[0].shape[0] // tile_images
  for r in tqdm(range(n_rows), desc="score tiles", disable=not progress, leave=False):
    tile = jax.tree.map(lambda x: x[r * tile_images:(r + 1) * tile_images], img)
    out = row_fn(variables, tile, txt_tiles)             # (n_txt_tiles, tile_i, tile_t)
    rows.append(np.asarray(jnp.transpose(out, (1, 0, 2)).reshape(tile_images, -1)))
  return np.concatenate(rows, 0)[:n_img, :n_txt]


_ROW_SCORERS = {}


def _row_scorer(method) -> Callable:
  key = id(method.model)
  if key not in _ROW_SCORERS:
    @jax.jit
    def fn(variables, img_tile, txt_tiles):
      score = lambda t: method.model.apply(variables, img_tile, t, train=False, method="score")
      return jax.lax.map(score, txt_tiles)
    _ROW_SCORERS[key] = (method.model, fn)
  return _ROW_SCORERS[key][1]


def score_untiled(method, variables, img: PyTree, txt: PyTree) -> np.ndarray:
  """Reference: the whole grid in one call (small N only; used by tests)."""
  return np.asarray(method.model.apply(variables, jax.tree.map(jnp.asarray, img),
                                       jax.tree.map(jnp.asarray, txt), train=False,
                                       method="score"))
