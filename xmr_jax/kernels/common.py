"""Masked reductions and normalisations shared by every method's kernels.

Masks are boolean (or 0/1) arrays broadcastable against the reduced array *without* its
feature axis; padded positions never contribute to a result.
"""
import jax
import jax.numpy as jnp

EPS = 1e-8


def l2norm(x: jax.Array, axis: int = -1, eps: float = EPS) -> jax.Array:
  """x / (||x||_2 + eps), the SCAN/SGRAF/VSE++ ``l2norm`` (eps added to the norm)."""
  return x / (jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True)) + eps)


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
