"""Train state and optimiser.

State is a plain dict pytree ``{params, batch_stats, opt_state, step, rng, alive}`` so it
checkpoints with orbax and vmaps over a sweep axis without wrappers. ``alive`` (bool) turns
False at the first non-finite step; the step then keeps the last finite state (step.py).
"""
import functools
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xmr_jax.common.errors import ConfigError
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
    raise ConfigError(f"config.train.optimizer={kind!r}: use 'adam' or 'sgd'")
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
    raise ConfigError(f"config.hparams lacks {missing}, which method {method.name!r} reads")
  return hp


def stack_hparams(base: Mapping[str, jax.Array], variants) -> Dict[str, jax.Array]:
  """(K,) float32 arrays: ``base`` with each variant's ``hparams`` overrides (sweeps)."""
  rows = [{**{k: float(v) for k, v in base.items()},
           **{k: float(v) for k, v in var.get("hparams", {}).items()}} for var in variants]
  return {k: jnp.asarray([r[k] for r in rows], jnp.float32) for k in base}


def init_state(method: Method, sample_batch: Mapping[str, Any], tx: optax.GradientTransformation,
               seed) -> State:
  """Initial parameters from ``seed`` (an int or a uint32 array, so it can be vmapped).

  Compiled as one program: run eagerly, ``init`` dispatches the whole forward pass on the
  sample batch op by op (VSE++ at Flickr30K shapes: 15 s eager, 10 s compiled; the
  parameters are the same bits).
  """
  if isinstance(seed, int):
    seed = jax.random.key_data(jax.random.key(seed))
  return jax.jit(functools.partial(_init_state, method, tx))(seed, sample_batch)


def _init_state(method: Method, tx: optax.GradientTransformation, seed,
                sample_batch: Mapping[str, Any]) -> State:
  rng = jax.random.wrap_key_data(seed)
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
      "alive": jnp.ones((), bool),
  }


def init_states(method: Method, sample_batch: Mapping[str, Any],
                tx: optax.GradientTransformation, seeds) -> State:
  """K initial states stacked on a leading axis, variant k from ``jax.random.key(seeds[k])``.

  Equal to K calls of :func:`init_state`: the key data of ``key(seed)`` is what ``init_state``
  wraps, and vmapping random draws over keys does not change them.
  """
  # One jitted init per variant, then stacked (init runs once, not per step). A single
  # jit(vmap(init)) over 6 variants never completed on the 2-core CPU box (XLA CPU; 2 variants
  # did), which hung the CLI sweep; per-variant init gives the same arrays.
  states = [init_state(method, sample_batch, tx, int(s)) for s in seeds]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def variables_of(state: State):
  """The Flax variables (``params`` [+ ``batch_stats``]) of a train state."""
  v = {"params": state["params"]}
  if state["batch_stats"]:
    v["batch_stats"] = state["batch_stats"]
  return v


def num_params(params) -> int:
  """Number of scalar parameters in a params pytree."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
