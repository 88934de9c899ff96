"""Bad input and silent wrong answers, each as a kind (the bad-input issue): options set but
not used, non-finite hyperparameters, messages, results that depended on a memory setting,
ensembles of incompatible members, and the CLI's one-line answer with exit status 2."""
import json
import os

import numpy as np
import pytest

from conftest import assert_one_message, run_cli, tiny_config
from xmr_jax import main as main_lib, training
from xmr_jax.common.errors import ConfigError, InputError
from xmr_jax.data import datasets, synthetic, tokenizers
from xmr_jax.evaluation import retrieval
from xmr_jax.evaluation.context import EvalContext
from xmr_jax.training import loop, state as state_lib, workdirs



_cli, _assert_one_message = run_cli, assert_one_message


# ------------------------------------------------------------------ 1. set but not used
def test_json_vocab_path_loads_the_word_vocabulary(tiny_data_dir, tmp_path, capsys):
  word2idx = {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "a": 4, "red": 5, "dog": 6}
  path = tmp_path / "vocab.json"
  path.write_text(json.dumps({"word2idx": word2idx, "idx2word": {v: k for k, v in
                                                                 word2idx.items()}}))
  c = tiny_config("vsepp", tiny_data_dir)
  c.data.vocab_path = str(path)          # data.tokenizer stays the default, sentencepiece
  ds = datasets.open_dataset(c.data)
  assert isinstance(ds.tokenizer, tokenizers.WordVocab)
  assert ds.tokenizer.encode("A red cat") == [1, 4, 5, 3, 2]
  assert "using data.tokenizer=word" in capsys.readouterr().err


def test_model_vocab_path_loads_that_sentencepiece_model(tiny_data_dir, tmp_path):
  c = tiny_config("vsepp", tiny_data_dir)
  built = datasets.open_dataset(c.data).tokenizer
  path = tmp_path / "spm.model"
  built.save(str(path))
  c.data.vocab_path = str(path)
  c.data.vocab_size = 7                  # would train another model if the path were ignored
  loaded = datasets.open_dataset(c.data).tokenizer
  assert loaded.vocab_size == built.vocab_size
  assert loaded.encode("a red dog left of a blue cube") == \
      built.encode("a red dog left of a blue cube")


@pytest.mark.parametrize("name", ["missing.json", "vocab.txt"])
def test_bad_vocab_path_names_the_key(tiny_data_dir, tmp_path, name):
  c = tiny_config("vsepp", tiny_data_dir)
  c.data.vocab_path = str(tmp_path / name)
  if name.endswith(".txt"):
    (tmp_path / name).write_text("a\n")
  with pytest.raises(ConfigError, match="config.data.vocab_path"):
    loop.setup(c)


def test_word_embeddings_path_must_exist(tiny_data_dir, tmp_path):
  c = tiny_config("vsepp", tiny_data_dir)
  c.data.word_embeddings = str(tmp_path / "glove.txt")
  with pytest.raises(ConfigError, match="config.data.word_embeddings=.*no such file"):
    loop.setup(c)


def test_unread_overrides_are_named():
  from configs import pcme, sgraf, vsepp
  from xmr_jax.training import config_check
  check = config_check.check_overrides
  with pytest.raises(ConfigError, match="train.momentum is set but not used: train.optimizer"):
    check(vsepp.get_config("runlocal"), {"train.momentum": 0.5})
  with pytest.raises(ConfigError, match="model.sgr_steps is set but not used"):
    check(sgraf.get_config("runlocal,variant=saf"), {"model.sgr_steps": 2})
  with pytest.raises(ConfigError, match="model.pixel_dim .*image_input='regions'"):
    check(pcme.get_config("runlocal"), {"model.pixel_dim": 4})
  c = vsepp.get_config("runlocal")
  c.data.name = "precomp"
  with pytest.raises(ConfigError, match="data.synthetic.n_train is set but not used"):
    check(c, {"data.synthetic.n_train": 10})
  c = vsepp.get_config("runlocal")
  c.data.tokenizer = "word"
  with pytest.raises(ConfigError, match="data.vocab_size is set but not used"):
    check(c, {"data.vocab_size": 10})
  # What the path reads passes.
  check(sgraf.get_config("runlocal"), {"model.sgr_steps": 2, "hparams.margin": 0.1})
  c = vsepp.get_config("runlocal")
  c.train.optimizer = "sgd"
  check(c, {"train.momentum": 0.5, "train.optimizer": "sgd"})


# ------------------------------------------------------------- 6. hyperparameters, messages
def test_prefetch_below_one_is_a_config_error(tiny_data_dir):
  c = tiny_config("vsepp", tiny_data_dir)
  c.train.prefetch = 0
  with pytest.raises(ConfigError, match=r"config.train.prefetch=0 must be a finite number > 0"):
    loop.setup(c)


@pytest.mark.parametrize("key,value,match", [
    ("learning_rate", float("nan"), "config.hparams.learning_rate=nan is not a finite number"),
    ("learning_rate", 0.0, "config.hparams.learning_rate=0 must be > 0"),
    ("margin", float("inf"), "config.hparams.margin=inf is not a finite number"),
    ("margin", -0.2, "config.hparams.margin=-0.2 must be >= 0")])
def test_bad_hparams_are_config_errors(tiny_data_dir, key, value, match):
  c = tiny_config("vsepp", tiny_data_dir)
  c.hparams[key] = value
  with pytest.raises(ConfigError, match=match):
    loop.setup(c)


