"""MMCA kernels (Wei et al., CVPR 2020): Transformer units, the n-gram text CNN, and the
per-pair cross-attention over the concatenation Y = [R ‖ X] of one image's regions and one
caption's words, vectorised over every image × caption pair of a tile.

All functions are pure jnp functions of arrays and parameter dicts (no Flax): the model
(``xmr_jax.models.mmca``) only declares the parameters. Masks are boolean, True = real
position; padded positions never influence a real output and come out as exact zeros.

Parameter dicts
---------------
Transformer unit (``transformer_unit``, post-LN as in Vaswani et al., which the paper's §3.1
"Transformer unit" follows: multi-head attention + FFN, each with residual + LayerNorm):
  ``wq, wk, wv`` (D, H, Dh), ``bq, bk, bv`` (H, Dh), ``wo`` (H, Dh, D), ``bo`` (D,),
  ``ln1_scale, ln1_bias`` (D,), ``w1`` (D, F), ``b1`` (F,), ``w2`` (F, D), ``b2`` (D,),
  ``ln2_scale, ln2_bias`` (D,).
n-gram CNN (``ngram_embedding``, paper §3.1 sentence branch):
  ``conv{l}_w`` (l, D, Dc), ``conv{l}_b`` (Dc,) for each window size l; ``fc_w`` (n·Dc, E),
  ``fc_b`` (E,).

Cost of the cross-attention per pair (``cross_attention_scores``)
-----------------------------------------------------------------
R regions, L words, width D, H heads, FFN width F, CNN channels Dc, joint dim E. Work done
once per image (R tokens) or once per caption (L tokens), amortised over the tile:
Q/K/V projections 6·T·D², and the intra-modality blocks of QKᵀ and of the attention-weighted
values, 4·T²·D (the region→region block is the same for every caption of an image, the
word→word block for every image of a caption). Work done per pair, in multiply-adds × 2:

  cross logits  Q_R K_Xᵀ and Q_X K_Rᵀ            4·R·L·D
  cross values  P_RX V_X and P_XR V_R            4·R·L·D
  output projection W_o                          2·(R+L)·D²
  FFN                                            4·(R+L)·D·F
  n-gram CNN over the L word outputs             2·L·(Σ_l l)·D·Dc   (= 12·L·D·Dc for 1,2,3)
  CNN fully connected layer                      2·n·Dc·E
  softmax merge, LayerNorms, pooling             O((R+L)·(D + H·(R+L)))

``pair_flops`` returns this sum. The FFN and W_o dominate (they act on pair-dependent
tokens, so no per-item shortcut exists); the pairwise attention itself is only 8·R·L·D
instead of the naive 4·(R+L)²·D. At the paper's dims (R=36, L=32, D=1024, F=2048, Dc=E=1024)
a pair costs ≈ 1.13 GFLOP (FFN 0.57, CNN 0.40, W_o 0.14, attention 0.009); at the synthetic
config's dims (R=36, L=16, D=32, F=32, Dc=16) ≈ 0.57 MFLOP.

Precision: every function with a matrix product takes ``dtype``, the operand dtype of its
matmuls / einsums (None = float32; bfloat16 operands accumulate in float32, ``model.dtype``).
LayerNorms, softmax maxima and sums and the scores stay float32.

Memory: the pairwise intermediates are (n_img · n_txt · (R+L) · max(D, F)) floats; with
``chunk`` images per step (``jax.lax.map`` over image chunks, each chunk rematerialised in
the backward pass) the peak is bounded by chunk · n_txt · (R+L) · max(D, F) instead.
"""
import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from xmr_jax.kernels.common import (einsum, l2norm, masked_max, masked_mean, masked_softmax,
                                    matmul)

Params = Mapping[str, jax.Array]
Stats = Tuple[jax.Array, jax.Array, jax.Array]

