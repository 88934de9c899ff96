"""Checkpoints with orbax: the latest (for resume) and the best by dev rsum.

``workdir/checkpoints/<step>/`` holds the train state, the data iterator state, the config and
the trainer's own record (which sweep variants diverged, and when); ``workdir/best/<step>/``
the parameters of the best dev rsum (max_to_keep=1), or for a sweep one
``workdir/best/<variant>/<step>/`` per variant. Saves are
synchronous and orbax writes into a temporary directory renamed on completion, so a run killed
at any moment (SIGKILL included) leaves the previous checkpoints intact and never a half one.
"""
import os
from typing import Any, Optional, Sequence, Tuple

import jax
import orbax.checkpoint as ocp


def _manager(path: str, max_to_keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(path), options=options)


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
  """Latest + best checkpoints of one workdir (``variants``: one best per sweep variant)."""

  def __init__(self, workdir: str, max_to_keep: int = 2,
               variants: Optional[Sequence[str]] = None):
    self.latest = _manager(os.path.join(workdir, "checkpoints"), max_to_keep)
    best = os.path.join(workdir, "best")
    self._best = ({None: _manager(best, 1)} if variants is None else
                  {v: _manager(os.path.join(best, v), 1) for v in variants})

  def save(self, step: int, state: Any, data_state: Any, config: dict,
           trainer: Optional[dict] = None) -> None:
    """Saves the latest checkpoint synchronously (atomic: temporary directory + rename)."""
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config), trainer=ocp.args.JsonSave(trainer or {})))
    self.latest.wait_until_finished()

  def latest_step(self) -> Optional[int]:
    """The step of the latest checkpoint, None when none was saved."""
    return self.latest.latest_step()

  def restore(self, state_like: Any) -> Optional[Tuple[Any, Any]]:
    """(state, data_state) of the latest checkpoint, or None if there is none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    out = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state_like)), data=ocp.args.JsonRestore()))
    return out["state"], out["data"]

  def trainer_record(self) -> dict:
    """The trainer's record saved with the latest checkpoint ({} when there is none)."""
    step = self.latest.latest_step()
    if step is None:
      return {}
    return self.latest.restore(step, args=ocp.args.Composite(
        trainer=ocp.args.JsonRestore()))["trainer"]

  def save_best(self, step: int, variables: Any, info: dict, variant: Optional[str] = None):
    """Replaces the best checkpoint (of ``variant``) with ``variables`` and ``info``."""
    best = self._best[variant]
    best.save(step, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables), info=ocp.args.JsonSave(info)), force=True)
    best.wait_until_finished()

  def best_info(self, variant: Optional[str] = None) -> Optional[dict]:
    """The info saved with the best checkpoint (e.g. {"step", "rsum"}), or None."""
    best = self._best[variant]
    step = best.latest_step()
    if step is None:
      return None
    return best.restore(step, args=ocp.args.Composite(info=ocp.args.JsonRestore()))["info"]

  def restore_best(self, variables_like: Any, variant: Optional[str] = None) -> Optional[Any]:
    """The best variables (of ``variant``), or None when none was saved."""
    best = self._best[variant]
    step = best.latest_step()
    if step is None:
      return None
    return best.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(_abstract(variables_like))))["variables"]

  def close(self):
    """Releases the orbax managers (saves are synchronous: nothing is pending)."""
    self.latest.close()
    for best in self._best.values():
      best.close()
