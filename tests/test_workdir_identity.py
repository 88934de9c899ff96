"""A trained workdir is self-contained: it keeps its tokenizer and its data's fingerprint, and
the command line refuses a config, an ensemble or a vocabulary it cannot honour (exit 2, one
line, nothing in the workdir changed)."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import assert_one_message, run_cli, tiny_config
from xmr_jax import training
from xmr_jax.common.errors import InputError
from xmr_jax.data import datasets, synthetic, tokenizers
from xmr_jax.training import identity, workdirs

K = 5


_cli, _assert_one_message = run_cli, assert_one_message


def _snapshot(root):
  """Every file under ``root`` with its size and modification time."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      st = os.stat(os.path.join(dirpath, name))
      out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns)
  return out


def _reorder_train(src, dst, seed=0):
  """A copy of dataset ``src`` whose training split lists the same images and captions in
  another order (each image keeps its own captions)."""
  shutil.copytree(src, dst)
  n = np.load(os.path.join(src, "train_ims.npy"), mmap_mode="r").shape[0]
  perm = np.random.default_rng(seed).permutation(n)
  rows = (perm[:, None] * K + np.arange(K)).ravel()
  for name in os.listdir(src):
    path = os.path.join(src, name)
    if not name.startswith("train_"):
      continue
    if name.endswith(".npy"):
      a = np.load(path)
      np.save(os.path.join(dst, name), a[perm] if a.shape[0] == n else a[rows])
    else:
      lines = open(path, encoding="utf-8").read().splitlines()
      with open(os.path.join(dst, name), "w", encoding="utf-8") as f:
        f.write("\n".join(lines[i] for i in rows) + "\n")
  return dst


def _config_file(tmp_path, config):
  """A config file the CLI can load that gives exactly ``config``."""
  data = tmp_path / "config.json"
  data.write_text(json.dumps(config.to_dict()))
  path = tmp_path / "cfg.py"
  path.write_text("import json\nimport ml_collections\n\n\ndef get_config(arg=None):\n"
                  f"  return ml_collections.ConfigDict(json.load(open({str(data)!r})))\n")
  return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("identity")
  return synthetic.generate(str(root / "data"), seed=0, n_train=48, n_dev=12, n_test=12,
                            pixels=False)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
  """(config, workdir, results) of a word-vocabulary VSE++ run on ``data``."""
  c = tiny_config("vsepp", data, embed_dim=16, word_dim=8)
  c.data.tokenizer = "word"
  c.evals = ("retrieval",)
  workdir = str(tmp_path_factory.mktemp("identity_w") / "w")
  results = training.train_and_evaluate(c, workdir)
  return c, workdir, results


def test_the_workdir_stores_its_tokenizer_and_data_fingerprint(trained, data):
  c, w, _ = trained
  record = json.load(open(os.path.join(w, "data.json")))
  assert record["tokenizer"]["kind"] == "word"
  stored = tokenizers.load_tokenizer(os.path.join(w, "inputs"), record["tokenizer"])
  assert stored.word2idx == datasets.open_dataset(c.data).tokenizer.word2idx
  assert set(record["splits"]) == {"train", "dev", "test"}
  assert record["splits"]["train"]["feature_shape"] == list(
      np.load(os.path.join(data, "train_ims.npy"), mmap_mode="r").shape[1:])


def test_eval_on_a_reordered_training_split_uses_the_stored_tokenizer(trained, data, tmp_path):
  c, w, results = trained
  moved = _reorder_train(data, str(tmp_path / "reordered"))
  rebuilt = tokenizers.WordVocab.build(
      open(os.path.join(moved, "train_caps.txt")).read().splitlines()
      + open(os.path.join(moved, "dev_caps.txt")).read().splitlines())
  stored = datasets.open_dataset(c.data).tokenizer
  # The premise: rebuilding from the re-saved split moves word ids.
  assert rebuilt.word2idx != stored.word2idx and set(rebuilt.word2idx) == set(stored.word2idx)
  scores = np.load(os.path.join(w, "eval", "test_scores.npy"))
  out = _cli(f"--config={_config_file(tmp_path, c)}", f"--config.data.dir={moved}",
             "--mode=eval", f"--workdir={w}")
  assert out.returncode == 0, out.stderr[-2000:]
  np.testing.assert_array_equal(np.load(os.path.join(w, "eval", "test_scores.npy")), scores)
  res = json.load(open(os.path.join(w, "eval", "results.json")))
  assert res["rsum"] == pytest.approx(results["rsum"])
  assert res["data"]["location"] == os.path.abspath(moved)
  assert "not trained with" not in out.stderr      # the test split is the same data