LN_EPS = 1e-5


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = LN_EPS) -> jax.Array:
  """LayerNorm over the last axis (the Transformer unit's "Add & Norm")."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def project_qkv(p: Params, x: jax.Array,
                dtype=None) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Per-head queries, keys, values (..., T, H, Dh) of tokens x (..., T, D).

  Position-wise, so for the concatenation [R ‖ X] they are computed once per image and once
  per caption, never per pair.
  """
  def proj(w, b):
    return einsum("...td,dhk->...thk", x, w, dtype=dtype) + b
  return proj(p["wq"], p["bq"]), proj(p["wk"], p["bk"]), proj(p["wv"], p["bv"])


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array,
                     dtype=None) -> jax.Array:
  """Multi-head softmax(QKᵀ/√Dh)V (paper §3.1 / §3.2 attention) with padded keys masked.

  q (..., Tq, H, Dh), k and v (..., Tk, H, Dh), key_mask (..., Tk) -> (..., Tq, H, Dh).
  """
  logits = einsum("...qhk,...shk->...hqs", q, k, dtype=dtype) / math.sqrt(q.shape[-1])
  probs = masked_softmax(logits, key_mask[..., None, None, :])
  return einsum("...hqs,...shk->...qhk", probs, v, dtype=dtype)


def unit_after_attention(p: Params, x: jax.Array, attn: jax.Array, mask: jax.Array,
                         dtype=None) -> jax.Array:
  """The rest of a post-LN Transformer unit once the attention output is known.

  h = LN(x + W_o·attn); out = LN(h + W_2·ReLU(W_1·h)); padded positions zeroed.
  x (..., T, D), attn (..., T, H, Dh), mask (..., T).
  """
  h = x + einsum("...thk,hkd->...td", attn, p["wo"], dtype=dtype) + p["bo"]
  h = layer_norm(h, p["ln1_scale"], p["ln1_bias"])
  f = matmul(jax.nn.relu(matmul(h, p["w1"], dtype) + p["b1"]), p["w2"], dtype) + p["b2"]
  out = layer_norm(h + f, p["ln2_scale"], p["ln2_bias"])
  return out * mask[..., None].astype(out.dtype)


def transformer_unit(p: Params, x: jax.Array, mask: jax.Array, dtype=None) -> jax.Array:
  """One Transformer encoder unit over x (..., T, D) with padded tokens masked as keys."""
  q, k, v = project_qkv(p, x, dtype)
  return unit_after_attention(p, x, masked_attention(q, k, v, mask, dtype), mask, dtype)


def ngram_embedding(p: Params, x: jax.Array, mask: jax.Array,
                    windows: Sequence[int] = (1, 2, 3), dtype=None) -> jax.Array:
  """Sentence vector from word features (paper §3.1): 1D convolutions, max-pool, concat, FC.

  For window l: p_{l,t} = ReLU(W_l x_{t:t+l-1} + b_l) for every real start word t, then
  q_l = max_t p_{l,t}; the vector is FC([q_1, q_2, q_3]). Padded words are zeroed first and a
  window that runs past the last real word sees zeros there: exactly a convolution with zero
  padding on the unpadded sentence, so the amount of padding never matters.
  x (..., L, D), mask (..., L) -> (..., E).
  """
  m = mask.astype(bool)
  x = x * m[..., None].astype(x.dtype)
  length = x.shape[-2]
  pooled = []
  for l in windows:  # static: three window sizes
    pad = [(0, 0)] * (x.ndim - 2) + [(0, l - 1), (0, 0)]
    xp = jnp.pad(x, pad)
    win = jnp.stack([xp[..., j:j + length, :] for j in range(l)], axis=-2)  # (..., L, l, D)
    feat = jax.nn.relu(einsum("...tjd,jdc->...tc", win, p[f"conv{l}_w"], dtype=dtype)
                       + p[f"conv{l}_b"])
    pooled.append(masked_max(feat, m))
  return matmul(jnp.concatenate(pooled, axis=-1), p["fc_w"], dtype) + p["fc_b"]