@pytest.mark.parametrize("every,due", [(5, 5), (500, 6)])   # 6 steps: the last step saves
def test_divergence_before_any_checkpoint_says_none_was_saved(tiny_data_dir, tmp_path, every,
                                                              due):
  c = tiny_config("vsepp", tiny_data_dir, embed_dim=16, word_dim=8)
  c.train.checkpoint_every_steps = every
  original = loop.step_lib.make_train_step

  def poisoned(*args, **kwargs):
    fn = original(*args, **kwargs)
    return lambda state, batch, hp: fn(state, dict(batch, regions=batch["regions"] * np.nan), hp)
  loop.step_lib.make_train_step = poisoned
  try:
    with pytest.raises(training.TrainingDivergedError,
                       match=rf"at step 1 .*No checkpoint was saved yet \(the first would "
                             rf"have been written at step {due}\)"):
      training.train_and_evaluate(c, str(tmp_path / "w"))
  finally:
    loop.step_lib.make_train_step = original
  assert not os.path.exists(tmp_path / "w" / "checkpoints") or \
      not os.listdir(tmp_path / "w" / "checkpoints")


# --------------------------------------------------------- 4. results independent of memory
def test_sampled_evaluation_does_not_depend_on_batch_size(tiny_data_dir):
  """PCME's Monte-Carlo scores: every draw keyed by the item's index, not its batch."""
  c = tiny_config("pcme", tiny_data_dir, embed_dim=16, word_dim=8, num_samples=3)
  ds, method, _, _, state = loop.setup(c)
  assert method.samples_at_eval
  variables = state_lib.variables_of(state)
  runs = {}
  for seed, batch_size in ((0, 16), (0, 5), (0, 7), (1, 16)):
    c.eval.encode_batch_size = batch_size
    ctx = EvalContext(method, variables, ds, "test", c.eval, seed=seed)
    retrieval.evaluate(ctx)
    runs[seed, batch_size] = ctx.scores
  for batch_size in (5, 7):
    np.testing.assert_allclose(runs[0, batch_size], runs[0, 16], rtol=1e-6, atol=1e-7)
  assert not np.allclose(runs[1, 16], runs[0, 16])     # the samples really are random


# ------------------------------------------------------------------- 5. ensemble members
def test_ensemble_of_members_on_different_data_is_refused(tiny_data_dir, tmp_path):
  other = synthetic.generate(str(tmp_path / "other"), seed=1, n_train=48, n_dev=12, n_test=12,
                             pixels=True)          # same shapes, other captions and features
  members = []
  for name, data in (("a", tiny_data_dir), ("b", other)):
    c = tiny_config("vsepp", data, embed_dim=16, word_dim=8)
    c.train.num_steps = 1
    c.evals = ("retrieval",)
    members.append(str(tmp_path / name))
    training.train_and_evaluate(c, members[-1])
  with pytest.raises(InputError, match=r"ensemble member .*/b does not evaluate the data of "
                                       r"the first member .*/a: location: .*captions: "):
    workdirs.evaluate_ensemble(members, str(tmp_path / "ens"))
  assert not os.path.exists(tmp_path / "ens")


# ----------------------------------------------------------------------------- 9. the CLI
def test_cli_bad_input_is_one_message_exit_2_and_the_workdir_is_untouched(tiny_data_dir,
                                                                           tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("mine")
  data = ["--config.data.name=precomp", f"--config.data.dir={tiny_data_dir}"]
  cases = [
      (["--config.hparams.learning_rate=nan"], "config.hparams.learning_rate=nan"),
      (["--config.data.vocab_path=/nonexistent/vocab.json"], "config.data.vocab_path"),
      (["--config.train.momentum=0.5"], "--config.train.momentum is set but not used"),
      (["--config.train.no_such_key=3"], "no_such_key"),
      # a near miss names the key and ml_collections' suggestion, in plain words
      (["--config.train.batch_sise=3"],
       "does not have: 'batch_sise' (did you mean 'batch_size'?)"),
      (["--mode=eval", "--config.train.batch_size=8"], "holds no checkpoint"),
      (["--config.train.batch_size=64"], "batch_size 64 exceeds the 48 images"),
  ]
  for extra, needle in cases:
    out = _cli("--config=configs/vsepp.py:runlocal", f"--workdir={workdir}", *data, *extra)
    _assert_one_message(out, needle)
    assert sorted(os.listdir(workdir)) == ["notes.txt"], extra
  _assert_one_message(_cli("--config=configs/vsepp.py:runlocal,bogus=1", f"--workdir={workdir}"),
                      "bogus")
  for method in ("vsepp", "pcme", "sgraf", "defrag", "mmca"):    # a typo'd preset argument
    _assert_one_message(_cli(f"--config=configs/{method}.py:data=imags",
                             f"--workdir={workdir}"), "unknown data='imags'", "|photos)")
  _assert_one_message(_cli(f"--workdir={workdir}"), "--config is required")


def test_bugs_keep_their_traceback(monkeypatch):
  def bug(argv):
    raise RuntimeError("a bug")
  monkeypatch.setattr(main_lib, "run", bug)
  with pytest.raises(RuntimeError, match="a bug"):
    main_lib.main(["xmr_jax"])

  def user_error(argv):
    raise ConfigError("config.x=1 is wrong")
  monkeypatch.setattr(main_lib, "run", user_error)
  with pytest.raises(SystemExit) as exit_info:
    main_lib.main(["xmr_jax"])
  assert exit_info.value.code == 2
