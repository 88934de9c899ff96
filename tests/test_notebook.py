"""The Colab notebook runs top to bottom on CPU (tiny sizes through its environment variables)."""
import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "experiments", "colab_tpu.ipynb")


def _tiny_overrides(data_dir: str) -> dict:
  return {"data.name": "precomp", "data.dir": data_dir, "data.vocab_size": 100,
          "model.embed_dim": 16, "model.word_dim": 8, "train.batch_size": 8,
          "train.num_steps": 3, "train.eval_every_epochs": 100, "train.log_every_steps": 1,
          "eval.encode_batch_size": 16, "eval.tile_images": 8, "eval.tile_texts": 16}


@pytest.fixture(scope="module")
def executed(tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("nb"))
  env = {"XMR_NOTEBOOK_CONFIG": "configs/vsepp.py:runlocal",
         "XMR_NOTEBOOK_SWEEP": "experiments/sweeps/vsepp_margin_seed.py:runlocal,margins=0.1/0.3,seeds=1",
         "XMR_NOTEBOOK_OVERRIDES": json.dumps(_tiny_overrides(tiny_data_dir)),
         "XMR_NOTEBOOK_WORKDIR": workdir, "JAX_PLATFORMS": "cpu"}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)   # the kernel inherits this process's environment
  try:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The venv's kernel ("python3" is this interpreter's ipykernel); cwd = the checkout, so the
    # install cell finds xmr_jax importable and skips pip.
    NotebookClient(nb, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": REPO}}).execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return nb, workdir


def _text(nb) -> str:
  return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))


def test_notebook_trains_shows_results_and_sweeps(executed):
  nb, workdir = executed
  text = _text(nb)
  assert "backend: cpu" in text
  assert "R@1" in text and "rsum" in text            # the results table was printed
  with open(os.path.join(workdir, "train", "eval", "results.json")) as f:
    assert json.load(f)["method"] == "vsepp"
  images = [o for c in nb.cells for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert len(images) >= 3                            # curves, retrieval examples, sweep bars
  with open(os.path.join(workdir, "sweep", "sweep_results.json")) as f:
    rows = json.load(f)
  assert [r["hparams"]["margin"] for r in rows] == pytest.approx([0.1, 0.3])


def test_install_cell_skips_pip_when_importable(executed):
  nb, _ = executed
  assert "xmr_jax from" in _text(nb)
  assert not any("Successfully installed" in o.get("text", "")
                 for c in nb.cells for o in c.get("outputs", []))
