"""DeFrag (Karpathy, Joulin, Fei-Fei, NIPS 2014): fragment embeddings, MIL fragment alignment +
global ranking. Hyperparameters of the ``f30k`` preset cite the MATLAB copy of the original
code, bbugs/DeepFashion ``matlab_code/DriverSetParams.m`` and ``DeFragRun.m``.

Launch:
  python -m xmr_jax.main --config=configs/defrag.py --workdir=/tmp/defrag            # synthetic
  python -m xmr_jax.main --config=configs/defrag.py:runlocal --workdir=/tmp/defrag_l  # ~1 minute
  python -m xmr_jax.main --config=configs/defrag.py:data=f30k --workdir=W \
      --config.data.dir=/path/to/f30k_precomp      # needs {split}_deps.jsonl next to the captions
  python -m xmr_jax.main --config=configs/defrag.py:data=images --workdir=W \
      --config.data.dir=../shared/real/coco_mini --config.data.split_sizes='(50, 50)' \
      --config.data.images.regions=grid+boxes      # English: spaCy dependency fragments
  python -m xmr_jax.main --config=configs/defrag.py:data=images,fragments=bigram --workdir=W \
      --config.data.dir=../shared/real/uitviic     # no parser for Vietnamese: bigrams
Arguments: runlocal, data=synthetic|f30k|images, objective=full|global_only|fragment_only,
  fragments=dependency|bigram|word, mil=true|false, shared_relation_matrix=true|false,
  whole_image=mean|pixels|none, variant=paper|matlab (S_kl normalisation and accumulation).
  text=gru|glove|minilm|e5_small (text tower, docs/methods.md#text-towers; a pretrained
  tower needs fragments=bigram|word).

Paper numbers it targets (Flickr30K, 1000 test images, R-CNN fc7 features, table 2, "Our model:
DeFrag + Finetune CNN"): i2t R@1 16.4, R@5 40.2, R@10 54.7; t2i R@1 10.3, R@5 31.4, R@10 44.5
(without fine-tuning: i2t 14.2 / 37.7 / 51.3, t2i 10.2 / 30.8 / 44.2). Table 3 ablations on
Flickr8K: global only, fragment only, bigram/word fragments all below the full model.
On SCAN bottom-up precomp features (36 regions, 2048-d) the numbers are not comparable.
"""
from xmr_jax.common.errors import ConfigError
from xmr_jax.config_utils import (base_config, parse_arg, photo_folder, photo_input,
                                  photos_arg, text_tower)


def get_config(arg=None):
  a = parse_arg(arg, runlocal=False, data="synthetic", objective="full", fragments="dependency",
                mil=True, shared_relation_matrix=False, whole_image="mean", variant="paper",
                text="")
  photos = photos_arg(a)   # data=photos: the data=images preset + the backbone inside
  c = base_config("defrag")
  c.evals = ("retrieval", "retrieval_examples", "alignments")   # + fragment alignments (fig. 4)
  m = c.model
  m.fragments = a.fragments
  m.objective = a.objective
  m.use_mil = a.mil
  m.shared_relation_matrix = a.shared_relation_matrix   # True = MATLAB ForwardSent.m's Wsem
  m.whole_image = a.whole_image
  m.freeze_word_embeddings = False   # paper: W_e fixed; sensible only with pretrained vectors
  m.max_regions = 0                  # 0 = every region (+ the whole image)
  m.smoothing = 10.0                 # n of eq. 8 (DriverSetParams.m smoothnum = 10); static:
  #                                    score() has no hparams at evaluation time
  if a.variant == "paper":           # eq. 8: 1/(|g_k|(|g_l|+n)), sum of thresholded scores
    m.normalization, m.accumulation, m.threshold = "paper", "sum", True
  elif a.variant == "matlab":        # DeFragCost.m: 1/(|g_l|+n), thrglobalscore = 1, sum
    m.normalization, m.accumulation, m.threshold = "matlab", "sum", True
  else:
    raise ConfigError(f"configs/defrag.py: unknown variant={a.variant!r} (paper|matlab)")
  # Schedule in trainer epochs (hparams['epoch']; one epoch = one pass over the captions).
  m.mil_start_epoch = 10.0           # paper: C_0 alone for the first 10 epochs
  m.global_start_epoch = 0.0
  c.hparams.fragment_margin = 1.0    # DriverSetParams.m lmargin = 1 (eq. 5's 1)
  c.hparams.global_weight = 0.5      # beta: DriverSetParams.m gscale = 0.5
  c.hparams.margin = 40.0            # Delta: DriverSetParams.m gmargin = 40 (matlab scaling)
  c.train.optimizer = "sgd"          # DriverSetParams.m method = 0: SGD + momentum
  c.train.momentum = 0.9
  c.train.weight_decay = 2e-10       # alpha ||theta||^2 as decay: regC = 2e-10
  c.train.batch_size = 100           # paper / DriverSetParams.m batch_size = 100
  c.train.grad_clip = 0.0            # none in DeFragRun.m
  if a.data == "synthetic":
    _synthetic(c, a)
  elif a.data == "f30k":
    _f30k(c, a)
  elif a.data == "images":
    _images(c, a)
  else:
    raise ConfigError(f"configs/defrag.py: unknown data={a.data!r} "
                      f"(synthetic|f30k|images|photos)")
  if a.text:
    text_tower(c, a.text)
  if a.runlocal:
    c.data.synthetic.update(n_train=1000, n_dev=100, n_test=200)
    c.train.num_epochs = 3             # 3 x 5 x (1000 // 100) = 150 steps
    c.train.lr_decay_epochs = 2
    c.train.log_every_steps = 10
    m.mil_start_epoch = 1.0
  if photos:
    photo_input(c)
  return c


