"""The ``alignments`` evaluator: ``plots/alignments.png`` (DeFrag paper fig. 4).

For the first few images of the split and their first caption, each sentence fragment is drawn
against the image fragment (region box) it aligns to best, from the method's alignment function
(``Method.alignments``: a model method ``(img, txt) -> {"index" (B, Ns), "score" (B, Ns)}``).
"""
import os
from typing import Any, Dict, List, Optional

import jax
import numpy as np

from xmr_jax.evaluation.context import EvalContext
from xmr_jax.types import image_inputs, text_inputs

NUM_EXAMPLES = 4


def check(method) -> Optional[str]:
  """Needs a method that declares ``Method.alignments``."""
  if method.alignments is None:
    return f"method {method.name!r} declares no fragment alignments (Method.alignments)"
  return None


def best_alignments(ctx: EvalContext, n: int) -> Dict[str, np.ndarray]:
  """``{"index", "score"}`` (n, Ns) for images 0..n-1 with their first captions."""
  k = ctx.data.k
  head = ctx.dataset.eval_data(ctx.split, n * k, max_images=n)
  images = next(iter(head.image_batches()))
  texts = next(iter(head.text_batches()))
  pick = np.arange(n) * k                      # the first caption of each image
  apply = lambda fn, *x: ctx.method.model.apply(ctx.variables, *x, train=False, method=fn)
  img = apply("encode_images", {key: v[:n] for key, v in image_inputs(images).items()})
  txt = apply("encode_texts", {key: v[pick] for key, v in text_inputs(texts).items()})
  out = ctx.method.model.apply(ctx.variables, img, txt, method=ctx.method.alignments)
  return jax.tree.map(np.asarray, out)


def _example(data, al, i: int) -> Dict[str, Any]:
  """Fragments, boxes and scores of example i (labelled by dependency triple or position)."""
  triples = data.deps[i * data.k] if data.deps is not None else []
  labels: List[str] = [f"{r}({h}, {d})" for r, h, d in triples]
  if not labels:   # bigram/word fragments: label by position
    labels = [f"fragment {j}" for j in range(int((al["index"][i] >= 0).sum()))]
  boxes, scores = [], []
  for j, _ in enumerate(labels[:al["index"].shape[1]]):
    r = int(al["index"][i, j])
    has_box = data.boxes is not None and 0 <= r < data.boxes.shape[1]
    boxes.append(tuple(data.boxes[i, r]) if has_box else None)
    scores.append(float(al["score"][i, j]))
  return {"caption": data.captions[i * data.k], "fragments": labels[:len(boxes)],
          "boxes": boxes, "scores": scores,
          "pixels": None if data.pixels is None else np.asarray(data.pixels[i])}


def run(ctx: EvalContext, num_examples: int = NUM_EXAMPLES) -> List[Dict[str, Any]]:
  """Draws (with a workdir) and returns the examples."""
  n = min(num_examples, len(ctx.data.captions) // ctx.data.k)
  al = best_alignments(ctx, n)
  examples = [_example(ctx.data, al, i) for i in range(n)]
  if ctx.workdir is not None:
    from xmr_jax import plots  # matplotlib only when plotting
    plots.plot_alignments(examples, os.path.join(ctx.workdir, "plots", "alignments.png"))
  return examples
