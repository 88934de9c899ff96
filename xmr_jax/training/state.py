"""Train state and optimiser.

State is a plain dict pytree ``{params, batch_stats, opt_state, step, rng, alive}`` so it
checkpoints with orbax and vmaps over a sweep axis without wrappers. ``alive`` (bool) turns
False at the first non-finite step; the step then keeps the last finite state (step.py).
"""
import functools
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xmr_jax.common.errors import ConfigError
from xmr_jax.models.registry import Method
from xmr_jax.types import image_inputs, text_inputs

State = Dict[str, Any]


def _path_labels(groups: Mapping[str, Tuple[Tuple[str, ...], ...]], outside: str):
  """A label function for ``optax.multi_transform``: label ``g`` for leaves under any of
  ``groups[g]`` (tuples of parameter names), ``outside`` for the rest."""
  def label(params):
    def one(path, _):
      names = tuple(getattr(k, "key", getattr(k, "name", k)) for k in path)
      return next((g for g, paths in groups.items()
                   if any(names[:len(p)] == tuple(p) for p in paths)), outside)
    return jax.tree_util.tree_map_with_path(one, params)
  return label


def _scale_groups(pretrained, frozen_steps=None) -> Dict[str, Tuple[Tuple[float, int],
                                                                    Tuple[Tuple[str, ...], ...]]]:
  """{label: ((lr scale, frozen steps), paths)} of the pretrained subtrees whose scale is not
  1 or that start frozen (``frozen_steps``: {path: steps}), grouped by both in order of
  appearance: "tower", then "tower_1", ... (one tower keeps the label it has always had, so
  its optimiser state's tree is unchanged)."""
  frozen_steps = dict(frozen_steps or {})
  by_key: Dict[Tuple[float, int], list] = {}
  for path, scale in pretrained:
    key = (float(scale), int(frozen_steps.get(tuple(path), 0)) if scale else 0)
    if key != (1.0, 0):
      by_key.setdefault(key, []).append(tuple(path))
  return {("tower" if i == 0 else f"tower_{i}"): (key, tuple(paths))
          for i, (key, paths) in enumerate(by_key.items())}


def after_steps(inner: optax.GradientTransformation, start: int) -> optax.GradientTransformation:
  """``inner`` from update number ``start`` on; zero updates before, with ``inner``'s state
  left at its initial value (Adam's moments and count start fresh when the subtree starts
  training, as when the official code adds the CNN's parameters to a new optimiser to
  fine-tune). ``start`` <= 0: ``inner`` itself."""
  if start <= 0:
    return inner

  def init(params):
    return {"count": jnp.zeros([], jnp.int32), "inner": inner.init(params)}

  def update(updates, state, params=None):
    def run(_):
      return inner.update(updates, state["inner"], params)

    def hold(_):
      return jax.tree.map(jnp.zeros_like, updates), state["inner"]
    new, inner_state = jax.lax.cond(state["count"] >= start, run, hold, None)
    return new, {"count": state["count"] + 1, "inner": inner_state}
  return optax.GradientTransformation(init, update)


def _base_optimizer(t) -> optax.GradientTransformation:
  kind = t.get("optimizer", "adam")
  if kind == "adam":
    return optax.inject_hyperparams(optax.adam)(learning_rate=0.0)
  if kind == "sgd":
    return optax.inject_hyperparams(optax.sgd)(learning_rate=0.0,
                                               momentum=t.get("momentum", 0.9))
  raise ConfigError(f"config.train.optimizer={kind!r}: use 'adam' or 'sgd'")


def make_optimizer(train_config, unclipped: Tuple[str, ...] = (), *,
                   pretrained: Tuple[Tuple[Tuple[str, ...], float], ...] = (),
                   frozen_steps: Optional[Mapping[Tuple[str, ...], int]] = None
                   ) -> optax.GradientTransformation:
  """Global-norm clipping, optional L2 weight decay, then Adam or SGD with momentum.

  Official VSE++/SCAN/SGRAF/PCME: ``clip_grad_norm_`` then Adam (``train.optimizer='adam'``);
  DeFrag's MATLAB code: SGD with momentum 0.9 and an L2 penalty alpha * ||theta||^2 on the cost,
  whose gradient 2 * alpha * theta is ``add_decayed_weights(2 * weight_decay)`` here. The
  learning rate is an injected hyperparameter, set every step from ``hparams['learning_rate']``
  times the step-decay factor (``learning_rate_at``), so a sweep can vmap over it.
  ``unclipped``: top-level parameter names left out of the clipping (and of its global norm).

  ``pretrained``: ``((parameter path, lr scale), ...)`` of pretrained towers
  (``Method.pretrained``): each updated with its scale times the learning rate through
  ``optax.multi_transform`` (the optimiser's update, then ``optax.scale``); with scale 0
  (frozen) they get ``optax.set_to_zero`` (no optimiser state) and are left out of the
  clipping. Without ``pretrained`` (or with every scale 1) the chain is exactly the one above.
  ``frozen_steps``: {pretrained path: n}: that tower is not updated for the first n steps
  (:func:`after_steps`; ``train.backbone_frozen_epochs``), then trains with its scale.
  """
  t = train_config
  groups = _scale_groups(pretrained, frozen_steps)
  tops = tuple(p[0] for (scale, _), paths in groups.values() if scale == 0 for p in paths)
  unclipped = tuple(unclipped) + tuple(k for k in tops if k not in unclipped)
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
  base = _base_optimizer(t)
  if not groups:
    return optax.chain(*parts, base)
  transforms = {label: (optax.set_to_zero() if scale == 0 else after_steps(
                            optax.chain(_base_optimizer(t), optax.scale(scale)), start))
                for label, ((scale, start), _) in groups.items()}
  return optax.chain(*parts, optax.multi_transform(
      {"model": base, **transforms},
      _path_labels({label: paths for label, (_, paths) in groups.items()}, "model")))


