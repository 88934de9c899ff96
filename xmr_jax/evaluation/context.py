"""What every evaluator receives: :class:`EvalContext`."""
import dataclasses
from typing import Any, Dict, Optional, Sequence

import numpy as np

from xmr_jax.common.errors import InputError


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
    shortlist: two-stage ranking's first stage when ``eval.shortlist`` names a workdir: its
      own context (method, variables, dataset, the same split), restored by ``training/``;
      None otherwise.
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
  shortlist: Optional["EvalContext"] = None


def check_same_data(ctx: EvalContext, ref: EvalContext, what: str, ref_what: str, why: str,
                    ignore: Sequence[str] = ()) -> None:
  """InputError unless ``ctx`` evaluates the data ``ref`` evaluates.

  Compares ``dataset.fingerprint(split)`` of both (location, split, sizes, caption and
  feature hashes; keys in ``ignore`` left out); the message names ``what`` and ``ref_what``,
  every difference, and ends with ``why`` they must agree.
  """
  want = ref.dataset.fingerprint(ref.split)
  got = ctx.dataset.fingerprint(ctx.split)
  diff = [f"{k}: {got.get(k)} ({ref_what} {want[k]})" for k in want
          if k not in ignore and got.get(k) != want[k]]
  if diff:
    raise InputError(f"{what} does not evaluate the data of {ref_what}: " + "; ".join(diff)
                     + f". {why}")
