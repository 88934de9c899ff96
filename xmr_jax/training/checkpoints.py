"""Checkpoints with orbax: the latest (for resume) and the best by dev rsum.

``workdir/checkpoints/<step>/`` holds the train state, the data iterator state and the config;
``workdir/best/<step>/`` the parameters of the best dev rsum (max_to_keep=1). Saves are
synchronous and orbax writes into a temporary directory renamed on completion, so a run killed
at any moment (SIGKILL included) leaves the previous checkpoints intact and never a half one.
"""
import os
from typing import Any, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp


def _manager(path: str, max_to_keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(path), options=options)


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
  """Latest + best checkpoints of one workdir."""

  def __init__(self, workdir: str, max_to_keep: int = 2):
    self.latest = _manager(os.path.join(workdir, "checkpoints"), max_to_keep)
    self.best = _manager(os.path.join(workdir, "best"), 1)

  def save(self, step: int, state: Any, data_state: Any, config: dict) -> None:
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config)))
    self.latest.wait_until_finished()

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def restore(self, state_like: Any) -> Optional[Tuple[Any, Any]]:
    """(state, data_state) of the latest checkpoint, or None if there is none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    out = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state_like)), data=ocp.args.JsonRestore()))
    return out["state"], out["data"]

  def save_best(self, step: int, variables: Any, info: dict) -> None:
    self.best.save(step, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables), info=ocp.args.JsonSave(info)), force=True)
    self.best.wait_until_finished()

  def best_info(self) -> Optional[dict]:
    step = self.best.latest_step()
    if step is None:
      return None
    return self.best.restore(step, args=ocp.args.Composite(info=ocp.args.JsonRestore()))["info"]

  def restore_best(self, variables_like: Any) -> Optional[Any]:
    step = self.best.latest_step()
    if step is None:
      return None
    return self.best.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(_abstract(variables_like))))["variables"]

  def close(self):
    self.latest.close()
    self.best.close()
