"""VSE++ ablation: triplet margin x seed, 6 variants as one vmapped program.

Launch:
  python -m xmr_jax.main --config=experiments/sweeps/vsepp_margin_seed.py --workdir=W --mode=sweep
  python -m xmr_jax.main --config=experiments/sweeps/vsepp_margin_seed.py:runlocal \
      --workdir=/tmp/sweep_vsepp --mode=sweep                                      # ~1-2 minutes
Arguments: runlocal, data=synthetic|f30k|coco, margins=0.1/0.2/0.3 ('/'-separated),
  seeds=2 (seeds 0..seeds-1).

VSE++ uses margin 0.2 (paper §4); the sweep shows how sensitive hardest-negative training is to
it, with seed spread as the error bar.
"""
import ml_collections

from xmr_jax.config_utils import parse_arg
from xmr_jax.config_utils import config_path, load_config


def get_config(arg=None):
  a = parse_arg(arg, runlocal=False, data="synthetic", margins="0.1/0.2/0.3", seeds=2)
  c = load_config(config_path(__file__, "..", "..", "configs", "vsepp.py"),
                  f"runlocal={a.runlocal},data={a.data}")
  margins = [float(m) for m in a.margins.split("/")]
  c.sweep = ml_collections.ConfigDict(dict(variants=[
      dict(name=f"margin{m:g}_seed{s}", hparams=dict(margin=m), seed=s)
      for m in margins for s in range(a.seeds)]))
  return c
