"""Two-stage ranking (evaluation/rerank.py): the ranks equal a brute-force ordering (the
shortlist in exact order, then the rest in first-stage order), K = every item gives the exact
ranks, a shortlist by the method's own score gives the exact ranks at any K, the pairs scored
are Q x K per direction, the pair scorer equals the all-pairs grid, and bad settings are one
message (exit 2 from the command line) with nothing written."""
import copy
import json
import os

import numpy as np
import pytest

from conftest import assert_one_message, run_cli, tiny_config
from xmr_jax.common.errors import ConfigError, InputError
from xmr_jax.data import synthetic
from xmr_jax.evaluation import EvalContext, engine, metrics, rerank, retrieval
from xmr_jax.training import loop, state as state_lib, sweep, workdirs

SMALL = {"vsepp": dict(embed_dim=16, word_dim=8), "sgraf": dict(embed_dim=8, word_dim=6, sim_dim=6),
         "mmca": dict(embed_dim=8, word_dim=6), "pcme": dict(embed_dim=8, word_dim=6)}


# ----------------------------------------------------------------------------- the ranks
def _brute_force(exact, first, k, per_image, direction):
  """1-based ranks by building each query's whole two-stage order as a Python list."""
  if direction == "t2i":
    exact, first = exact.T, first.T
  ranks = []
  for q in range(exact.shape[0]):
    order = sorted(range(exact.shape[1]), key=lambda j: (-first[q, j], j))
    short = sorted(order[:k], key=lambda j: (-exact[q, j], j))
    full = short + order[k:]
    targets = (range(per_image * q, per_image * (q + 1)) if direction == "i2t"
               else [q // per_image])
    ranks.append(min(full.index(t) + 1 for t in targets))
  return np.array(ranks)


def _two_stage(exact, first, k, per_image, direction):
  """``metrics.two_stage_ranks`` with the shortlist and first-stage ranks from ``first``."""
  if direction == "t2i":
    exact, first = exact.T, first.T
  n_q = exact.shape[0]
  cand = np.argsort(-first, axis=1, kind="stable")[:, :k]
  targets = (per_image * np.arange(n_q)[:, None] + np.arange(per_image) if direction == "i2t"
             else (np.arange(n_q) // per_image)[:, None])
  order = np.argsort(np.argsort(-first, axis=1, kind="stable"), axis=1, kind="stable")
  first_ranks = np.take_along_axis(order, targets, 1) + 1
  return metrics.two_stage_ranks(cand, np.take_along_axis(exact, cand, 1), targets,
                                 first_ranks)


@pytest.mark.parametrize("k", [1, 2, 5, 11, 12])
def test_two_stage_ranks_equal_a_brute_force_ordering_with_ties(k):
  rng = np.random.default_rng(k)
  exact = rng.integers(0, 4, (4, 12)).astype(np.float32)     # few values: many ties
  first = rng.integers(0, 3, (4, 12)).astype(np.float32)
  for direction in ("i2t", "t2i"):
    kk = min(k, 4) if direction == "t2i" else k
    np.testing.assert_array_equal(_two_stage(exact, first, kk, 3, direction),
                                  _brute_force(exact, first, kk, 3, direction))
  # K = every item: the exact ranks, ties and all.
  np.testing.assert_array_equal(_two_stage(exact, first, 12, 3, "i2t"),
                                metrics.i2t_ranks(exact, 3))
  np.testing.assert_array_equal(_two_stage(exact, first, 4, 3, "t2i"),
                                metrics.t2i_ranks(exact, 3))


def test_two_stage_ranks_by_hand():
  # One image query, captions 0..5, its own captions 2 and 3. First stage keeps 5, 2, 0
  # (K = 3); the exact score orders them 0, 2, 5: caption 2 is rank 2. Caption 3 (outside)
  # keeps its first-stage rank 4.
  cand, exact = np.array([[5, 2, 0]]), np.array([[0.1, 0.5, 0.9]])
  assert metrics.two_stage_ranks(cand, exact, np.array([[2, 3]]), np.array([[2, 4]])) == [2]
  # Equal exact scores: the lower caption index first.
  assert metrics.two_stage_ranks(cand, np.array([[0.5, 0.5, 0.5]]), np.array([[2, 3]]),
                                 np.array([[2, 4]])) == [2]
  # Neither target shortlisted: the better first-stage rank.
  assert metrics.two_stage_ranks(cand, exact, np.array([[1, 3]]), np.array([[6, 4]])) == [4]
  with pytest.raises(ValueError, match="within K"):     # not the first stage's top K
    metrics.two_stage_ranks(cand, exact, np.array([[1, 3]]), np.array([[2, 4]]))


def test_shortlist_is_a_stable_top_k_of_the_dot_product():
  rng = np.random.default_rng(0)
  gallery = rng.integers(-1, 2, (300, 3)).astype(np.float32)     # many equal dot products
  queries = rng.integers(-1, 2, (270, 3)).astype(np.float32)     # > one block of 256
  targets = rng.integers(0, 300, (270, 2))
  cand, first_ranks = rerank.shortlist(queries, gallery, targets, 17)
  scores = queries @ gallery.T
  order = np.argsort(-scores, axis=1, kind="stable")
  np.testing.assert_array_equal(cand, order[:, :17])
  position = np.argsort(order, axis=1)
  np.testing.assert_array_equal(first_ranks, np.take_along_axis(position, targets, 1) + 1)


# ------------------------------------------------------------------ models at initialisation
@pytest.fixture(scope="module")
def contexts(tiny_data_dir):
  """{method: EvalContext} of freshly initialised models on the tiny data (no training)."""
  out = {}
  for method, model in SMALL.items():
    config = tiny_config(method, tiny_data_dir, **model)
    ds, m, _, _, state = loop.setup(config)
    out[method] = EvalContext(m, state_lib.variables_of(state), ds, "test", config.eval,
                              seed=config.seed)
  return out


def _settings(ctx, k, shortlist):
  settings = copy.deepcopy(ctx.settings)
  settings.rerank_k, settings.shortlist = k, shortlist
  return settings


def _two_stage_ctx(ctx, k, shortlist="own", first=None):
  return EvalContext(ctx.method, ctx.variables, ctx.dataset, ctx.split,
                     _settings(ctx, k, shortlist), seed=ctx.seed, shortlist=first)


@pytest.mark.parametrize("group,length_groups", [(1, 1), (14, 3)])
def test_pair_scores_equal_the_all_pairs_grid(contexts, group, length_groups):
  ctx = contexts["sgraf"]
  data = ctx.dataset.eval_data("test", 16)
  img = engine.encode_all(ctx.method, ctx.variables, data.image_batches(), "image")
  txt = engine.encode_all(ctx.method, ctx.variables, data.text_batches(), "text")
  grid = engine.score_all(ctx.method, ctx.variables, img, txt)
  rng = np.random.default_rng(group)
  for side, queries, gallery, full in (("image", img, txt, grid), ("text", txt, img, grid.T)):
    cand = rng.integers(0, full.shape[1], (full.shape[0], 7))         # repeats allowed
    got = engine.score_pairs(ctx.method, ctx.variables, queries, gallery, cand,
                             query_side=side, tile_queries=5, pairs_per_step=7 * group,
                             length_groups=length_groups)
    np.testing.assert_allclose(got, np.take_along_axis(full, cand, 1), rtol=1e-5, atol=1e-6)


def _exact(ctx):
  res = retrieval.evaluate(ctx)
  return res, ctx.scores


def _same_recalls(a, b):
  for d in ("i2t", "t2i"):
    for key in ("r1", "r5", "r10", "medr", "meanr"):
      assert a[d][key] == pytest.approx(b[d][key], abs=1e-9), (d, key)
  assert a["rsum"] == pytest.approx(b["rsum"], abs=1e-9)


def test_a_vsepp_shortlist_reranked_by_sgraf(contexts):
  sgraf, vsepp = contexts["sgraf"], contexts["vsepp"]
  exact, scores = _exact(sgraf)
  n_img, n_txt = scores.shape
  every = rerank.evaluate(_two_stage_ctx(sgraf, n_txt, "W_vsepp", vsepp))
  _same_recalls(every, exact)                       # K = every caption: the exact ranks
  assert every["rerank"]["pairs_scored"] == n_img * n_txt + n_txt * n_img
  # K = 4: 4 captions per image, 4 images per caption, ranked as the brute force ranks them.
  res = rerank.evaluate(_two_stage_ctx(sgraf, 4, "W_vsepp", vsepp))
  assert res["rerank"]["pairs_scored"] == n_img * 4 + n_txt * 4 == 288
  assert res["rerank"]["pairs_exact"] == n_img * n_txt
  assert res["rerank"]["pairs_ratio"] == pytest.approx(720 / 288)
  data = vsepp.dataset.eval_data("test", 16)
  vi = engine.encode_all(vsepp.method, vsepp.variables, data.image_batches(), "image")["emb"]
  vt = engine.encode_all(vsepp.method, vsepp.variables, data.text_batches(), "text")["emb"]
  first = vi @ vt.T
  i2t, t2i = (_brute_force(scores, first, 4, 5, d) for d in ("i2t", "t2i"))
  want = metrics.summarize_ranks(i2t, t2i)
  _same_recalls(res, want)
  assert res["i2t"]["beyond_k"] == pytest.approx(100 * np.mean(i2t > 4))
  assert res["t2i"]["beyond_k"] == pytest.approx(100 * np.mean(t2i > 4))


@pytest.mark.parametrize("method", ["mmca", "pcme", "vsepp"])
def test_own_global_term_shortlist(contexts, method):
  ctx = contexts[method]
  exact, scores = _exact(ctx)
  _same_recalls(rerank.evaluate(_two_stage_ctx(ctx, scores.shape[1], "own")), exact)
  if method == "vsepp":    # the first stage is the score itself: exact ranks at any K
    _same_recalls(rerank.evaluate(_two_stage_ctx(ctx, 3, "own")), exact)


def test_coco1k_folds_shortlist_and_score_within_each_fold(contexts, monkeypatch):
  """coco1k, shrunk to 2 folds of 6 images: each fold alone, averaged as metrics does."""
  ctx = contexts["vsepp"]
  _, scores = _exact(ctx)
  want = metrics.evaluate(scores, k=5, protocol="coco1k", fold_size=6, num_folds=2)
  real = metrics.protocol_folds
  monkeypatch.setattr(metrics, "protocol_folds",
                      lambda n, k, protocol: real(n, k, protocol, fold_size=6, num_folds=2))
  settings = _settings(ctx, 30, "own")
  settings.protocol = "coco1k"
  res = rerank.evaluate(EvalContext(ctx.method, ctx.variables, ctx.dataset, ctx.split,
                                    settings, seed=ctx.seed))
  _same_recalls(res, want)
  assert res["rerank"]["pairs_exact"] == 2 * 6 * 30
  assert res["rerank"]["pairs_scored"] == 2 * (6 * 30 + 30 * 6)


def test_a_shortlist_that_cannot_serve_is_one_clear_error(contexts, tiny_data_dir, tmp_path):
  sgraf, vsepp = contexts["sgraf"], contexts["vsepp"]
  with pytest.raises(ConfigError, match="sgraf has no dot-product global term"):
    rerank.evaluate(_two_stage_ctx(sgraf, 4, "own"))
  with pytest.raises(ConfigError, match="its method sgraf has no dot-product embedding"):
    rerank.evaluate(_two_stage_ctx(vsepp, 4, "W_sgraf", sgraf))
  other = synthetic.generate(str(tmp_path / "other"), seed=1, n_train=48, n_dev=12, n_test=12,
                             pixels=True)          # same shapes, other captions and features
  config = tiny_config("vsepp", other, **SMALL["vsepp"])
  ds, m, _, _, state = loop.setup(config)
  elsewhere = EvalContext(m, state_lib.variables_of(state), ds, "test", config.eval)
  with pytest.raises(InputError, match="shortlist workdir W_other does not evaluate the data "
                                       "of the evaluated workdir: location: .*captions: "):
    rerank.evaluate(_two_stage_ctx(sgraf, 4, "W_other", elsewhere))
  config = tiny_config("sgraf", tiny_data_dir, **SMALL["sgraf"])   # caught before training
  config.eval.rerank_k, config.eval.shortlist = 4, "own"
  with pytest.raises(ConfigError, match="sgraf has no dot-product global term"):
    loop.setup(config)


@pytest.mark.parametrize("k,shortlist,match", [
    (5, "", "rerank_k=5 needs config.eval.shortlist"),
    (0, "own", "shortlist='own' is set but config.eval.rerank_k=0"),
    (-1, "own", "rerank_k=-1 must be an integer >= 0"),
    (5, "/nonexistent/w", "not a trained xmr_jax workdir"),
])
def test_inconsistent_settings_are_config_errors(tiny_data_dir, k, shortlist, match):
  from xmr_jax.training import config_check
  config = tiny_config("vsepp", tiny_data_dir)
  config.eval.rerank_k, config.eval.shortlist = k, shortlist
  with pytest.raises(ConfigError, match=match):
    config_check.check_config(config)


def test_sweeps_are_evaluated_exactly(tiny_data_dir, tmp_path):
  config = tiny_config("vsepp", tiny_data_dir)
  config.eval.rerank_k, config.eval.shortlist = 5, "own"
  with pytest.raises(ConfigError, match="a sweep evaluates every variant"):
    sweep.run_sweep(config, str(tmp_path / "s"))
  assert not os.path.exists(tmp_path / "s")


# ------------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def cli_workdir(tiny_data_dir, tmp_path_factory):
  """A VSE++ workdir trained for one step from the command line (its preset), and the flags
  that evaluate it."""
  w = str(tmp_path_factory.mktemp("rerank_cli") / "w")
  flags = ["--config=configs/vsepp.py:runlocal", "--config.data.name=precomp",
           f"--config.data.dir={tiny_data_dir}", "--config.train.batch_size=8",
           f"--workdir={w}"]
  out = run_cli(*flags, "--config.train.num_steps=1")
  assert out.returncode == 0, out.stderr[-2000:]
  return w, flags


def test_cli_records_the_dtype_auto_chose(cli_workdir):
  """The preset's model.dtype=auto lands in config.json as the dtype that ran (conftest pins
  auto to float32 on every machine)."""
  w, _ = cli_workdir
  assert json.load(open(os.path.join(w, "config.json")))["model"]["dtype"] == "float32"


def test_cli_two_stage_with_its_own_score_equals_exact(cli_workdir):
  w, flags = cli_workdir
  exact = json.load(open(os.path.join(w, "eval", "results.json")))
  for shortlist in ("own", w):           # the workdir's own embedding, either way
    out = run_cli(*flags, "--mode=eval", "--config.eval.rerank_k=3",
                  f"--config.eval.shortlist={shortlist}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "retrieval_examples (which read one) do not run" in out.stderr
    res = json.load(open(os.path.join(w, "eval", rerank.RESULTS)))
    _same_recalls(res, exact)
    assert res["rerank"]["pairs_scored"] == 12 * 3 + 60 * 3
    assert "pairs scored 216 of 720 (3.3x fewer)" in out.stdout
    os.remove(os.path.join(w, "eval", rerank.RESULTS))


@pytest.mark.parametrize("extra,needle", [
    (["--config.eval.rerank_k=5"], "rerank_k=5 needs config.eval.shortlist"),
    (["--config.eval.shortlist=own"], "is set but config.eval.rerank_k=0"),
    (["--config.eval.rerank_k=4", "--config.eval.shortlist=/nonexistent/w"],
     "not a trained xmr_jax workdir"),
])
def test_cli_bad_two_stage_settings_lose_nothing(cli_workdir, extra, needle):
  w, flags = cli_workdir
  before = open(os.path.join(w, "eval", "results.json")).read()
  assert_one_message(run_cli(*flags, "--mode=eval", *extra), needle)
  assert open(os.path.join(w, "eval", "results.json")).read() == before
  assert not os.path.exists(os.path.join(w, "eval", rerank.RESULTS))


def test_cli_ensemble_refuses_two_stage(cli_workdir, tmp_path):
  w, flags = cli_workdir
  out = run_cli(flags[0], "--mode=eval", f"--ensemble={w},{w}x", "--config.eval.rerank_k=4",
                f"--workdir={tmp_path / 'ens'}")
  assert_one_message(out, "two-stage ranking (--config.eval.rerank_k) is for one workdir")
  assert not os.path.exists(tmp_path / "ens")
