"""The evaluation engine: tiled all-pairs scoring equals one big call; eval mode; optimiser."""
import dataclasses
import json
import os

import numpy as np
import pytest

from conftest import tiny_config
from xmr_jax.common.errors import WorkdirError
from xmr_jax.evaluation import engine
from xmr_jax.training import loop, state as state_lib, workdirs


@pytest.fixture(scope="module")
def encoded(tiny_data_dir):
  config = tiny_config("vsepp", tiny_data_dir, embed_dim=16, word_dim=8)
  ds, method, tx, hparams, state = loop.setup(config)
  variables = {"params": state["params"]}
  data = ds.eval_data("test", 5)   # batch 5: the last batch of 12 images is padded
  img = engine.encode_all(method, variables, data.image_batches(), "image")
  txt = engine.encode_all(method, variables, data.text_batches(), "text")
  return config, ds, method, variables, img, txt


def test_encode_covers_every_item_once(encoded):
  _, _, _, _, img, txt = encoded
  assert img["emb"].shape == (12, 16) and txt["emb"].shape == (60, 16)


@pytest.mark.parametrize("tiles", [(5, 7), (12, 60), (1, 64), (8, 16)])
def test_tiled_scores_equal_untiled(encoded, tiles):
  _, _, method, variables, img, txt = encoded
  full = engine.score_untiled(method, variables, img, txt)
  tiled = engine.score_all(method, variables, img, txt, tile_images=tiles[0], tile_texts=tiles[1])
  assert tiled.shape == (12, 60)
  np.testing.assert_allclose(tiled, full, rtol=1e-6, atol=1e-6)


def test_encoding_in_other_batch_sizes_gives_the_same_reprs(encoded):
  config, ds, method, variables, img, _ = encoded
  again = engine.encode_all(method, variables, ds.eval_data("test", 12).image_batches(), "image")
  np.testing.assert_allclose(again["emb"], img["emb"], rtol=1e-5, atol=1e-6)


def test_eval_mode_writes_results_for_a_trained_workdir(tiny_data_dir, tmp_path):
  config = tiny_config("vsepp", tiny_data_dir, embed_dim=16, word_dim=8)
  config.train.num_steps = 2
  workdir = str(tmp_path / "w")
  trained = loop.train_and_evaluate(config, workdir)
  os.remove(os.path.join(workdir, "eval", "results.json"))
  again = workdirs.evaluate_workdir(config, workdir)
  with open(os.path.join(workdir, "eval", "results.json")) as f:
    written = json.load(f)
  assert written["rsum"] == pytest.approx(trained["rsum"]) == pytest.approx(again["rsum"])
  for name in ("curves.png", "retrieval_examples.png"):
    assert os.path.getsize(os.path.join(workdir, "plots", name)) > 1000
  assert "pmrp" in written and 0 <= written["pmrp"]["i2t"] <= 100
  # From the command line, --mode=eval needs no --config: the workdir's config.json is used.
  import subprocess, sys
  os.remove(os.path.join(workdir, "eval", "results.json"))
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-m", "xmr_jax.main", "--mode=eval",
                        f"--workdir={workdir}"], cwd=repo, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-2000:]
  with open(os.path.join(workdir, "eval", "results.json")) as f:
    assert json.load(f)["rsum"] == pytest.approx(trained["rsum"])


def test_eval_mode_without_checkpoint_is_a_clear_error(tiny_data_dir, tmp_path):
  config = tiny_config("vsepp", tiny_data_dir, embed_dim=16, word_dim=8)
  with pytest.raises(WorkdirError, match="no checkpoint"):
    workdirs.evaluate_workdir(config, str(tmp_path / "empty"))


def test_sgd_with_weight_decay_follows_the_l2_gradient():
  import ml_collections
  t = ml_collections.ConfigDict(dict(grad_clip=0.0, weight_decay=0.5, optimizer="sgd",
                                     momentum=0.0))
  tx = state_lib.make_optimizer(t)
  params = {"w": np.array([2.0], np.float32)}
  st = tx.init(params)
  *head, inject = st
  st = (*head, inject._replace(hyperparams=dict(inject.hyperparams, learning_rate=0.1)))
  updates, _ = tx.update({"w": np.array([1.0], np.float32)}, st, params)
  # grad of loss + 0.5 * ||w||^2 is 1 + 2 * 0.5 * 2 = 3; SGD step -0.1 * 3
  np.testing.assert_allclose(updates["w"], [-0.3], rtol=1e-6)


