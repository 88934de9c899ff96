"""DeFrag kernels: fragment scores, image-sentence similarity S_kl and the fragment objectives.

Karpathy, Joulin, Fei-Fei, "Deep Fragment Embeddings for Bidirectional Image Sentence
Mapping", NIPS 2014 (arXiv 1406.5679), section 3.3. Checked against the MATLAB copy of the
original code in bbugs/DeepFashion ``matlab_code/DeFragCost.m`` (training cost) and
``DeFragEval.m`` (test-time S_kl).

Shapes: a batch of ``Bi`` images with ``Ni`` fragments each (``img_frags`` (Bi, Ni, D),
``img_mask`` (Bi, Ni)) and ``Bt`` sentences with ``Ns`` fragments each (``txt_frags``
(Bt, Ns, D), ``txt_mask`` (Bt, Ns)). Fragment scores ``dots[k, i, l, j] = v_{k,i}^T s_{l,j}``
are one GEMM over the flattened fragments, exactly as DeFragCost.m's
``dots = allImgVecs' * allSentVecs``. Padded fragments never contribute to any result.
"""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from xmr_jax.kernels.common import einsum, matmul

NORMALIZATIONS = ("paper", "matlab")
ACCUMULATIONS = ("sum", "max")


def fragment_scores(img_frags: jax.Array, txt_frags: jax.Array, dtype=None) -> jax.Array:
  """All fragment inner products v_i^T s_j of a batch, as one (Bi*Ni, D) x (D, Bt*Ns) GEMM.

  Returns ``dots`` of shape (Bi, Ni, Bt, Ns): image k's fragment i against sentence l's
  fragment j (paper sec. 3.3, the score of a fragment pair). ``dtype``: the GEMM's operand
  dtype (None = float32; bfloat16 accumulates in float32, ``model.dtype``).
  """
  bi, ni, d = img_frags.shape
  bt, ns, _ = txt_frags.shape
  flat = matmul(img_frags.reshape(bi * ni, d), txt_frags.reshape(bt * ns, d).T, dtype)
  return flat.reshape(bi, ni, bt, ns)


