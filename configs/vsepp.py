"""VSE++ (Faghri et al., BMVC 2018): global embeddings, hardest-negative triplet loss.

Launch:
  python -m xmr_jax.main --config=configs/vsepp.py --workdir=/tmp/vsepp            # synthetic
  python -m xmr_jax.main --config=configs/vsepp.py:runlocal --workdir=/tmp/vsepp_l  # ~1 minute
  python -m xmr_jax.main --config=configs/vsepp.py:data=f30k --workdir=W \
      --config.data.dir=/path/to/f30k_precomp
  python -m xmr_jax.main --config=configs/vsepp.py:data=images --workdir=W \
      --config.data.dir=../shared/real/uitviic        # photos + captions (README, real data)
Arguments: runlocal, data=synthetic|f30k|coco|images, max_violation=true|false (VSE0 when false;
  default true, false with data=images), image_input=regions|pixels,
  text=gru|glove|minilm|e5_small (text tower; docs/methods.md#text-towers).

Paper numbers it targets (VSE++ table, ResNet152 fine-tuned, 1K test): COCO i2t R@1 64.6,
t2i R@1 52.0; F30K i2t R@1 52.9, t2i R@1 39.6. On precomputed bottom-up region features the
averaged-region VSE++ baseline is weaker than with fine-tuned CNNs; VSE∞ reports ~R@1 60-70 on
F30K i2t with better pooling, which we do not implement here.
"""
from xmr_jax.common.errors import ConfigError
from xmr_jax.config_utils import (base_config, parse_arg, photo_folder, photo_input,
                                  photos_arg, text_tower)


def get_config(arg=None):
  a = parse_arg(arg, runlocal=False, data="synthetic", max_violation=None, image_input="regions",
                text="")
  photos = photos_arg(a)   # data=photos: the data=images preset + the backbone inside
  c = base_config("vsepp")
  c.model.word_dim = 300
  c.model.embed_dim = 1024
  c.model.num_layers = 1
  c.model.image_input = a.image_input
  c.model.max_violation = _max_violation(a)
  c.model.loss_reduction = "sum"          # official ContrastiveLoss sums; "mean" divides by B
  c.hparams.learning_rate = 2e-4          # official: Adam 2e-4, x0.1 after 15 epochs, 30 epochs
  c.hparams.margin = 0.2
  c.hparams.hardneg_warmup_epochs = 0.0   # official VSE++: hardest negatives from the start
  c.train.batch_size = 128
  c.train.grad_clip = 2.0
  if a.data == "synthetic":
    # Small dims: trains in a few minutes on 2 CPU cores.
    c.model.word_dim = 128
    c.model.embed_dim = 256
    # An epoch is one pass over the 50,000 captions (390 steps of 128, ~30 s on 2 idle cores).
    c.train.num_epochs = 10
    c.train.lr_decay_epochs = 8
    c.hparams.hardneg_warmup_epochs = 1.0   # see models/vsepp.py: avoids the collapsed start
  elif a.data == "images":
    _images(c)
  elif a.data in ("f30k", "coco"):
    c.data.name = "precomp"
    c.data.tokenizer = "word"
    c.train.num_epochs = 30
    c.train.lr_decay_epochs = 15
    if a.data == "coco":
      c.eval.protocol = "coco1k"
  else:
    raise ConfigError(f"configs/vsepp.py: unknown data={a.data!r} "
                      f"(synthetic|f30k|coco|images|photos)")
  if a.text:
    text_tower(c, a.text)
  if a.runlocal:
    c.data.synthetic.update(n_train=1000, n_dev=100, n_test=200)
    c.train.num_epochs = 3
    c.train.lr_decay_epochs = 2
    c.hparams.hardneg_warmup_epochs = 1.0
    c.train.batch_size = 64
    c.train.log_every_steps = 5
  if photos:
    photo_input(c)
  return c


def _max_violation(a) -> bool:
  """VSE++'s hardest negatives by default; the sum over negatives (VSE0) on a photo folder,
  where on uitviic's 2,424 training photos hardest negatives (after a 2-epoch sum warm-up)
  reached test rsum 110.5 and VSE0 137.9 (README, real photos)."""
  if a.max_violation is None:
    return a.data != "images"
  value = str(a.max_violation).strip().lower()
  if value not in ("true", "false", "1", "0", "yes", "no"):
    raise ConfigError(f"configs/vsepp.py: max_violation={a.max_violation!r} is not a boolean")
  return value in ("true", "1", "yes")


def _images(c):
  """A folder of photos + captions (data.name=images): EfficientNet-Lite0 grid regions (36 x
  1280), a seeded 250/250 dev/test split (uitviic; coco_mini: split_sizes=(50, 50)), sized
  for about 10 minutes of training on 2 CPU cores."""
  photo_folder(c)
  c.model.word_dim = 256
  c.model.embed_dim = 512
  c.train.batch_size = 128
  # 5 x (2424 // 128) = 90 steps an epoch on uitviic. With VSE0 dev rsum peaked at epoch 7
  # (143.8) and slowly fell after (30 epochs ran: 135-141 from epoch 8 on), so 8 epochs
  # without decay; with max_violation=true the sum warm-up lasts 2 epochs.
  c.train.num_epochs = 8
  c.train.lr_decay_epochs = 15
  c.hparams.hardneg_warmup_epochs = 2.0