def test_ensemble_scores_are_the_mean_of_the_members(tiny_data_dir, tmp_path):
  from xmr_jax.evaluation import metrics
  members = []
  for seed in (0, 1):
    config = tiny_config("vsepp", tiny_data_dir, embed_dim=16, word_dim=8)
    config.train.num_steps = 2
    config.seed = seed
    members.append(str(tmp_path / f"m{seed}"))
    loop.train_and_evaluate(config, members[-1])
  ens = workdirs.evaluate_ensemble(members, str(tmp_path / "ens"))
  mean = sum(np.load(os.path.join(m, "eval", "test_scores.npy")) for m in members) / 2
  expected = metrics.evaluate(mean, k=5)
  assert ens["rsum"] == pytest.approx(expected["rsum"], abs=1e-4)
  assert ens["i2t"]["r1"] == pytest.approx(expected["i2t"]["r1"], abs=1e-4)
  with open(os.path.join(tmp_path, "ens", "eval", "results.json")) as f:
    assert json.load(f)["members"] == members


def test_unclipped_params_skip_global_norm_clipping():
  import ml_collections
  t = ml_collections.ConfigDict(dict(grad_clip=1.0, weight_decay=0.0, optimizer="sgd",
                                     momentum=0.0))
  tx = state_lib.make_optimizer(t, unclipped=("a",))
  params = {"a": np.array([0.0], np.float32), "enc": {"w": np.array([0.0, 0.0], np.float32)}}
  st = tx.init(params)
  *head, inject = st
  st = (*head, inject._replace(hyperparams=dict(inject.hyperparams, learning_rate=1.0)))
  grads = {"a": np.array([10.0], np.float32), "enc": {"w": np.array([3.0, 4.0], np.float32)}}
  updates, _ = tx.update(grads, st, params)
  np.testing.assert_allclose(updates["a"], [-10.0], rtol=1e-6)            # not clipped
  np.testing.assert_allclose(updates["enc"]["w"], [-0.6, -0.8], rtol=1e-6)  # norm 5 -> 1


def test_length_groups_trim_padding_and_keep_scores(tiny_data_dir):
  """SGRAF captions scored in length groups (padding trimmed per group, to a multiple of
  LENGTH_STEP) = one padded grid."""
  config = tiny_config("sgraf", tiny_data_dir, embed_dim=8, word_dim=6, sim_dim=6)
  ds, method, _, _, state = loop.setup(config)
  variables = state_lib.variables_of(state)
  data = ds.eval_data("test", 16)
  img = engine.encode_all(method, variables, data.image_batches(), "image")
  txt = engine.encode_all(method, variables, data.text_batches(), "text")
  lengths = txt["mask"].sum(1)
  groups = engine.group_by_length(method, txt, 3, multiple=7)
  assert len(groups) >= 2
  np.testing.assert_array_equal(np.sort(np.concatenate([i for i, _ in groups])), np.arange(60))
  for idx, sub in groups:
    # each group's longest caption, rounded up to LENGTH_STEP words (at most the padded width)
    step = engine.LENGTH_STEP
    assert sub["local"].shape[1] == sub["mask"].shape[1] == min(
        -(-lengths[idx].max() // step) * step, txt["mask"].shape[1])
    np.testing.assert_array_equal(sub["glo"], txt["glo"][idx])
  assert groups[0][1]["mask"].shape[1] < txt["mask"].shape[1]       # padding was trimmed
  full = engine.score_all(method, variables, img, txt, tile_images=5, tile_texts=7)
  grouped = engine.score_all(method, variables, img, txt, tile_images=5, tile_texts=7,
                             length_groups=3)
  np.testing.assert_allclose(grouped, full, rtol=1e-6, atol=1e-6)
  # Methods without a declared padded axis are left as one group.
  plain = dataclasses.replace(method, text_padding=None)
  assert len(engine.group_by_length(plain, txt, 3)) == 1
