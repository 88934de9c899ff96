"""DeFrag ablation: global-objective weight beta (eq. 9, ``global_weight``) x smoothing n (eq. 8).

beta is a swept scalar (config.hparams.global_weight), so the betas of one smoothing value
train as one vmapped program. The smoothing n is a static model setting (``score`` runs at
evaluation without hparams), so each extra n is a ``sequential`` group run after the first,
itself vmapped over the betas.

Launch:
  python -m xmr_jax.main --config=experiments/sweeps/defrag_beta.py --workdir=W --mode=sweep
  python -m xmr_jax.main --config=experiments/sweeps/defrag_beta.py:runlocal \
      --workdir=/tmp/sweep_defrag --mode=sweep
Arguments: runlocal, data=synthetic|f30k, betas=0.25/0.5/1 ('/'-separated; DriverSetParams.m
  gscale = 0.5), smoothings=5/20 (extra n values besides the config's 10; '' for none), seed=0.
"""
import ml_collections

from xmr_jax.config_utils import parse_arg
from xmr_jax.config_utils import config_path, load_config


def get_config(arg=None):
  a = parse_arg(arg, runlocal=False, data="synthetic", betas="0.25/0.5/1", smoothings="5/20",
                seed=0)
  c = load_config(config_path(__file__, "..", "..", "configs", "defrag.py"),
                  f"runlocal={a.runlocal},data={a.data}")
  variants = [dict(name=f"beta{b}", hparams=dict(global_weight=float(b)), seed=a.seed)
              for b in a.betas.split("/")]
  sequential = [dict(name=f"smooth{n}", overrides={"model.smoothing": float(n)})
                for n in filter(None, a.smoothings.split("/"))]
  c.sweep = ml_collections.ConfigDict(dict(variants=variants, sequential=sequential))
  return c
