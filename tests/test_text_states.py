"""A frozen text tower's token vectors computed once per caption (``model.text_cache``,
xmr_jax/data/text_states.py): batches carry them as ``text_states`` and every kind of model
reads them in place of running the tower with the same result; they equal the tower's own
output token for token (after ``data.max_caption_len`` cuts); the file is written once and
read back; fine-tuned towers and ``text_cache=false`` carry none; the multi-host pad pads
them with the tokens."""
import jax
import numpy as np
import pytest

from test_text_towers import minilm_config, needs_tower
from xmr_jax.common import mesh as mesh_lib
from xmr_jax.common.errors import ConfigError
from xmr_jax.data import text_states
from xmr_jax.evaluation import engine
from xmr_jax.training import config_check, loop
from xmr_jax.training import step as step_lib


def _encode(method, state, batch):
  """The evaluation engine's text encoding of one batch (its own choice of batch keys)."""
  variables = {"params": state["params"], **({"batch_stats": state["batch_stats"]}
                                               if state.get("batch_stats") else {})}
  return engine.encode_all(method, variables, [dict(batch, valid=np.ones(len(batch["tokens"]),
                                                                          bool))], "text",
                           progress=False)


def _train_loss(method, tx, hparams, state, batch) -> float:
  """The loss the train step computes on ``batch`` (before its update)."""
  mesh = mesh_lib.train_mesh(1, 8)
  step = step_lib.make_train_step(method, tx, decay_steps=0, decay_factor=1.0,
                                  steps_per_epoch=1, mesh=mesh)
  fresh = jax.tree.map(np.array, state)    # the step donates its state
  _, metrics = step(mesh_lib.replicate(fresh, mesh), mesh_lib.global_batch(batch, mesh),
                    hparams)
  return float(metrics["loss"])


@needs_tower
@pytest.mark.parametrize("method", ["vsepp", "sgraf"])
def test_models_read_the_cached_vectors_as_if_they_ran_the_tower(tiny_data_dir, method):
  # vsepp pools the tower's vectors (as PCME and DeFrag read them: tower_states); sgraf maps
  # each word (TowerWords, as MMCA).
  config = minilm_config(method, tiny_data_dir, text_frozen=True)
  ds, m, tx, hparams, state = loop.setup(config)
  assert m.text_states == ("minilm", "float32")
  batch = ds.sample_batch(8)
  assert batch["text_states"].shape == batch["tokens"].shape + (384,)
  assert not np.any(batch["text_states"][~batch["token_mask"]])
  cached = _encode(m, state, batch)
  ran = _encode(m, state, {k: v for k, v in batch.items() if k != "text_states"})
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), cached, ran)
  # The vectors are what the model reads: other vectors give another encoding.
  shuffled = dict(batch, text_states=batch["text_states"][::-1].copy())
  moved = _encode(m, state, shuffled)
  assert max(float(np.abs(np.float32(a) - np.float32(b)).max())
             for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(ran))) > 1e-3
  if method != "vsepp":
    return    # the train step's choice of batch keys is the same for every method
  # The train step reads them too: same loss as running the tower, another with others.
  loss = lambda b: _train_loss(m, tx, hparams, state, b)
  np.testing.assert_allclose(loss(batch), loss({k: v for k, v in batch.items()
                                                if k != "text_states"}), rtol=1e-5)
  assert abs(loss(shuffled) - loss(batch)) > 1e-4


@needs_tower
def test_vectors_equal_the_tower_after_the_cut_and_are_stored_once(tiny_data_dir,
                                                                   monkeypatch):
  config = minilm_config("vsepp", tiny_data_dir, text_frozen=True)
  config.data.max_caption_len = 6
  ds, m, _, _, state = loop.setup(config)
  batch = ds.eval_data("test", 4).text_batches().__next__()
  tower = m.model.text_tower
  want = tower.apply({"params": state["params"]["text_tower"]}, batch["tokens"],
                     batch["token_mask"])
  mask = batch["token_mask"]
  assert mask.sum(1).max() == 6     # cut: the vectors follow the cut ids
  np.testing.assert_allclose(batch["text_states"][mask], np.asarray(want)[mask], atol=2e-5)

  def fail(*args, **kwargs):
    raise AssertionError("the stored vectors were computed again")
  monkeypatch.setattr(text_states, "token_states", fail)
  ds.use_text_states("minilm", "float32")    # read back from the cache folder
  again = ds.eval_data("test", 4).text_batches().__next__()
  np.testing.assert_array_equal(again["text_states"], batch["text_states"])


@needs_tower
def test_fine_tuned_or_uncached_towers_carry_no_vectors(tiny_data_dir):
  tuned = minilm_config("vsepp", tiny_data_dir, text_lr_scale=0.5)
  with pytest.raises(ConfigError, match="text_cache is set but not used: the tower is fine"):
    config_check.check_overrides(tuned, {"model.text_cache": False})
  for config in (tuned, minilm_config("vsepp", tiny_data_dir, text_frozen=True,
                                      text_cache=False)):
    ds, m, _, _, _ = loop.setup(config)
    assert m.text_states is None and "text_states" not in ds.sample_batch(8)
  # text_lr_scale=0 freezes as text_frozen does, so the vectors can be cached.
  ds, m, _, _, _ = loop.setup(minilm_config("vsepp", tiny_data_dir, text_lr_scale=0.0))
  assert m.text_states == ("minilm", "float32")


def test_the_store_is_keyed_by_tower_dtype_and_ids(tmp_path):
  flat, offsets = np.array([101, 7, 102, 101, 102]), np.array([0, 3, 5])
  path = text_states.states_path(str(tmp_path), "minilm", "float32", flat, offsets)
  assert path != text_states.states_path(str(tmp_path), "minilm", "bfloat16", flat, offsets)
  assert path != text_states.states_path(str(tmp_path), "e5_small", "float32", flat, offsets)
  assert path != text_states.states_path(str(tmp_path), "minilm", "float32", flat,
                                         np.array([0, 2, 5]))


def test_multi_host_pad_pads_the_vectors_with_the_tokens():
  batch = {"tokens": np.ones((2, 3), np.int32), "token_mask": np.ones((2, 3), bool),
           "text_states": np.ones((2, 3, 4), np.float32)}
  out = mesh_lib.pad_text_to(batch, 5)
  assert out["text_states"].shape == (2, 5, 4)
  assert not out["text_states"][:, 3:].any() and out["text_states"][:, :3].all()
