"""A training-free baseline, and chance level, on any dataset in the SCAN precomp layout.

Ridge regression from mean-pooled image features, standardised (z-score with the train
split's mean and standard deviation) or not, to the TF-IDF vectors of the captions (lower-cased
whitespace tokens; the TF-IDF of an image is the mean of its captions'), the regularisation
λ chosen by dev rsum over half decades 1e-2 … 1e6 (the JSON says when the choice lies at
the grid's edge, ``lambda_at_grid_edge``: then widen it with ``--lambdas``), and z-scored or
raw features, whichever is better on dev (``--standardise``), then scored
as every method is: the (n_img, n_txt) matrix of cosine similarities between predicted and real caption vectors, through
``xmr_jax.evaluation.metrics.evaluate``. Numpy only: closed-form ridge, no training loop.

  python experiments/baseline_ridge.py --data_dir=DIR [--out=baseline.json] [--lambdas=1e-2,...]

Chance level is computed exactly for the same split sizes: t2i R@K = K / n_img; i2t R@K =
1 - C(k n - k, K) / C(k n, K) (at least one of the image's k captions among K of k n).
"""
import argparse
import json
import math
import os
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np

from xmr_jax.data import precomp
from xmr_jax.evaluation import metrics

LAMBDAS = tuple(10.0 ** (e / 2) for e in range(-4, 13))    # 1e-2, 3.2e-2, ... 1e6
STANDARDISE = ("zscore", "none")


def mean_pooled(split: precomp.PrecompSplit) -> np.ndarray:
  """(N, F) float64: the mean of each image's real regions (``region_mask`` when present)."""
  ims = np.asarray(split.images, np.float64)
  mask = (np.ones(ims.shape[:2], bool) if split.region_mask is None
          else np.asarray(split.region_mask))
  return (ims * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)


def tfidf_fit(captions: Sequence[str]) -> Tuple[Dict[str, int], np.ndarray]:
  """(vocabulary word -> column, idf (V,)) from lower-cased whitespace tokens.

  Smoothed idf as scikit-learn's default: log((1 + n) / (1 + df)) + 1.
  """
  docs = [set(c.lower().split()) for c in captions]
  vocab = {w: i for i, w in enumerate(sorted(set().union(*docs)))}
  df = np.zeros(len(vocab))
  for d in docs:
    df[[vocab[w] for w in d]] += 1
  return vocab, np.log((1 + len(docs)) / (1 + df)) + 1


def tfidf(captions: Sequence[str], vocab: Dict[str, int], idf: np.ndarray) -> np.ndarray:
  """(n, V) l2-normalised TF-IDF rows; words outside the vocabulary are ignored."""
  out = np.zeros((len(captions), len(vocab)))
  for row, c in enumerate(captions):
    for w in c.lower().split():
      if w in vocab:
        out[row, vocab[w]] += 1
  out *= idf
  return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _image_targets(y: np.ndarray, k: int) -> np.ndarray:
  return y.reshape(-1, k, y.shape[1]).mean(1)


def fit_ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
  """W (F + 1, V) minimising ||[x 1] W - y||^2 + lam ||W||^2 (bias unpenalised: x centred)."""
  xc = np.concatenate([x, np.ones((len(x), 1))], 1)
  reg = lam * np.eye(xc.shape[1])
  reg[-1, -1] = 0.0
  return np.linalg.solve(xc.T @ xc + reg, xc.T @ y)


def scores(w: np.ndarray, x: np.ndarray, cap_vecs: np.ndarray) -> np.ndarray:
  """(n_img, n_txt) cosine similarity of predicted and real caption vectors."""
  pred = np.concatenate([x, np.ones((len(x), 1))], 1) @ w
  pred /= np.maximum(np.linalg.norm(pred, axis=1, keepdims=True), 1e-12)
  return pred @ cap_vecs.T


def chance(n_img: int, k: int) -> Dict[str, float]:
  """Expected R@1/5/10 (percent) and rsum of random scores for n_img images, k captions each."""
  out = {}
  for kk in (1, 5, 10):
    t2i = min(kk, n_img) / n_img
    n = k * n_img
    i2t = 1.0 - (math.comb(n - k, kk) / math.comb(n, kk) if kk <= n - k else 0.0)
    out[f"i2t_r{kk}"], out[f"t2i_r{kk}"] = 100 * i2t, 100 * t2i
  out["rsum"] = sum(out.values())
  return out