def intra_block_stats(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                      dtype=None) -> Stats:
  """One modality's own block of the attention over [R ‖ X], in unnormalised form.

  For the rows of one item (an image's regions or a caption's words) against its own keys:
  m = row max of the masked logits (-inf if no real key), z = Σ exp(logit - m), and
  a = Σ exp(logit - m)·v. The softmax over the whole concatenation is then a merge of this
  block with the pairwise cross block (``merge_with_cross``), so the T×T block is computed once
  per item, not once per pair. q, k, v (..., T, H, Dh), mask (..., T) ->
  m (..., H, T), z (..., H, T), a (..., H, T, Dh).
  """
  logits = einsum("...qhk,...shk->...hqs", q, k, dtype=dtype) / math.sqrt(q.shape[-1])
  valid = mask.astype(bool)[..., None, None, :]
  m = jax.lax.stop_gradient(jnp.max(jnp.where(valid, logits, -jnp.inf), axis=-1))
  m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
  e = jnp.where(valid, jnp.exp(logits - m_safe[..., None]), 0.0)
  return m, jnp.sum(e, axis=-1), einsum("...hqs,...shk->...hqk", e, v, dtype=dtype)


def merge_with_cross(own: Stats, cross_logits: jax.Array, cross_mask: jax.Array,
                     cross_v: jax.Array, dtype=None) -> jax.Array:
  """Exact softmax over [own keys ‖ cross keys] from the own-block stats and cross logits.

  The "online softmax" merge: with M = max(m_own, max cross logit),
  out = (e^{m_own - M}·a_own + Σ_c e^{s_c - M} v_c) / (e^{m_own - M}·z_own + Σ_c e^{s_c - M}).
  The maxima only stabilise the exponentials (the result does not depend on them), so they
  carry no gradient. own: broadcastable to (..., H, Tq[, Dh]); cross_logits (..., H, Tq, Tc);
  cross_mask broadcastable to it; cross_v (..., Tc, H, Dh) -> (..., Tq, H, Dh).
  """
  m_own, z_own, a_own = own
  valid = cross_mask.astype(bool)
  m_cross = jnp.max(jnp.where(valid, cross_logits, -jnp.inf), axis=-1)
  m_new = jax.lax.stop_gradient(jnp.maximum(m_own, m_cross))
  m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
  w_own = jnp.exp(m_own - m_safe)          # 0 where the item has no real own key
  e = jnp.where(valid, jnp.exp(cross_logits - m_safe[..., None]), 0.0)
  num = w_own[..., None] * a_own + einsum("...hqs,...shk->...hqk", e, cross_v, dtype=dtype)
  den = w_own * z_own + jnp.sum(e, axis=-1)
  out = num / jnp.maximum(den, 1e-30)[..., None]
  return jnp.swapaxes(out, -3, -2)          # (..., Tq, H, Dh)


def concat_attention_pairs(r_qkv, r_mask, r_stats: Stats, x_qkv, x_mask,
                           x_stats: Stats, dtype=None) -> Tuple[jax.Array, jax.Array]:
  """Multi-head attention over Y = [R_i ‖ X_c] for every image i × caption c (paper §3.2).

  softmax(QKᵀ/√Dh)V over the R + L tokens of each pair with padded regions and words masked,
  computed from per-item projections and intra-block stats; only the R×L and L×R cross
  blocks are pairwise. r_qkv: three (I, R, H, Dh); r_mask (I, R); r_stats from
  ``intra_block_stats``; likewise x_* with (C, L, ...). Returns the attention outputs of the
  region rows (I, C, R, H, Dh) and of the word rows (I, C, L, H, Dh).
  """
  rq, rk, rv = r_qkv
  xq, xk, xv = x_qkv
  scale = 1.0 / math.sqrt(rq.shape[-1])
  # Region rows attend to the caption's words: logits (I, C, H, R, L).
  s_rx = einsum("irhk,clhk->ichrl", rq, xk, dtype=dtype) * scale
  r_own = jax.tree.map(lambda s: s[:, None], r_stats)              # broadcast over captions
  out_r = merge_with_cross(r_own, s_rx, x_mask[None, :, None, None, :], xv[None], dtype)
  # Word rows attend to the image's regions: logits (I, C, H, L, R).
  s_xr = einsum("clhk,irhk->ichlr", xq, rk, dtype=dtype) * scale
  x_own = jax.tree.map(lambda s: s[None], x_stats)                 # broadcast over images
  out_x = merge_with_cross(x_own, s_xr, r_mask[:, None, None, None, :], rv[:, None], dtype)
  return out_r, out_x


