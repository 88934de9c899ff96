"""Train state and optimiser.

State is a plain dict pytree ``{params, batch_stats, opt_state, step, rng}`` so it checkpoints
with orbax and vmaps over a sweep axis without wrappers.
"""
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xmr_jax.models.registry import Method
from xmr_jax.types import image_inputs, text_inputs

State = Dict[str, Any]


def make_optimizer(train_config, unclipped: Tuple[str, ...] = ()) -> optax.GradientTransformation:
  """Global-norm clipping, optional L2 weight decay, then Adam or SGD with momentum.

  Official VSE++/SCAN/SGRAF/PCME: ``clip_grad_norm_`` then Adam (``train.optimizer='adam'``);
  DeFrag's MATLAB code: SGD with momentum 0.9 and an L2 penalty alpha * ||theta||^2 on the cost,
  whose gradient 2 * alpha * theta is ``add_decayed_weights(2 * weight_decay)`` here. The
  learning rate is an injected hyperparameter, set every step from ``hparams['learning_rate']``
  times the step-decay factor (``learning_rate_at``), so a sweep can vmap over it.
  ``unclipped``: top-level parameter names left out of the clipping (and of its global norm).
  """
  t = train_config
  parts = []
  if t.grad_clip and t.grad_clip > 0:
    clip = optax.clip_by_global_norm(t.grad_clip)
    if unclipped:
      mask = lambda params: {k: jax.tree.map(lambda _: k not in unclipped, v)
                             for k, v in params.items()}
      clip = optax.masked(clip, mask)
    parts.append(clip)
  if t.get("weight_decay", 0.0):
    parts.append(optax.add_decayed_weights(2.0 * t.weight_decay))
  kind = t.get("optimizer", "adam")
  if kind == "adam":
    parts.append(optax.inject_hyperparams(optax.adam)(learning_rate=0.0))
  elif kind == "sgd":
    parts.append(optax.inject_hyperparams(optax.sgd)(learning_rate=0.0,
                                                      momentum=t.get("momentum", 0.9)))
  else:
    raise ValueError(f"config.train.optimizer={kind!r}: use 'adam' or 'sgd'")
  return optax.chain(*parts)


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
