"""The ``retrieval`` evaluator: R@K, medr, meanr, rsum and PMRP under a protocol.

Encodes every image and caption of a split once (``engine.encode_all``), scores all pairs in
tiles (``engine.score_all``) and computes ``metrics.evaluate``; with a workdir it writes
``eval/results.json`` and ``eval/{split}_scores.npy`` and prints the table. Every other
evaluator reads the scores it leaves in the context.
"""
import os
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

from xmr_jax.common.io import atomic_write_json
from xmr_jax.evaluation import engine, metrics
from xmr_jax.evaluation.context import EvalContext


def score_split(ctx: EvalContext, *, max_images: Optional[int] = None,
                progress: bool = False) -> Tuple[np.ndarray, Any, Dict[str, float]]:
  """(scores (n_img, n_txt), the split's EvalData, seconds) for the first ``max_images`` images.

  Raises FloatingPointError when a score is NaN/Inf (ranks would be meaningless).
  """
  s = ctx.settings
  data = ctx.dataset.eval_data(ctx.split, s.encode_batch_size, max_images=max_images)
  t0 = time.time()
  img, txt = encode_split(ctx, data, progress)
  t1 = time.time()
  scores = engine.score_all(ctx.method, ctx.variables, img, txt, tile_images=s.tile_images,
                            tile_texts=s.tile_texts, mesh=ctx.mesh,
                            length_groups=s.get("length_groups", 1), progress=progress)
  t2 = time.time()
  if not np.all(np.isfinite(scores)):
    raise FloatingPointError(f"{ctx.method.name}: non-finite scores on split {ctx.split!r}")
  return scores, data, {"encode": t1 - t0, "score": t2 - t1}


def encode_split(ctx: EvalContext, data, progress: bool = False) -> Tuple[Any, Any]:
  """(image reprs, caption reprs) of a split's ``EvalData`` (``engine.encode_all``)."""
  img = engine.encode_all(ctx.method, ctx.variables, data.image_batches(), "image",
                          seed=ctx.seed, progress=progress, desc=f"encode {ctx.split} images")
  txt = engine.encode_all(ctx.method, ctx.variables, data.text_batches(), "text",
                          seed=ctx.seed, progress=progress, desc=f"encode {ctx.split} captions")
  return img, txt


def results_from_scores(scores: np.ndarray, data, *, method: str, split: str,
                        protocol_name: str) -> Dict[str, Any]:
  """The results dict (percentages 0-100) of a score matrix under ``protocol_name``."""
  res = metrics.evaluate(scores, k=data.k, protocol=protocol_name,
                         img_labels=data.img_labels, cap_labels=data.cap_labels)
  return {"method": method, "split": split, "protocol": protocol_name, **res}


def format_table(res: Dict[str, Any]) -> str:
  """A printable R@K table of one results dict."""
  head = f"{res['method']} | {res['split']} | protocol {res['protocol']}"
  lines = [head, f"{'':6}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'medr':>8}{'meanr':>9}"]
  for d in ("i2t", "t2i"):
    m = res[d]
    lines.append(f"{d:6}{m['r1']:8.2f}{m['r5']:8.2f}{m['r10']:8.2f}{m['medr']:8.1f}"
                 f"{m['meanr']:9.2f}")
  lines.append(f"rsum {res['rsum']:.2f}")
  if "pmrp" in res:
    lines.append(f"PMRP i2t {res['pmrp']['i2t']:.2f}  t2i {res['pmrp']['t2i']:.2f}")
  return "\n".join(lines)


def evaluate(ctx: EvalContext, *, max_images: Optional[int] = None,
             protocol_name: Optional[str] = None, progress: bool = False) -> Dict[str, Any]:
  """Scores ``ctx.split`` and fills ``ctx.scores``, ``ctx.data``, ``ctx.results``; no files."""
  scores, data, seconds = score_split(ctx, max_images=max_images, progress=progress)
  res = results_from_scores(scores, data, method=ctx.method.name, split=ctx.split,
                            protocol_name=protocol_name or ctx.settings.protocol)
  res["seconds"] = seconds
  ctx.scores, ctx.data, ctx.results = scores, data, res
  return res


def write(ctx: EvalContext, name: str = "results.json") -> None:
  """``eval/<name>`` and ``eval/{split}_scores.npy`` of an evaluated context; prints the table."""
  atomic_write_json(os.path.join(ctx.workdir, "eval", name), ctx.results)
  np.save(os.path.join(ctx.workdir, "eval", f"{ctx.split}_scores.npy"),
          ctx.scores.astype(np.float32))
  print(format_table(ctx.results), flush=True)


def check(method) -> Optional[str]:
  """Every method can be evaluated by retrieval."""
  del method
  return None


def run(ctx: EvalContext) -> Dict[str, Any]:
  """The evaluator: evaluate, then write results and scores when there is a workdir."""
  res = evaluate(ctx, progress=ctx.workdir is not None)
  # Which data these numbers are of (a workdir may be evaluated on other data than it was
  # trained on): location, sizes, caption and feature hashes.
  res["data"] = ctx.dataset.fingerprint(ctx.split)
  if ctx.workdir is not None:
    write(ctx)
  return res