def with_learning_rate(opt_state, lr: jax.Array):
  """``opt_state`` with every injected ``learning_rate`` set to ``lr`` (the base optimiser's,
  and a pretrained tower's inside ``multi_transform``); a new pytree, inputs untouched."""
  # optax's inject_hyperparams states (InjectStatefulHyperparamsState in optax 0.2.x): named
  # tuples with a ``hyperparams`` field.
  is_inject = lambda x: isinstance(x, tuple) and "hyperparams" in getattr(x, "_fields", ())
  def set_lr(x):
    if is_inject(x):
      return x._replace(hyperparams=dict(x.hyperparams, learning_rate=lr))
    return x
  return jax.tree.map(set_lr, opt_state, is_leaf=is_inject)


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


@functools.lru_cache(maxsize=4)   # params and batch_stats are filled from one read
def _load_pretrained(name: str) -> Dict[str, Any]:
  """The variables ``{collection: nested float32 arrays}`` of a pretrained tower by name:
  a text tower of ``backbones.text_towers.TEXT_TOWERS`` (``params`` only) or an image backbone of ``backbones.registry`` (``params``
  and its eval-mode BatchNorm ``batch_stats``, without the ImageNet classifier)."""
  from xmr_jax.backbones import registry, text_towers
  if name in text_towers.TEXT_TOWERS:
    variables = {"params": text_towers.text_tower(name).load_params()}
  else:
    variables = registry.get(name).feature_variables()
  # numpy, so each state gets buffers of its own: the train step donates the state's.
  return jax.tree.map(np.asarray, variables)


def pretrained_variables(method: Method) -> Dict[Tuple[str, ...], Dict[str, Any]]:
  """{subtree path: {collection: pretrained weights}} of ``method.pretrained``, read from the
  towers' pip packages (``xmr_jax.backbones``)."""
  return {tuple(path): _load_pretrained(name) for path, name, _ in method.pretrained}


def with_pretrained(params, method: Method, stacked: int = 0, collection: str = "params"):
  """``params`` (the ``collection`` of a state: "params" or "batch_stats") with each
  ``method.pretrained`` subtree replaced by the pretrained weights (tiled over a leading axis
  of ``stacked`` variants when > 0). Raises ConfigError when a weight's shape differs from
  the model's."""
  params = dict(params)
  for path, variables in pretrained_variables(method).items():
    if collection not in variables:
      continue
    weights = variables[collection]
    node = params
    for name in path[:-1]:
      node[name] = dict(node[name])
      node = node[name]
    def put(old, new, where=path):
      new = jnp.asarray(new, jnp.float32)
      if stacked:
        new = jnp.broadcast_to(new, (stacked,) + new.shape)
      if new.shape != old.shape:
        raise ConfigError(f"pretrained {'/'.join(where)}: shape {new.shape} but the model "
                          f"has {old.shape}")
      return new
    node[path[-1]] = jax.tree.map(put, node[path[-1]], weights)
  return params


def init_state(method: Method, sample_batch: Mapping[str, Any], tx: optax.GradientTransformation,
               seed, pretrained: bool = True) -> State:
  """Initial parameters from ``seed`` (an int or a uint32 array, so it can be vmapped), with
  the pretrained subtrees of ``method.pretrained`` copied in unless ``pretrained`` is False
  (the optimiser state does not depend on the values, only on the tree).

  Compiled as one program: run eagerly, ``init`` dispatches the whole forward pass on the
  sample batch op by op (VSE++ at Flickr30K shapes: 15 s eager, 10 s compiled; the
  parameters are the same bits).
  """
  if isinstance(seed, int):
    seed = jax.random.key_data(jax.random.key(seed))
  state = _compiled_init(method, tx)(seed, sample_batch)
  if pretrained and method.pretrained:
    for collection in ("params", "batch_stats"):
      state[collection] = with_pretrained(state[collection], method, collection=collection)
  return state


def _compiled_init(method: Method, tx: optax.GradientTransformation):
  """``(key data, sample batch) -> state``, jitted once per (method, optimiser)."""
  return jax.jit(functools.partial(_init_state, method, tx))


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
  # Pretrained weights are copied in after stacking, not baked into each variant's init.
  init = _compiled_init(method, tx)     # one compilation for every variant
  states = [init(jax.random.key_data(jax.random.key(int(s))), sample_batch) for s in seeds]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  if method.pretrained:
    for collection in ("params", "batch_stats"):
      stacked[collection] = with_pretrained(stacked[collection], method, stacked=len(seeds),
                                            collection=collection)
  return stacked


def variables_of(state: State):
  """The Flax variables (``params`` [+ ``batch_stats``]) of a train state."""
  v = {"params": state["params"]}
  if state["batch_stats"]:
    v["batch_stats"] = state["batch_stats"]
  return v


def num_params(params) -> int:
  """Number of scalar parameters in a params pytree."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