def test_eval_on_other_data_is_announced_and_recorded(trained, tmp_path, capsys):
  c, w, _ = trained
  other = synthetic.generate(str(tmp_path / "other"), seed=3, n_train=48, n_dev=12, n_test=12,
                             pixels=False)
  c2 = c.copy_and_resolve_references()
  c2.data.dir = other
  out = workdirs.evaluate_workdir(c2, w)
  err = capsys.readouterr().err
  assert f"evaluating {w} on data it was not trained with: {other} split 'test' " \
         "(it differs in captions, features)" in err
  assert out["data"]["location"] == os.path.abspath(other)
  assert json.load(open(os.path.join(w, "eval", "results.json")))["data"]["location"] == \
      os.path.abspath(other)
  workdirs.evaluate_workdir(c, w)      # back to its own data: nothing announced
  assert "not trained with" not in capsys.readouterr().err


def test_eval_on_features_of_another_dimension_is_refused_before_the_checkpoint(trained,
                                                                                 tmp_path):
  c, w, _ = trained
  other = synthetic.generate(str(tmp_path / "wide"), seed=0, n_train=48, n_dev=12, n_test=12,
                             pixels=False)
  for split in ("train", "dev", "test"):          # the same data with 8 more feature columns
    ims = np.load(os.path.join(other, f"{split}_ims.npy"))
    np.save(os.path.join(other, f"{split}_ims.npy"),
            np.concatenate([ims, np.zeros(ims.shape[:2] + (8,), ims.dtype)], -1))
  c2 = c.copy_and_resolve_references()
  c2.data.dir = other
  before = _snapshot(w)
  with pytest.raises(InputError, match=r"trained on \d+-dimensional region features; .* has "
                                       r"\d+-dimensional ones"):
    workdirs.evaluate_workdir(c2, w)
  assert _snapshot(w) == before


def test_resume_on_other_training_data_is_refused(trained, data, tmp_path):
  c, w, _ = trained
  copy = str(tmp_path / "w")
  shutil.copytree(w, copy)
  c2 = c.copy_and_resolve_references()
  c2.data.dir = _reorder_train(data, str(tmp_path / "reordered"))
  before = _snapshot(copy)
  with pytest.raises(InputError, match=r"was trained on other data .*split 'train' differs in "
                                       r"captions, features.*Use a new workdir"):
    training.train_and_evaluate(c2, copy)
  assert _snapshot(copy) == before


def test_cli_config_the_checkpoint_cannot_serve(trained, tmp_path):
  c, w, _ = trained
  before = _snapshot(w)
  wider = c.copy_and_resolve_references()
  wider.model.embed_dim = 32
  out = _cli(f"--config={_config_file(tmp_path, wider)}", "--mode=eval", f"--workdir={w}")
  _assert_one_message(out, "model.embed_dim: stored 16, new 32",
                      "Use a new workdir or the config")
  out = _cli("--config=configs/pcme.py:runlocal", f"--workdir={w}")       # a rerun, method changed
  _assert_one_message(out, "method: stored 'vsepp', new 'pcme'")
  assert _snapshot(w) == before
  # Keys that change neither shapes nor data may differ (more steps, other evaluation tiles).
  longer = c.copy_and_resolve_references()
  longer.train.num_steps = 100
  longer.eval.tile_texts = 8
  identity.check_config(longer, w, "train")


def test_cli_workdir_without_its_tokenizer(trained, tmp_path):
  c, w, results = trained
  old = str(tmp_path / "old")
  shutil.copytree(w, old)
  os.remove(os.path.join(old, "data.json"))
  shutil.rmtree(os.path.join(old, "inputs"))
  before = _snapshot(old)
  out = _cli("--mode=eval", f"--workdir={old}")
  _assert_one_message(out, "holds a checkpoint but not the tokenizer", "--rebuild_tokenizer")
  assert _snapshot(old) == before
  out = _cli("--mode=eval", f"--workdir={old}", "--rebuild_tokenizer")
  assert out.returncode == 0, out.stderr[-2000:]
  assert os.path.isfile(os.path.join(old, "data.json"))
  assert json.load(open(os.path.join(old, "eval", "results.json")))["rsum"] == \
      pytest.approx(results["rsum"])


