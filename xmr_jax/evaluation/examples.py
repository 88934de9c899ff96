"""The ``retrieval_examples`` evaluator: ``plots/retrieval_examples.png``.

With rendered pixels, a few caption queries with their top images (t2i); otherwise a few image
queries with their top captions (i2t). Reads the scores left by ``retrieval``.
"""
import os
from typing import Optional

from xmr_jax.evaluation.context import EvalContext


def check(method) -> Optional[str]:
  """Every method has retrieval examples."""
  del method
  return None


def run(ctx: EvalContext) -> None:
  """Draws the examples of ``ctx.scores`` into ``workdir/plots/retrieval_examples.png``."""
  from xmr_jax import plots  # matplotlib only when plotting
  plots.plot_retrieval_examples(ctx.scores, ctx.data.captions,
                                os.path.join(ctx.workdir, "plots", "retrieval_examples.png"),
                                pixels=ctx.data.pixels, captions_per_image=ctx.data.k,
                                seed=ctx.seed)