def fragment_similarity(dots: jax.Array, img_mask: jax.Array, txt_mask: jax.Array, *,
                        smoothing=10.0, normalization: str = "paper",
                        accumulation: str = "sum", threshold: bool = True) -> jax.Array:
  """Image-sentence score S_kl from fragment scores (paper eq. 8), shape (Bi, Bt).

  ``paper``:  S_kl = 1 / (|g_k| (|g_l| + n)) sum_{i in g_k} sum_{j in g_l} max(0, v_i^T s_j).
  ``matlab``: DeFragCost.m / DeFragEval.m divide by (|g_l| + n) only (|g_k| was a constant 20
  there, so this is the same ranking up to scale when every image has the same count).
  ``accumulation='max'`` is DeFragCost.m's ``maxaccum``: each sentence fragment contributes
  its best image fragment, sum_j max_i, instead of the double sum. ``threshold=False`` is its
  ``thrglobalscore = 0`` (raw scores, no max(0, .)). ``smoothing`` n may be a traced scalar.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"normalization={normalization!r}; choose one of {NORMALIZATIONS}")
  if accumulation not in ACCUMULATIONS:
    raise ValueError(f"accumulation={accumulation!r}; choose one of {ACCUMULATIONS}")
  im = img_mask.astype(bool)[:, :, None, None]
  tm = txt_mask.astype(bool)[None, None, :, :]
  d = jnp.maximum(dots, 0.0) if threshold else dots
  if accumulation == "sum":
    total = jnp.sum(jnp.where(im & tm, d, 0.0), axis=(1, 3))
  else:
    best = jnp.max(jnp.where(im, d, -jnp.inf), axis=1)           # (Bi, Bt, Ns)
    best = jnp.where(jnp.isfinite(best), best, 0.0)               # image with no fragment
    total = jnp.sum(jnp.where(txt_mask.astype(bool)[None], best, 0.0), axis=-1)
  n_txt = jnp.sum(txt_mask.astype(dots.dtype), axis=-1)[None, :]   # |g_l|
  denom = n_txt + smoothing
  if normalization == "paper":
    n_img = jnp.sum(img_mask.astype(dots.dtype), axis=-1)[:, None]  # |g_k|
    denom = jnp.maximum(n_img, 1.0) * denom
  return total / denom


def _flatten(dots, img_mask, txt_mask, positive):
  """(Bi, Ni, Bt, Ns) -> (Bi*Ni, Bt*Ns) matrices of scores, validity and bag membership."""
  bi, ni, bt, ns = dots.shape
  d = dots.reshape(bi * ni, bt * ns)
  valid = (img_mask.astype(bool).reshape(-1)[:, None]
           & txt_mask.astype(bool).reshape(-1)[None, :])
  if positive is None:
    positive = jnp.eye(bi, bt, dtype=bool)
  pos = jnp.broadcast_to(positive.astype(bool)[:, None, :, None], dots.shape)
  return d, valid, pos.reshape(bi * ni, bt * ns)


def alignment_labels(dots: jax.Array, img_mask: jax.Array, txt_mask: jax.Array, *,
                     mil=False, positive: Optional[jax.Array] = None) -> jax.Array:
  """Labels y_ij in {+1, -1} of every fragment pair, flattened to (Bi*Ni, Bt*Ns).

  Without MIL (C_0, paper eq. 5): y_ij = +1 iff fragments i and j come from a true
  image-sentence pair (``positive`` (Bi, Bt), default the diagonal), else -1.
  With MIL (C_F, paper eq. 6-7 and the mi-SVM heuristic in DeFragCost.m): inside a positive
  bag y_ij = sign(v_i^T s_j); a sentence fragment with no +1 in its bag gets its best-scoring
  image fragment of the bag set to +1, so every bag holds at least one positive. A zero score
  counts as -1 here (MATLAB's ``sign(0) = 0`` gave that pair no weight at all).
  ``mil`` may be a traced bool (the schedule switches it by step). Labels carry no gradient.
  Entries of padded fragments are meaningless; weights mask them.
  """
  d, valid, pos = _flatten(jax.lax.stop_gradient(dots), img_mask, txt_mask, positive)
  in_bag = pos & valid
  y_sign = in_bag & (d > 0)
  has_pos = jnp.any(y_sign, axis=0)                                  # per sentence fragment
  best = jnp.argmax(jnp.where(in_bag, d, -jnp.inf), axis=0)          # best image fragment
  force = (jnp.arange(d.shape[0])[:, None] == best[None, :]) & in_bag & ~has_pos[None, :]
  y_mil = jnp.where(pos, jnp.where(y_sign | force, 1.0, -1.0), -1.0)
  y_c0 = jnp.where(pos, 1.0, -1.0)
  return jnp.where(mil, y_mil, y_c0).astype(dots.dtype)


def alignment_weights(y: jax.Array, valid: jax.Array) -> jax.Array:
  """kappa_ij: 1/#positives or 1/#negatives among the valid pairs of sentence fragment j.

  DeFragCost.m normalises per sentence fragment (per column of the (Ni, Ns) score matrix):
  ``W(ypos, j) = 1 / sum(ypos)``, ``W(yneg, j) = 1 / sum(yneg)``, so each sentence fragment's
  positives and negatives each weigh 1 in total (paper: "normalizing constants").
  """
  pos = valid & (y > 0)
  neg = valid & (y < 0)
  n_pos = jnp.sum(pos, axis=0, keepdims=True).astype(y.dtype)
  n_neg = jnp.sum(neg, axis=0, keepdims=True).astype(y.dtype)
  return (jnp.where(pos, 1.0 / jnp.maximum(n_pos, 1.0), 0.0)
          + jnp.where(neg, 1.0 / jnp.maximum(n_neg, 1.0), 0.0))


def fragment_alignment_loss(dots: jax.Array, img_mask: jax.Array, txt_mask: jax.Array, *,
                            mil=False, margin=1.0, positive: Optional[jax.Array] = None
                            ) -> Tuple[jax.Array, jax.Array]:
  """Fragment alignment objective C_0 (``mil=False``) or its MIL form C_F (``mil=True``).

  sum_ij kappa_ij max(0, margin - y_ij v_i^T s_j) over every valid fragment pair of the batch
  (paper eq. 5-6 with margin 1; DeFragCost.m ``lmargin``). Returns (loss, labels y).
  """
  y = alignment_labels(dots, img_mask, txt_mask, mil=mil, positive=positive)
  d, valid, _ = _flatten(dots, img_mask, txt_mask, positive)
  w = alignment_weights(y, valid)
  return jnp.sum(w * jnp.maximum(0.0, margin - y * d)), y


def pair_alignments(img_frags: jax.Array, img_mask: jax.Array, txt_frags: jax.Array,
                    txt_mask: jax.Array, dtype=None) -> Tuple[jax.Array, jax.Array]:
  """Best image fragment for every sentence fragment of matched pairs (paper fig. 4).

  Pair b is image ``img_frags[b]`` with sentence ``txt_frags[b]`` (same leading size B).
  Returns ``index`` (B, Ns) int32, the argmax_i v_i^T s_j over valid image fragments (-1 for
  padded sentence fragments or images with no fragment), and ``score`` (B, Ns) its value
  (0 where index is -1). ``dtype``: the operand dtype of the fragment products (None = float32).
  """
  dots = einsum("bid,bjd->bij", img_frags, txt_frags, dtype=dtype)
  dots = jnp.where(img_mask.astype(bool)[:, :, None], dots, -jnp.inf)
  index = jnp.argmax(dots, axis=1).astype(jnp.int32)
  score = jnp.max(dots, axis=1)
  ok = txt_mask.astype(bool) & jnp.isfinite(score)
  return jnp.where(ok, index, -1), jnp.where(ok, score, 0.0)
