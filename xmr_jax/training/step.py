"""The pure train step: ``train_step(state, batch, hparams) -> (state, metrics)``."""
import functools
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax

from xmr_jax.models.registry import Method
from xmr_jax.training.state import State, learning_rate_at
from xmr_jax.types import image_inputs, text_inputs


def loss_and_aux(method: Method, params, batch_stats, batch: Mapping[str, Any],
                 hparams: Mapping[str, jax.Array], rng: jax.Array):
  """Forward pass + method loss. Returns (loss, (metrics, new_batch_stats))."""
  k_drop, k_sample, k_loss = jax.random.split(rng, 3)
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  (img, txt, scores), updates = method.model.apply(
      variables, image_inputs(batch), text_inputs(batch), train=True,
      rngs={"dropout": k_drop, "sampling": k_sample}, mutable=["batch_stats"])
  loss, metrics = method.loss_fn(img, txt, scores, hparams, k_loss)
  return loss, (dict(metrics), updates.get("batch_stats", batch_stats))


def train_step(state: State, batch: Mapping[str, Any], hparams: Mapping[str, jax.Array], *,
               method: Method, tx: optax.GradientTransformation, decay_steps: int,
               decay_factor: float, steps_per_epoch: int,
               forward=None) -> Tuple[State, Dict[str, jax.Array]]:
  """One optimisation step; pure in (state, batch, hparams), so it jits and vmaps.

  ``hparams`` gains ``step`` and the fractional ``epoch`` (float32) for losses with schedules (DeFrag's
  fragment-then-MIL switch) without recompiling. ``forward`` replaces ``loss_and_aux`` (same
  signature without ``method``), e.g. the mesh version ``parallel.sharded_loss_and_aux``.
  """
  step = state["step"]
  hp = dict(hparams)
  hp["step"] = step.astype(jnp.float32)
  # Fractional epochs (step / steps_per_epoch): schedules may switch mid-epoch.
  hp["epoch"] = (step / max(steps_per_epoch, 1)).astype(jnp.float32)
  rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
  forward = forward or functools.partial(loss_and_aux, method)
  grad_fn = jax.value_and_grad(forward, has_aux=True)
  (loss, (metrics, batch_stats)), grads = grad_fn(state["params"], state["batch_stats"], batch,
                                                  hp, rng)
  lr = learning_rate_at(step, hparams["learning_rate"], decay_steps, decay_factor)
  # The injected Adam state is the last element of the chain; rebuild it (never mutate inputs).
  *head, inject = state["opt_state"]
  inject = inject._replace(hyperparams=dict(inject.hyperparams, learning_rate=lr))
  opt_state = (*head, inject)
  updates, opt_state = tx.update(grads, opt_state, state["params"])
  params = optax.apply_updates(state["params"], updates)
  new_state = dict(state, params=params, batch_stats=batch_stats, opt_state=opt_state,
                   step=step + 1)
  metrics = dict(metrics, loss=loss, learning_rate=lr, grad_norm=optax.tree.norm(grads))
  return new_state, metrics


def make_train_step(method: Method, tx: optax.GradientTransformation, *, decay_steps: int,
                    decay_factor: float, steps_per_epoch: int, mesh=None):
  """The jitted step with the static pieces bound; the state buffer is donated.

  With a ``mesh`` (``parallel.make_data_mesh``) the forward pass is data-parallel over its
  ``"data"`` axis; pass batches from ``parallel.global_batch`` and a replicated state.
  """
  forward = None
  if mesh is not None:
    from xmr_jax.training import parallel  # lazy: parallel imports nothing from here
    forward = parallel.sharded_loss_and_aux(method, mesh)
  fn = functools.partial(train_step, method=method, tx=tx, decay_steps=decay_steps,
                         decay_factor=decay_factor, steps_per_epoch=steps_per_epoch,
                         forward=forward)
  return jax.jit(fn, donate_argnums=(0,))