def _synthetic(c, a):
  """Small dims, Adam: trains in a few minutes on 2 CPU cores (10k images x 36 x 128-d)."""
  c.model.word_dim = 64
  c.model.embed_dim = 256
  # Pixels stay on (the default): the same cached benchmark as every other method, and
  # plots/alignments.png draws the boxes on the rendered images.
  # Adam (the trainer's default) instead of the paper's SGD: robust without an lr search.
  c.train.optimizer = "adam"
  c.train.weight_decay = 0.0
  c.train.grad_clip = 2.0
  c.hparams.learning_rate = 2e-4
  # Paper normalisation divides S_kl by |g_k| = 37, so the MATLAB margin 40 is far too large.
  c.hparams.margin = 0.2 if a.variant == "paper" else 4.0
  # One epoch = 5 x (10000 // 100) = 500 steps of ~0.2 s each on 2 idle CPU cores (measured,
  # batch 100, D = 256): 1500 steps ~ 5 minutes plus dev evaluations.
  c.train.num_epochs = 3
  c.train.lr_decay_epochs = 2
  c.model.mil_start_epoch = 1.0


def _images(c, a):
  """A folder of photos + captions (data.name=images): EfficientNet-Lite0 regions (grid by
  default; ``data.images.regions=grid+boxes`` adds RoIAlign features of the instance boxes,
  the paper's detected fragments, where the caption file has them), a seeded 250/250 dev/test
  split (uitviic; coco_mini: split_sizes=(50, 50)). The synthetic preset's Adam recipe, sized
  for about 10 minutes on 2 CPU cores."""
  _synthetic(c, a)
  photo_folder(c)
  c.model.word_dim = 128
  # 5 x (2424 // 100) = 121 steps an epoch on uitviic; 12 epochs = 1,452 steps. 6 epochs ran
  # in 3:49 (test rsum 110.2, dev still rising), so 12 fit the 10-minute budget on idle cores.
  c.train.num_epochs = 12
  c.train.lr_decay_epochs = 10
  c.model.mil_start_epoch = 2.0


def _f30k(c, a):
  """Paper / DriverSetParams.m values on SCAN precomp features (F = 2048, 36 regions)."""
  c.data.name = "precomp"
  c.data.tokenizer = "word"
  c.model.word_dim = 200             # DriverSetParams.m word_dim = 200 (Huang et al. vectors)
  c.model.embed_dim = 1000           # DriverSetParams.m h = 1000
  c.model.normalization = "matlab"   # gmargin = 40 is on DeFragCost.m's 1/(|g_l|+n) scale
  c.hparams.learning_rate = 1e-5     # DriverSetParams.m lr = 1e-5 (summed, unnormalised cost)
  # DriverSetParams.m maxepochs = 20 (epochs over sentences, as ours); the paper anneals the
  # lr x0.1 for the last two epochs (DeFragRun.m lrreduce = 1 never does).
  c.train.num_epochs = 20
  c.train.lr_decay_epochs = 18
  c.model.mil_start_epoch = 10.0     # paper: 10 epochs of C_0 (DeFragRun.m milstart: 15)
