"""What every evaluator receives: :class:`EvalContext`."""
import dataclasses
from typing import Any, Dict, Optional

import numpy as np


@dataclasses.dataclass
class EvalContext:
  """One evaluation of one method on one split.

  Attributes:
    method: the ``Method`` (models/registry.py): what the evaluators may ask of the model.
    variables: the Flax variables (``params`` [+ ``batch_stats``]) to evaluate.
    dataset: the opened dataset; evaluators call ``dataset.eval_data(split, batch_size,
      max_images=...)`` and nothing else.
    split: split name (``test``, ``dev``, ...).
    settings: the ``config.eval`` section (tiles, batch size, protocol, length groups).
    seed: the run's seed (sampling at evaluation, example selection).
    workdir: where results (``eval/``) and pictures (``plots/``) go; None writes nothing.
    mesh: the ``"data"`` mesh for scoring (None: every local device).
    scores: (n_img, n_txt) float32, filled by the ``retrieval`` evaluator.
    data: the split's ``EvalData``, filled by ``retrieval``.
    results: the results dict (docs/architecture.md; schema in the README), filled by ``retrieval``.
  """
  method: Any
  variables: Any
  dataset: Any
  split: str
  settings: Any
  seed: int = 0
  workdir: Optional[str] = None
  mesh: Any = None
  scores: Optional[np.ndarray] = None
  data: Any = None
  results: Optional[Dict[str, Any]] = None
