"""Train state and optimiser.

State is a plain dict pytree ``{params, batch_stats, opt_state, step, rng}`` so it checkpoints
with orbax and vmaps over a sweep axis without wrappers.
"""
from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xmr_jax.models.registry import Method
from xmr_jax.types import image_inputs, text_inputs

State = Dict[str, Any]


def make_optimizer(grad_clip: float) -> optax.GradientTransformation:
  """Adam after global-norm clipping (official VSE++/SCAN/SGRAF: ``clip_grad_norm_`` then Adam).

  The learning rate is an injected hyperparameter, set every step from
  ``hparams['learning_rate']`` times the step-decay factor (see ``learning_rate_at``), so a
  sweep can vmap over learning rates.
  """
  clip = optax.clip_by_global_norm(grad_clip) if grad_clip and grad_clip > 0 else optax.identity()
  return optax.chain(clip, optax.inject_hyperparams(optax.adam)(learning_rate=0.0))


def learning_rate_at(step: jax.Array, base_lr: jax.Array, decay_steps: int,
                     decay_factor: float) -> jax.Array:
  """Step decay of the official repos: lr = base * factor ** floor(step / decay_steps)."""
  if decay_steps <= 0:
    return base_lr
  return base_lr * decay_factor ** jnp.floor(step / decay_steps)


def hparams_from_config(config, method: Method) -> Dict[str, jax.Array]:
  """The swept-scalar pytree: every ``config.hparams`` entry as a float32 array."""
  hp = {k: jnp.asarray(v, jnp.float32) for k, v in config.hparams.items()}
  missing = [n for n in method.hparam_names if n not in hp]
  if missing:
    raise ValueError(f"config.hparams lacks {missing}, which method {method.name!r} reads")
  return hp


def init_state(method: Method, sample_batch: Mapping[str, Any], tx: optax.GradientTransformation,
               seed) -> State:
  """Initial parameters from ``seed`` (an int or a uint32 array, so it can be vmapped)."""
  rng = jax.random.key(seed) if isinstance(seed, int) else jax.random.wrap_key_data(seed)
  rng, k_params, k_drop, k_sample = jax.random.split(rng, 4)
  variables = method.model.init({"params": k_params, "dropout": k_drop, "sampling": k_sample},
                                image_inputs(sample_batch), text_inputs(sample_batch), train=False)
  params = variables["params"]
  return {
      "params": params,
      "batch_stats": variables.get("batch_stats", {}),
      "opt_state": tx.init(params),
      "step": jnp.zeros((), jnp.int32),
      "rng": jax.random.key_data(rng),
  }


def num_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
