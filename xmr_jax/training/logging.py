"""Metrics to ``metrics.jsonl`` and TensorBoard event files (tensorboardX; clu needs TF)."""
import json
import math
import os
from typing import Mapping

from tensorboardX import SummaryWriter


class MetricsWriter:
  """Appends one JSON object per call to ``workdir/metrics.jsonl`` and mirrors it to TB."""

  def __init__(self, workdir: str, enabled: bool = True):
    """``enabled`` False (processes other than 0 of a multi-process run) writes nothing."""
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard")) if enabled else None

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """One JSON line ``{"step", **scalars}`` (non-finite values as strings) + TB scalars."""
    if self._tb is None:
      return
    record = {"step": int(step)}
    for k, v in scalars.items():
      v = float(v)
      record[k] = v if math.isfinite(v) else str(v)
      self._tb.add_scalar(k, v, int(step))
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def close(self):
    """Flushes and closes the TensorBoard writer."""
    if self._tb is not None:
      self._tb.close()
