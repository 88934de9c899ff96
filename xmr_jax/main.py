"""Command line: ``python -m xmr_jax.main --config=configs/vsepp.py[:args] --workdir=W [--mode=...]``.

Modes: ``train`` (default: train, resume if W has a checkpoint, then evaluate on test),
``eval`` (evaluate the best checkpoint of W on ``config.eval.split``).
"""
from absl import app, flags, logging
from ml_collections import config_flags

from xmr_jax import training

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/vsepp.py:runlocal.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results and plots.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "What to do.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Orbax logs every save at INFO; our progress bar and tables say what matters.
  logging.set_verbosity(logging.WARNING)
  config = FLAGS.config
  if FLAGS.mode == "train":
    training.train_and_evaluate(config, FLAGS.workdir)
  else:
    training.evaluate_workdir(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