def _dev_grid(x, y, caps, k: int, lambdas: Sequence[float]) -> List[float]:
  """Dev rsum of the ridge fitted on train for each lambda."""
  return [metrics.evaluate(scores(fit_ridge(x["train"], y, lam), x["dev"], caps["dev"]),
                           k=k)["rsum"] for lam in lambdas]


def run(data_dir: str, lambdas: Sequence[float] = LAMBDAS,
        standardise: Sequence[str] = STANDARDISE) -> Dict[str, object]:
  """Fits on train, picks the feature scaling and lambda by dev rsum, evaluates test once.

  ``standardise``: "zscore" (each pooled feature minus its train mean, over its train
  standard deviation) and/or "none" (the pooled features as extracted); the better on dev
  is used. Returns the results dict (chosen ``standardise`` and ``lambda``, whether lambda
  lies at the edge of its grid, every dev rsum, the test metrics, chance).
  """
  t0 = time.time()
  splits = {s: precomp.load_split(data_dir, s) for s in ("train", "dev", "test")}
  raw = {s: mean_pooled(sp) for s, sp in splits.items()}
  mu, sd = raw["train"].mean(0), raw["train"].std(0) + 1e-6
  feats = {"zscore": {s: (v - mu) / sd for s, v in raw.items()}, "none": raw}
  vocab, idf = tfidf_fit(splits["train"].captions)
  caps = {s: tfidf(sp.captions, vocab, idf) for s, sp in splits.items()}
  y = _image_targets(caps["train"], splits["train"].k)
  dev = {name: _dev_grid(feats[name], y, caps, splits["dev"].k, lambdas)
         for name in standardise}
  name = max(dev, key=lambda n: max(dev[n]))
  pick = int(np.argmax(dev[name]))
  best, x = float(lambdas[pick]), feats[name]
  w = fit_ridge(x["train"], y, best)
  test = metrics.evaluate(scores(w, x["test"], caps["test"]), k=splits["test"].k,
                          img_labels=splits["test"].labels)
  return {"data_dir": os.path.abspath(data_dir), "standardise": name, "lambda": best,
          "lambda_at_grid_edge": pick in (0, len(lambdas) - 1),
          "dev_rsum_by_lambda": {n: dict(zip(map(str, lambdas), v)) for n, v in dev.items()},
          "test": test, "chance": chance(splits["test"].num_images, splits["test"].k),
          "vocabulary": len(vocab), "seconds": time.time() - t0}


def main(argv: List[str] = None) -> None:
  """CLI: prints the test table and writes the JSON (``--out``)."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data_dir", required=True)
  p.add_argument("--out", default="")
  p.add_argument("--lambdas", default="", help="comma-separated grid (default 1e-2 ... 1e6)")
  p.add_argument("--standardise", default=",".join(STANDARDISE),
                 help="zscore and/or none, comma-separated: the better on dev is used")
  a = p.parse_args(argv)
  res = run(a.data_dir, [float(v) for v in a.lambdas.split(",")] if a.lambdas else LAMBDAS,
            a.standardise.split(","))
  t = res["test"]
  print(f"ridge ({res['standardise']}, lambda {res['lambda']:g}): i2t R@1/5/10 {t['i2t']['r1']:.1f}/"
        f"{t['i2t']['r5']:.1f}/{t['i2t']['r10']:.1f}, t2i {t['t2i']['r1']:.1f}/"
        f"{t['t2i']['r5']:.1f}/{t['t2i']['r10']:.1f}, rsum {t['rsum']:.1f}; chance rsum "
        f"{res['chance']['rsum']:.1f}" + (f"; PMRP i2t {t['pmrp']['i2t']:.1f}, t2i "
                                          f"{t['pmrp']['t2i']:.1f}" if "pmrp" in t else ""),
        file=sys.stdout)
  if res["lambda_at_grid_edge"]:
    print(f"warning: lambda {res['lambda']:g} is at the edge of the grid; widen --lambdas",
          file=sys.stderr)
  if a.out:
    with open(a.out, "w") as f:
      json.dump(res, f, indent=2, default=float)


if __name__ == "__main__":
  main()
