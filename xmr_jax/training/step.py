"""The pure train step: ``train_step(state, batch, hparams) -> (state, metrics)``."""
import functools
from typing import Any, Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax

from xmr_jax.models.registry import Method
from xmr_jax.training import parallel
from xmr_jax.training.state import State, learning_rate_at, with_learning_rate


def train_step(state: State, batch: Mapping[str, Any], hparams: Mapping[str, jax.Array], *,
               tx: optax.GradientTransformation, decay_steps: int,
               decay_factor: float, steps_per_epoch: int,
               forward: Callable) -> Tuple[State, Dict[str, jax.Array]]:
  """One optimisation step; pure in (state, batch, hparams), so it jits and vmaps.

  ``hparams`` gains ``step`` and the fractional ``epoch`` (float32) for losses with schedules (DeFrag's
  fragment-then-MIL switch) without recompiling. ``forward(params, batch_stats, batch,
  hparams, rng) -> (loss, (metrics, batch_stats))`` is the forward pass over the data mesh
  (``parallel.sharded_loss_and_aux``), the one path for every device count.

  NaN guard: when the loss, the gradient or the update is not finite, or the state is already dead
  (``alive`` False), the returned state is the input state with ``alive`` False: a diverged
  run (or sweep variant) stops updating at its last finite parameters. ``metrics['alive']``
  says which.
  """
  step = state["step"]
  hp = dict(hparams)
  hp["step"] = step.astype(jnp.float32)
  # Fractional epochs (step / steps_per_epoch): schedules may switch mid-epoch.
  hp["epoch"] = (step / max(steps_per_epoch, 1)).astype(jnp.float32)
  rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
  grad_fn = jax.value_and_grad(forward, has_aux=True)
  (loss, (metrics, batch_stats)), grads = grad_fn(state["params"], state["batch_stats"], batch,
                                                  hp, rng)
  lr = learning_rate_at(step, hparams["learning_rate"], decay_steps, decay_factor)
  # Every injected learning rate (the base optimiser's; a tower's in multi_transform), set in
  # a rebuilt state (never mutate inputs).
  opt_state = with_learning_rate(state["opt_state"], lr)
  updates, opt_state = tx.update(grads, opt_state, state["params"])
  params = optax.apply_updates(state["params"], updates)
  new_state = dict(state, params=params, batch_stats=batch_stats, opt_state=opt_state,
                   step=step + 1)
  grad_norm = optax.tree.norm(grads)
  # The update too: a non-finite learning rate (a sweep variant's) gives finite gradients
  # but non-finite parameters, which would be kept as the "last finite" state otherwise.
  ok = (state["alive"] & jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        & jnp.isfinite(optax.tree.norm(updates)))
  new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
  new_state["alive"] = ok
  metrics = dict(metrics, loss=loss, learning_rate=lr, grad_norm=grad_norm, alive=ok)
  return new_state, metrics


def make_train_step(method: Method, tx: optax.GradientTransformation, *, decay_steps: int,
                    decay_factor: float, steps_per_epoch: int, mesh: jax.sharding.Mesh,
                    stacked: bool = False):
  """The jitted step with the static pieces bound; the state buffer is donated.

  The forward pass is data-parallel over the ``"data"`` axis of ``mesh`` (a one-device mesh on
  one device, ``common.mesh.train_mesh``); pass batches from ``common.mesh.global_batch`` and a
  replicated state. ``stacked``: the state and hparams carry a leading variant axis (a sweep)
  and the step is ``jax.vmap``ped over it, the batch shared (in_axes ``(0, None, 0)``).
  """
  fn = functools.partial(train_step, tx=tx, decay_steps=decay_steps,
                         decay_factor=decay_factor, steps_per_epoch=steps_per_epoch,
                         forward=parallel.sharded_loss_and_aux(method, mesh))
  if stacked:
    fn = jax.vmap(fn, in_axes=(0, None, 0))
  return jax.jit(fn, donate_argnums=(0,))
