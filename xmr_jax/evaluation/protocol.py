"""Evaluation protocols: encode a split, score it in tiles, compute metrics, write results."""
import importlib
import json
import os
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

from xmr_jax.evaluation import engine, metrics
from xmr_jax.training.logging import atomic_write_json


def score_split(config, ds, method, variables, *, split: str, max_images: Optional[int] = None,
                progress: bool = False) -> Tuple[np.ndarray, Any, Dict[str, float]]:
  """(scores (n_img, n_txt), eval data, seconds) for a split (first ``max_images`` images)."""
  data = ds.eval_data(split, config.eval.encode_batch_size, max_images=max_images)
  t0 = time.time()
  img = engine.encode_all(method, variables, data.image_batches(), "image", seed=config.seed,
                          progress=progress, desc=f"encode {split} images")
  txt = engine.encode_all(method, variables, data.text_batches(), "text", seed=config.seed,
                          progress=progress, desc=f"encode {split} captions")
  t1 = time.time()
  scores = engine.score_all(method, variables, img, txt, tile_images=config.eval.tile_images,
                            tile_texts=config.eval.tile_texts,
                            length_groups=config.eval.get("length_groups", 1), progress=progress)
  t2 = time.time()
  if not np.all(np.isfinite(scores)):
    raise FloatingPointError(f"{method.name}: non-finite scores on split {split!r}")
  return scores, data, {"encode": t1 - t0, "score": t2 - t1}


def evaluate(config, ds, method, variables, *, split: str, max_images: Optional[int] = None,
             protocol_name: Optional[str] = None, progress: bool = False,
             return_scores: bool = False) -> Dict[str, Any]:
  """Results dict in the DESIGN.md schema (percentages 0-100)."""
  scores, data, seconds = score_split(config, ds, method, variables, split=split,
                                      max_images=max_images, progress=progress)
  res = results_from_scores(scores, data, method=method.name, split=split,
                            protocol_name=protocol_name or config.eval.protocol)
  res["seconds"] = seconds
  if return_scores:
    return res, scores, data
  return res


def results_from_scores(scores: np.ndarray, data, *, method: str, split: str,
                        protocol_name: str) -> Dict[str, Any]:
  res = metrics.evaluate(scores, k=data.k, protocol=protocol_name,
                         img_labels=data.img_labels, cap_labels=data.cap_labels)
  return {"method": method, "split": split, "protocol": protocol_name, **res}


def format_table(res: Dict[str, Any]) -> str:
  """A printable R@K table of one results dict."""
  head = f"{res['method']} | {res['split']} | protocol {res['protocol']}"
  lines = [head, f"{'':6}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'medr':>8}{'meanr':>9}"]
  for d in ("i2t", "t2i"):
    m = res[d]
    lines.append(f"{d:6}{m['r1']:8.2f}{m['r5']:8.2f}{m['r10']:8.2f}{m['medr']:8.1f}{m['meanr']:9.2f}")
  lines.append(f"rsum {res['rsum']:.2f}")
  if "pmrp" in res:
    lines.append(f"PMRP i2t {res['pmrp']['i2t']:.2f}  t2i {res['pmrp']['t2i']:.2f}")
  return "\n".join(lines)


def evaluate_and_write(config, ds, method, variables, workdir: str, *, split: str,
                       name: str = "results.json") -> Dict[str, Any]:
  """Evaluates ``split`` and writes ``workdir/eval/results.json``; prints the table."""
  res, scores, data = evaluate(config, ds, method, variables, split=split, progress=True,
                               return_scores=True)
  atomic_write_json(os.path.join(workdir, "eval", name), res)
  np.save(os.path.join(workdir, "eval", f"{split}_scores.npy"), scores.astype(np.float32))
  print(format_table(res), flush=True)
  return res


def write_plots(config, ds, method, variables, workdir: str, results: Dict[str, Any]) -> None:
  """``plots/curves.png`` and ``plots/retrieval_examples.png`` (from the saved scores)."""
  from xmr_jax import plots  # matplotlib only when plotting
  plots.plot_curves(os.path.join(workdir, "metrics.jsonl"),
                    os.path.join(workdir, "plots", "curves.png"))
  split = results["split"]
  scores = np.load(os.path.join(workdir, "eval", f"{split}_scores.npy"))
  data = ds.eval_data(split, config.eval.encode_batch_size)
  plots.plot_retrieval_examples(scores, data.captions,
                                os.path.join(workdir, "plots", "retrieval_examples.png"),
                                pixels=data.pixels, captions_per_image=data.k, seed=config.seed)
  # Method-specific pictures (DeFrag alignments, PCME uncertainty): an optional
  # ``write_plots(config, ds, method, variables, workdir, scores, data)`` in the model module.
  module = importlib.import_module(f"xmr_jax.models.{method.name}")
  if hasattr(module, "write_plots"):
    module.write_plots(config, ds, method, variables, workdir, scores, data)