def test_cli_ensemble_overrides_and_members(trained, tmp_path):
  c, w, _ = trained
  config_file = _config_file(tmp_path, c)
  twin = str(tmp_path / "twin")
  shutil.copytree(w, twin)               # an equal second member
  out = _cli("--mode=eval", f"--ensemble={w},{w}", f"--workdir={tmp_path / 'ens'}")
  _assert_one_message(out, "more than once")
  out = _cli("--mode=eval", f"--ensemble={w},{twin}", f"--workdir={w}")
  _assert_one_message(out, "is also an ensemble member")
  out = _cli(f"--config={config_file}", "--config.train.num_steps=3", "--mode=eval",
             f"--ensemble={w},{twin}", f"--workdir={tmp_path / 'ens'}")
  _assert_one_message(out, "not --config.train.num_steps")
  assert "overrides apply" not in out.stderr          # the error is the only thing said
  assert not os.path.exists(tmp_path / "ens")
  out = _cli("--mode=eval", f"--workdir={w}", "--config.eval.split=dev")   # no --config
  _assert_one_message(out, "--config.<key> overrides need --config=FILE")
  res = workdirs.evaluate_ensemble([w, twin], str(tmp_path / "ens"),
                                   overrides={"eval.split": "dev"})
  assert res["split"] == "dev"
  on_dev = c.copy_and_resolve_references()
  on_dev.eval.split = "dev"
  own = workdirs.evaluate_workdir(on_dev, w)
  assert res["rsum"] == pytest.approx(own["rsum"])       # the mean of two equal members


def test_cli_word_vocabulary_of_unknown_words(tmp_path):
  """Captions without spaces (Chinese) under the word tokenizer: every caption would be
  [<start>, <unk>, <end>]."""
  src = synthetic.generate(str(tmp_path / "zh"), seed=0, n_train=48, n_dev=12, n_test=12,
                           pixels=False)
  rng = np.random.default_rng(0)
  chars = "一只狗在草地上奔跑两个人骑着自行车穿过街道红色的公共汽车停在路边"
  for split in ("train", "dev", "test"):
    n = len(open(os.path.join(src, f"{split}_caps.txt")).read().splitlines())
    lines = ["".join(rng.choice(list(chars), 12)) for _ in range(n)]
    (tmp_path / "zh" / f"{split}_caps.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  workdir = tmp_path / "w"
  out = _cli("--config=configs/vsepp.py:runlocal", f"--workdir={workdir}",
             "--config.data.name=precomp", f"--config.data.dir={src}",
             "--config.data.tokenizer=word")
  _assert_one_message(out, "maps 100% of the training words to <unk>",
                      "--config.data.tokenizer=sentencepiece")
  assert not workdir.exists()


def test_a_photo_folder_workdir_records_its_backbone(trained, data, tmp_path):
  c, _, _ = trained
  copy = str(tmp_path / "photos")
  shutil.copytree(data, copy)
  backbone = {"name": "efficientnet_lite1", "size": 240, "sha256": "77cc7160"}
  meta = json.load(open(os.path.join(copy, "meta.json")))
  json.dump(dict(meta, backbone=backbone), open(os.path.join(copy, "meta.json"), "w"))
  c2 = c.copy_and_resolve_references()
  c2.data.dir = copy
  identity.save(str(tmp_path / "w"), datasets.open_dataset(c2.data))
  assert json.load(open(tmp_path / "w" / "data.json"))["backbone"] == backbone
  identity.save(str(tmp_path / "w2"), datasets.open_dataset(c.data))    # synthetic: none
  assert "backbone" not in json.load(open(tmp_path / "w2" / "data.json"))


def test_paths_are_stored_absolute_and_old_relative_ones_compare_resolved(tmp_path,
                                                                          monkeypatch):
  """config.json keeps data paths absolute (search and --mode=eval from any directory); a
  workdir that stored a relative path still resumes from the directory it was trained in."""
  from xmr_jax.common.errors import ConfigError
  from xmr_jax.config_utils import base_config
  from xmr_jax.training import config_check
  monkeypatch.chdir(tmp_path)
  c = base_config("vsepp")
  c.data.dir, c.data.vocab_path, c.eval.shortlist = "data", "vocab.json", "own"
  config_check.absolute_paths(c)
  assert (c.data.dir, c.data.vocab_path) == (str(tmp_path / "data"), str(tmp_path / "vocab.json"))
  assert c.eval.shortlist == "own" and c.data.word_embeddings == ""
  workdir = tmp_path / "w"
  workdir.mkdir()
  stored = base_config("vsepp")
  stored.data.vocab_path = "vocab.json"          # written before paths were made absolute
  (workdir / "config.json").write_text(json.dumps(stored.to_dict()))
  identity.check_config(c, str(workdir), "train")
  c.data.vocab_path = str(tmp_path / "other.json")
  with pytest.raises(ConfigError, match="data.vocab_path: stored"):
    identity.check_config(c, str(workdir), "train")
