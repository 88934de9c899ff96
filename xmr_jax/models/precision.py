"""Mixed precision for every method: ``config.model.dtype`` ("auto" | "float32" | "bfloat16").

"auto" (the default) is bfloat16 where the hardware has bfloat16 units and float32 elsewhere
(``xmr_jax.common.hardware.auto_dtype``); the CLI resolves it once, prints the choice and
records the concrete dtype in the workdir's ``config.json`` (``resolve_auto``).

With "bfloat16" the operands of every matmul, einsum and convolution of a model are rounded
to bfloat16 and the products accumulate in float32 (``preferred_element_type``); parameters
(and so the optimiser state), norms, softmax statistics, losses and scores stay float32.
"float32" leaves every expression exactly as it was: results are bit-identical
to a model without the setting. Kernels take the operand dtype as ``dtype=`` (None = float32,
``xmr_jax.kernels.common.compute_dtype``); Flax layers get a float32-accumulating
``dot_general`` / ``conv_general_dilated`` from ``dense_kwargs`` / ``conv_kwargs``.
"""
import functools
from typing import Any, Dict, Optional

import flax.linen as nn

from xmr_jax.common.errors import ConfigError
from xmr_jax.common.hardware import auto_dtype
from xmr_jax.kernels.common import DTYPES, compute_dtype, mixed_conv, mixed_dot_general


def read_dtype(model_config) -> str:
  """``config.model.dtype`` as a concrete compute dtype ("float32" | "bfloat16"; "auto" and a
  missing key resolve as ``hardware.auto_dtype``). Every ``build_method`` reads it.

  Raises:
    ConfigError: any other value (names the key and the choices).
  """
  name = model_config.get("dtype", "auto")
  if name == "auto":
    return auto_dtype()[0]
  if name not in DTYPES:
    raise ConfigError(f"config.model.dtype={name!r} is not supported; choose one of "
                      f"{('auto',) + DTYPES} (e.g. --config.model.dtype=bfloat16)")
  return name


def resolve_auto(config) -> Optional[str]:
  """Replaces ``config.model.dtype="auto"`` in place by the dtype it means on this hardware,
  so that ``config.json`` records what ran; returns a line saying the choice and why (None
  when the dtype was given). Raises ConfigError as ``read_dtype``."""
  name = config.model.get("dtype", "auto")
  if name != "auto":
    read_dtype(config.model)
    return None
  dtype, reason = auto_dtype()
  config.model.dtype = dtype
  return (f"xmr_jax: model.dtype=auto -> {dtype} ({reason}; "
          f"--config.model.dtype=float32|bfloat16 chooses)")


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