def cross_attention_pairs(unit: Params, cnn: Params, regions: jax.Array, region_mask: jax.Array,
                          words: jax.Array, word_mask: jax.Array,
                          windows: Sequence[int] = (1, 2, 3),
                          dtype=None) -> Tuple[jax.Array, jax.Array]:
  """The cross-attention module for every pair: (i1, c1), each (I, C, ·) (paper §3.2).

  Y = [R_i ‖ X_c] -> Transformer unit -> split; i1 = average of the real region outputs,
  c1 = n-gram CNN + max-pool over the real word outputs. regions (I, R, D), words (C, L, D).
  """
  r_qkv = project_qkv(unit, regions, dtype)
  x_qkv = project_qkv(unit, words, dtype)
  r_stats = intra_block_stats(*r_qkv, region_mask, dtype)
  x_stats = intra_block_stats(*x_qkv, word_mask, dtype)
  att_r, att_x = concat_attention_pairs(r_qkv, region_mask, r_stats, x_qkv, word_mask, x_stats,
                                        dtype)
  out_r = unit_after_attention(unit, regions[:, None], att_r, region_mask[:, None], dtype)
  out_x = unit_after_attention(unit, words[None], att_x, word_mask[None], dtype)
  i1 = masked_mean(out_r, region_mask[:, None])
  c1 = ngram_embedding(cnn, out_x, jnp.broadcast_to(word_mask[None], out_x.shape[:-1]), windows,
                       dtype)
  return i1, c1


def cross_attention_scores(unit: Params, cnn: Params, regions: jax.Array,
                           region_mask: jax.Array, words: jax.Array, word_mask: jax.Array, *,
                           windows: Sequence[int] = (1, 2, 3), normalize: bool = True,
                           chunk: Optional[int] = None, dtype=None) -> jax.Array:
  """⟨i1, c1⟩ for every image × caption pair: the cross term of S(I, T) (paper §3.3).

  ``chunk`` images are scored per step of ``jax.lax.map`` (each step rematerialised under
  autodiff), bounding memory by chunk × C pairs; None or >= I scores the tile in one fused
  computation. ``normalize`` l2-normalises i1 and c1 first (cosine). Returns (I, C).
  """
  def one_image(r, rm):
    i1, c1 = cross_attention_pairs(unit, cnn, r[None], rm[None], words, word_mask, windows,
                                   dtype)
    if normalize:
      i1, c1 = l2norm(i1), l2norm(c1)
    return jnp.sum(i1 * c1, axis=-1)[0]                            # (C,)

  n_img = regions.shape[0]
  if chunk is None or chunk <= 0 or chunk >= n_img:
    return jax.vmap(one_image)(regions, region_mask)
  return jax.lax.map(lambda a: jax.checkpoint(one_image)(*a), (regions, region_mask),
                     batch_size=chunk)


def pair_flops(num_regions: int, num_words: int, dim: int, ffn_dim: int, conv_dim: int,
               embed_dim: int, windows: Sequence[int] = (1, 2, 3)) -> Dict[str, int]:
  """Per-pair FLOPs of ``cross_attention_scores`` (module docstring), by part, and per-item."""
  r, l, d = num_regions, num_words, dim
  parts = dict(
      cross_logits=4 * r * l * d,
      cross_values=4 * r * l * d,
      out_proj=2 * (r + l) * d * d,
      ffn=4 * (r + l) * d * ffn_dim,
      ngram_cnn=2 * l * sum(windows) * d * conv_dim,
      cnn_fc=2 * len(windows) * conv_dim * embed_dim,
  )
  parts["pair_total"] = sum(parts.values())
  parts["per_image"] = 6 * r * d * d + 4 * r * r * d
  parts["per_caption"] = 6 * l * d * d + 4 * l * l * d
  return parts
