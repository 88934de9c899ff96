"""The training-free ridge/TF-IDF baseline and the chance level used in the results tables."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import baseline_ridge as B  # noqa: E402


def test_tfidf_by_hand():
  vocab, idf = B.tfidf_fit(["a dog", "a cat", "A Dog runs"])
  assert sorted(vocab) == ["a", "cat", "dog", "runs"]
  # df: a 3, dog 2, cat 1, runs 1 over 3 docs -> idf = log(4 / (1 + df)) + 1
  np.testing.assert_allclose(idf[vocab["a"]], np.log(4 / 4) + 1)
  np.testing.assert_allclose(idf[vocab["cat"]], np.log(4 / 2) + 1)
  v = B.tfidf(["dog dog cat bird"], vocab, idf)[0]
  raw = np.zeros(4)
  raw[vocab["dog"]], raw[vocab["cat"]] = 2 * idf[vocab["dog"]], idf[vocab["cat"]]
  np.testing.assert_allclose(v, raw / np.linalg.norm(raw))


def test_chance_level_matches_a_simulation():
  c = B.chance(20, 5)
  assert c["t2i_r1"] == pytest.approx(5.0) and c["t2i_r10"] == pytest.approx(50.0)
  rng = np.random.default_rng(0)
  from xmr_jax.evaluation import metrics
  sims = [metrics.evaluate(rng.normal(size=(20, 100)), k=5)["i2t"]["r5"] for _ in range(300)]
  assert abs(np.mean(sims) - c["i2t_r5"]) < 2.0


def test_ridge_beats_chance_on_the_synthetic_benchmark(tiny_data_dir):
  res = B.run(tiny_data_dir, lambdas=(1.0, 100.0))
  assert res["lambda"] in (1.0, 100.0)
  assert res["test"]["rsum"] > res["chance"]["rsum"] + 50


def test_lambda_grid_spans_decades_and_the_edge_is_reported(tiny_data_dir):
  assert B.LAMBDAS[0] == 1e-2 and B.LAMBDAS[-1] == 1e6 and len(B.LAMBDAS) == 17
  res = B.run(tiny_data_dir, lambdas=(1.0, 100.0))     # any choice of two is at an edge
  assert res["lambda_at_grid_edge"] is True
  res = B.run(tiny_data_dir, lambdas=(1e-9, 1.0, 100.0, 1e12))
  assert res["lambda_at_grid_edge"] is (res["lambda"] in (1e-9, 1e12))


def test_feature_scaling_is_chosen_on_dev(tiny_data_dir):
  both = B.run(tiny_data_dir, lambdas=(1.0, 100.0))
  assert both["standardise"] in ("zscore", "none")
  assert set(both["dev_rsum_by_lambda"]) == {"zscore", "none"}
  best = max(max(v.values()) for v in both["dev_rsum_by_lambda"].values())
  assert max(both["dev_rsum_by_lambda"][both["standardise"]].values()) == best
  only = B.run(tiny_data_dir, lambdas=(1.0, 100.0), standardise=("zscore",))
  assert only["standardise"] == "zscore" and list(only["dev_rsum_by_lambda"]) == ["zscore"]
