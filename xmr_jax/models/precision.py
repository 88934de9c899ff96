"""Mixed precision for every method: ``config.model.dtype`` ("float32" | "bfloat16").

With "bfloat16" the operands of every matmul, einsum and convolution of a model are rounded
to bfloat16 and the products accumulate in float32 (``preferred_element_type``); parameters
(and so the optimiser state), norms, softmax statistics, losses and scores stay float32.
"float32" (the default) leaves every expression exactly as it was: results are bit-identical
to a model without the setting. Kernels take the operand dtype as ``dtype=`` (None = float32,
``xmr_jax.kernels.common.compute_dtype``); Flax layers get a float32-accumulating
``dot_general`` / ``conv_general_dilated`` from ``dense_kwargs`` / ``conv_kwargs``.
"""
import functools
from typing import Any, Dict

import flax.linen as nn

from xmr_jax.common.errors import ConfigError
from xmr_jax.kernels.common import DTYPES, compute_dtype, mixed_conv, mixed_dot_general


def read_dtype(model_config) -> str:
  """``config.model.dtype`` (default "float32"), checked: ConfigError naming the key and the
  choices for anything but "float32" or "bfloat16". Every ``build_method`` reads it."""
  name = model_config.get("dtype", "float32")
  if name not in DTYPES:
    raise ConfigError(f"config.model.dtype={name!r} is not supported; choose one of {DTYPES} "
                      f"(e.g. --config.model.dtype=bfloat16)")
  return name


def dense_kwargs(name: str) -> Dict[str, Any]:
  """Extra ``nn.Dense`` arguments for compute dtype ``name``: none for float32, else a
  ``dot_general`` with bfloat16 operands and float32 accumulation (bias added in float32)."""
  dtype = compute_dtype(name)
  return {} if dtype is None else {"dot_general": mixed_dot_general(dtype)}


def conv_kwargs(name: str) -> Dict[str, Any]:
  """Extra ``nn.Conv`` arguments for compute dtype ``name`` (as ``dense_kwargs``)."""
  dtype = compute_dtype(name)
  return {} if dtype is None else {"conv_general_dilated": mixed_conv(dtype)}


class GRUCell(nn.GRUCell):
  """``nn.GRUCell`` (same parameters and equations) whose six Dense layers use
  ``dot_general``: Flax's own ``dtype`` would make the carry bfloat16, this keeps it float32.

  Named ``GRUCell`` on purpose: Flax names an unnamed cell after its class (``GRUCell_0``),
  so the parameter tree is the float32 model's and one checkpoint serves both dtypes.
  """
  dot_general: Any = None

  @nn.compact
  def __call__(self, carry, inputs):
    h = carry
    dense = functools.partial(nn.Dense, features=h.shape[-1], bias_init=self.bias_init,
                              dot_general=self.dot_general)
    dense_h = functools.partial(dense, use_bias=False, kernel_init=self.recurrent_kernel_init)
    dense_i = functools.partial(dense, use_bias=True, kernel_init=self.kernel_init)
    r = self.gate_fn(dense_i(name="ir")(inputs) + dense_h(name="hr")(h))
    z = self.gate_fn(dense_i(name="iz")(inputs) + dense_h(name="hz")(h))
    n = self.activation_fn(dense_i(name="in")(inputs) + r * dense_h(name="hn", use_bias=True)(h))
    new_h = (1.0 - z) * n + z * h
    return new_h, new_h


def gru_cell(features: int, name: str) -> nn.GRUCell:
  """A GRU cell of ``features`` units for compute dtype ``name``: ``nn.GRUCell`` itself for
  float32 (unchanged), the mixed-precision ``GRUCell`` above for bfloat16."""
  dtype = compute_dtype(name)
  if dtype is None:
    return nn.GRUCell(features)
  return GRUCell(features, dot_general=mixed_dot_general(dtype))
