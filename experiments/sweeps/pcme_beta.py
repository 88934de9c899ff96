"""PCME ablation: the VIB weight beta (paper §4.3 / table of ablations; official 1e-5 on COCO).

Launch:
  python -m xmr_jax.main --config=experiments/sweeps/pcme_beta.py --workdir=W --mode=sweep
  python -m xmr_jax.main --config=experiments/sweeps/pcme_beta.py:runlocal \
      --workdir=/tmp/sweep_pcme --mode=sweep
Arguments: runlocal, data=synthetic|coco|cub (as configs/pcme.py), betas=0/1e-5/1e-4/1e-3
  ('/'-separated), seed=0.

All betas train as one vmapped program (``vib_beta`` is a key of config.hparams). PCME draws
Monte-Carlo samples, so variants with different betas also see different samples after the
first step (their parameters differ); the sampling key of a variant depends only on its seed.
"""
import ml_collections

from xmr_jax.config_utils import parse_arg
from xmr_jax.config_utils import config_path, load_config


def get_config(arg=None):
  a = parse_arg(arg, runlocal=False, data="synthetic", betas="0/1e-5/1e-4/1e-3", seed=0)
  c = load_config(config_path(__file__, "..", "..", "configs", "pcme.py"),
                  f"runlocal={a.runlocal},data={a.data}")
  c.sweep = ml_collections.ConfigDict(dict(variants=[
      dict(name=f"beta{b}", hparams=dict(vib_beta=float(b)), seed=a.seed)
      for b in a.betas.split("/")]))
  return c
