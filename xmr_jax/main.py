"""Command line: ``python -m xmr_jax.main --config=configs/vsepp.py[:args] --workdir=W [--mode=...]``.

Modes: ``train`` (default: train, resume if W has a checkpoint, then evaluate on test),
``eval`` (evaluate the best checkpoint of W on ``config.eval.split``; with
``--ensemble=W1,W2`` the average of several workdirs' score matrices, written to W),
``sweep`` (the variants of ``config.sweep`` as one vmapped program; xmr_jax/training/sweep.py).
Multi-host: with ``XMR_DISTRIBUTED=1`` every process first calls ``jax.distributed.initialize()``.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from xmr_jax import training
from xmr_jax.common import mesh
from xmr_jax.training import sweep

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/vsepp.py:runlocal.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results and plots.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sweep"], "What to do.")
flags.DEFINE_list("ensemble", [], "With --mode=eval: trained workdirs whose score matrices are "
                  "averaged (e.g. the SGR and SAF workdirs for SGRAF); --config is then not needed "
                  "and the results go to --workdir.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  """absl entry point: dispatches on ``--mode`` (and ``--ensemble``) as the module says.

  Raises ``app.UsageError`` for positional arguments, ``--ensemble`` without ``--mode=eval``,
  or a missing ``--config`` (not needed with ``--ensemble``).
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Orbax logs every save at INFO; our progress bar and tables say what matters.
  logging.set_verbosity(logging.WARNING)
  mesh.maybe_initialize_distributed()   # before anything touches a device
  if FLAGS.ensemble:
    if FLAGS.mode != "eval":
      raise app.UsageError("--ensemble goes with --mode=eval")
    training.evaluate_ensemble(FLAGS.ensemble, FLAGS.workdir)
    return
  if FLAGS.config is None:
    raise app.UsageError("--config is required (e.g. --config=configs/sgraf.py)")
  config = FLAGS.config
  if FLAGS.mode == "train":
    training.train_and_evaluate(config, FLAGS.workdir)
  elif FLAGS.mode == "sweep":
    sweep.run_sweep(config, FLAGS.workdir)
  else:
    training.evaluate_workdir(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
