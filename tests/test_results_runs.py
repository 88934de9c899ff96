"""experiments/results_runs.py: the command of each kind of run, with ``--extra`` flags."""
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module():
  spec = importlib.util.spec_from_file_location(
      "results_runs", os.path.join(REPO, "experiments", "results_runs.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_extra_flags_go_to_training_runs_only(tmp_path):
  rr = _module()
  runs = rr.GROUPS["uitviic_finetune"]
  extra = ["--config.train.num_epochs=3", "--config.model.dtype=float32"]
  argv = rr._command(runs["vsepp_finetuned"], str(tmp_path), "vsepp_finetuned", [], extra)
  # The group's own cut (1 epoch) comes first; an --extra after it wins on the command line.
  assert argv[-3:] == extra + [f"--workdir={tmp_path / 'vsepp_finetuned'}"]
  assert "--config=configs/vsepp.py:data=photos,text=e5_small" in argv
  assert argv.index("--config.train.num_epochs=1") < argv.index(extra[0])
  # Scoring an ensemble trains nothing: no training flags reach it.
  ens = rr.GROUPS["coco_mini"]["sgraf_ensemble_minilm"]
  argv = rr._command(ens, str(tmp_path), "sgraf_ensemble_minilm", [], extra)
  assert not set(extra) & set(argv) and "--mode=eval" in argv
  # The ridge baseline is its own script on the extracted folder of a finished photo run.
  w = tmp_path / "vsepp_frozen"
  w.mkdir()
  (w / "data.json").write_text('{"splits": {"train": {"location": "/x/extracted"}}}')
  argv = rr._command(("ridge",), str(tmp_path), "ridge", ["vsepp_frozen"], extra)
  assert argv[0] == sys.executable and "--data_dir=/x/extracted" in argv
  assert not set(extra) & set(argv)


def test_frozen_control_has_the_fine_tuned_schedule():
  runs = _module().GROUPS["uitviic_finetune"]
  for m, cut in (("vsepp", "--config.train.num_epochs=1"), ("pcme", "--config.train.num_epochs=0.5")):
    tuned, control = runs[f"{m}_finetuned"], runs[f"{m}_frozen_same_steps"]
    assert cut in tuned and cut in control and "--config.train.batch_size=32" in control
    assert any("data=photos" in a for a in tuned) and any("data=images" in a for a in control)


def test_every_tower_of_a_group_has_saf_and_the_sgraf_ensemble():
  """SGR, SAF and their ensemble for each tower a group trains SGRAF with (GloVe included)."""
  rr = _module()
  for group, towers in (("coco_mini", ("gru", "glove", "minilm")),
                        ("uitviic", ("gru", "minilm", "e5_small"))):
    runs = rr.GROUPS[group]
    for tower in towers:
      assert runs[f"sgraf_ensemble_{tower}"] == ("ensemble", f"sgraf_{tower}",
                                                 f"sgraf_saf_{tower}")
      assert f"--config=configs/sgraf.py:data=images,variant=saf,text={tower}" in \
          runs[f"sgraf_saf_{tower}"]
