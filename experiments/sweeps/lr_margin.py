"""Learning rate x triplet margin (x seed) of one method as one vmapped program.

Launch (a photo folder, a frozen pretrained text tower whose vectors the data computes once):
  python -m xmr_jax.main --mode=sweep --workdir=W \
      --config=experiments/sweeps/lr_margin.py:method=vsepp,data=images,text=e5_small \
      --config.data.dir=../shared/real/uitviic --config.data.images.backbone=efficientnet_lite1 \
      --config.model.text_frozen=true
Arguments: method= a configs/ preset whose loss reads hparams.margin (vsepp, defrag, sgraf,
  mmca; PCME's does not, and the trainer refuses such a sweep; default vsepp), data= the
  preset's data argument (synthetic|f30k|coco|images|photos, as that preset takes), text=
  (the preset's text tower; '' keeps the preset's), variant= (the preset's variant: sgraf
  sgr|saf, defrag paper|matlab; '' keeps the preset's), lrs=1e-4/2e-4/5e-4 and
  margins=0.1/0.2/0.3 ('/'-separated), seeds=1 (seeds 0..seeds-1 of every lr x margin: the
  seed spread is the error bar of a small test split). Other settings go on the command line
  (``--config.model.fragments=bigram`` for DeFrag with a pretrained tower).

Each variant keeps its best dev checkpoint; choose by dev rsum (sweep_results.json) and report
that variant's test numbers.
"""
import ml_collections

from xmr_jax.config_utils import config_path, load_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, method="vsepp", data="synthetic", text="", variant="",
                lrs="1e-4/2e-4/5e-4", margins="0.1/0.2/0.3", seeds=1)
  preset = (f"data={a.data}" + (f",text={a.text}" if a.text else "")
            + (f",variant={a.variant}" if a.variant else ""))
  c = load_config(config_path(__file__, "..", "..", "configs", f"{a.method}.py"), preset)
  lrs = [float(x) for x in a.lrs.split("/")]
  margins = [float(m) for m in a.margins.split("/")]
  seeds = int(a.seeds)
  # One seed: no per-variant seed, so ``--config.seed`` still applies and the names stay
  # those of the single-seed sweeps already recorded.
  c.sweep = ml_collections.ConfigDict(dict(variants=[
      dict(name=f"lr{lr:g}_margin{m:g}", hparams=dict(learning_rate=lr, margin=m))
      if seeds == 1 else
      dict(name=f"lr{lr:g}_margin{m:g}_seed{s}", hparams=dict(learning_rate=lr, margin=m),
           seed=s)
      for lr in lrs for m in margins for s in range(seeds)]))
  return c
