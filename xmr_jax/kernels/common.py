"""Masked reductions and normalisations shared by every method's kernels.

Masks are boolean (or 0/1) arrays broadcastable against the reduced array *without* its
feature axis; padded positions never contribute to a result.
"""
import jax
import jax.numpy as jnp

EPS = 1e-8


def l2norm(x: jax.Array, axis: int = -1, eps: float = EPS) -> jax.Array:
  """x / (||x||_2 + eps), the SCAN/SGRAF/VSE++ ``l2norm`` (eps added to the norm).

  Same values as the official ``X / (sqrt(sum X^2) + eps)``, but the gradient at an all-zero
  vector is finite (zero) where the official one is 0 * inf = NaN: a region whose backbone
  features are all zero (a flat black grid cell after ReLU6) maps to fc's zero initial bias,
  and one such region made the first step's gradient NaN. The square root is taken of ones
  there instead (the "double where"), so its infinite slope at 0 is never formed.
  """
  sq = jnp.sum(x * x, axis=axis, keepdims=True)
  positive = sq > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return x / (norm + eps)


def masked_mean(x: jax.Array, mask: jax.Array, axis: int = -2) -> jax.Array:
  """Mean of ``x`` over ``axis`` counting only positions where ``mask`` is true.

  ``x``: (..., N, D) with ``axis`` the N axis; ``mask``: (..., N). Rows with no valid
  position return zeros (not NaN).
  """
  m = jnp.expand_dims(mask.astype(x.dtype), -1)
  total = jnp.sum(x * m, axis=axis)
  count = jnp.sum(m, axis=axis)
  return total / jnp.maximum(count, 1.0)


def masked_max(x: jax.Array, mask: jax.Array, axis: int = -2) -> jax.Array:
  """Max over ``axis`` ignoring masked positions (``mask`` lacks the feature axis)."""
  m = jnp.expand_dims(mask.astype(bool), -1)
  out = jnp.max(jnp.where(m, x, -jnp.inf), axis=axis)
  return jnp.where(jnp.isfinite(out), out, 0.0)


def masked_softmax(logits: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
  """Softmax over ``axis`` where masked positions get exactly zero probability.

  ``mask`` broadcasts against ``logits``. A row with no valid position returns zeros.
  """
  mask = mask.astype(bool)
  logits = jnp.where(mask, logits, -jnp.inf)
  mx = jnp.max(logits, axis=axis, keepdims=True)
  mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
  e = jnp.where(mask, jnp.exp(logits - jax.lax.stop_gradient(mx)), 0.0)
  return e / jnp.maximum(jnp.sum(e, axis=axis, keepdims=True), 1e-30)


# ------------------------------------------------------------------ mixed precision
# ``model.dtype`` (docs/architecture.md): the compute dtype of the matrix products. Parameters,
# optimiser state, norms, softmax statistics, losses and scores stay float32; with "bfloat16"
# only the operands of matmuls / einsums / convolutions are rounded to bfloat16 and every
# product accumulates (and returns) in float32. ``None`` everywhere below means float32: the
# original expression runs unchanged, so float32 results are bit-identical.
DTYPES = ("float32", "bfloat16")


def compute_dtype(name: str):
  """``model.dtype`` name -> the matmul operand dtype the kernels take: None for "float32"
  (plain float32 products), ``jnp.bfloat16`` for "bfloat16". ValueError for anything else."""
  if name == "float32":
    return None
  if name == "bfloat16":
    return jnp.bfloat16
  raise ValueError(f"compute dtype {name!r}; choose one of {DTYPES}")


def matmul(a: jax.Array, b: jax.Array, dtype=None) -> jax.Array:
  """``a @ b``; with ``dtype`` (bfloat16) both operands are cast to it and the product
  accumulates in float32 (``preferred_element_type``), returning float32."""
  if dtype is None:
    return a @ b
  return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def einsum(subscripts: str, *operands: jax.Array, dtype=None) -> jax.Array:
  """``jnp.einsum(subscripts, *operands)``; with ``dtype`` the operands are cast to it and
  the contraction accumulates in float32 and returns float32 (as ``matmul``)."""
  if dtype is None:
    return jnp.einsum(subscripts, *operands)
  return jnp.einsum(subscripts, *(x.astype(dtype) for x in operands),
                    preferred_element_type=jnp.float32)


def mixed_dot_general(dtype):
  """A ``lax.dot_general`` for ``flax.linen.Dense(dot_general=...)``: operands cast to
  ``dtype``, float32 accumulation and result (so the float32 bias is added in float32)."""
  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    del preferred_element_type
    return jax.lax.dot_general(lhs.astype(dtype), rhs.astype(dtype), dimension_numbers,
                               precision=precision, preferred_element_type=jnp.float32)
  return dot_general


def mixed_conv(dtype):
  """A ``lax.conv_general_dilated`` for ``flax.linen.Conv(conv_general_dilated=...)``:
  operands cast to ``dtype``, float32 accumulation and result."""
  def conv(lhs, rhs, *args, preferred_element_type=None, **kwargs):
    del preferred_element_type
    return jax.lax.conv_general_dilated(lhs.astype(dtype), rhs.astype(dtype), *args,
                                        preferred_element_type=jnp.float32, **kwargs)
  return conv
