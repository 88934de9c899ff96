"""Command line: ``python -m xmr_jax.main --config=configs/vsepp.py[:args] --workdir=W [--mode=...]``.

Modes: ``train`` (default: train, resume if W has a checkpoint, then evaluate on test),
``eval`` (evaluate the best checkpoint of W on ``config.eval.split``; with
``--ensemble=W1,W2`` the average of several workdirs' score matrices, written to W),
``sweep`` (the variants of ``config.sweep`` as one vmapped program; xmr_jax/training/sweep.py).
Multi-host: with ``XMR_DISTRIBUTED=1`` every process first calls ``jax.distributed.initialize()``.
"""
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from xmr_jax import training
from xmr_jax.common import io, mesh
from xmr_jax.common.errors import InputError
from xmr_jax.training import config_check, sweep, workdirs

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/vsepp.py:runlocal.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results and plots.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sweep"], "What to do.")
flags.DEFINE_list("ensemble", [], "With --mode=eval: trained workdirs whose score matrices are "
                  "averaged (e.g. the SGR and SAF workdirs for SGRAF); --config is then not needed "
                  "and the results go to --workdir.")
flags.DEFINE_bool("rebuild_tokenizer", False, "For a workdir trained by an older xmr_jax "
                  "that does not hold its tokenizer: build it from the training data as "
                  "configured and store it in the workdir (right only if that data is exactly "
                  "what the workdir was trained on).")
flags.mark_flags_as_required(["workdir"])


def _fail(message: str) -> None:
  """One line on stderr and exit status 2: the CLI's answer to input the user can fix."""
  print(f"xmr_jax: error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _user_cause(error: BaseException):
  """The innermost InputError an exception was raised from, or None: config_flags re-raises
  a config file's error as a new one of the same type whose text is the whole traceback."""
  found = None
  while error is not None:
    if isinstance(error, InputError):
      found = error
    error = error.__cause__ or error.__context__
  return found


def parse_flags(argv):
  """absl flag parsing (the config file is loaded here) with bad input as exit status 2.

  absl's own parser prints a usage banner and exits 1; an unknown ``--config.x`` key, a bad
  config argument or a missing required flag is the user's input, so it gets the CLI's
  one-message answer instead.
  """
  if any(a.startswith("--config.") for a in argv) and \
      not any(a == "--config" or a.startswith("--config=") for a in argv):
    _fail("--config.<key> overrides need --config=FILE (the config file they change); with "
          "--mode=eval give the config file the workdir was trained with, e.g. "
          "--config=configs/vsepp.py:runlocal --config.eval.split=dev")
  try:
    return FLAGS(argv)
  except (flags.Error, InputError) as e:
    _fail(str(_user_cause(e) or e))
  except (AttributeError, KeyError) as e:
    # ml_collections applies each --config.<key>=... during parsing; a key the config does
    # not have surfaces as AttributeError/KeyError naming it.
    # Its text is the quoted key, then ml_collections' "Did you mean" hint after a newline
    # (shown raw before); any other text is passed on whole, on one line.
    text = str(e.args[0] if e.args else e)
    key = re.match(r"\W*'([A-Za-z_]\w*)'", text.replace("\\'", "'"))
    hint = re.search(r'Did you mean "([^"]+)"', text)
    detail = (repr(key.group(1)) if key else " ".join(text.split())) + (
        f" (did you mean {hint.group(1)!r}?)" if hint else "")
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    _fail(f"a --config.<key> override names a key the config does not have: {detail}. "
          f"Overrides given: {', '.join(overrides)}; check the spelling against the config "
          f"file")


def run(argv) -> None:
  """Dispatches on ``--mode`` (and ``--ensemble``) as the module docstring says.

  Raises InputError for positional arguments, ``--ensemble`` without ``--mode=eval``, or a
  missing ``--config`` (not needed with ``--ensemble``).
  """
  if len(argv) > 1:
    raise InputError(f"unexpected arguments: {argv[1:]}")
  # Orbax logs every save at INFO; our progress bar and tables say what matters.
  logging.set_verbosity(logging.WARNING)
  mesh.maybe_initialize_distributed()   # before anything touches a device
  io.enable_compilation_cache()
  if FLAGS.ensemble:
    if FLAGS.mode != "eval":
      raise InputError("--ensemble goes with --mode=eval")
    overrides = ({} if FLAGS.config is None else
                 dict(config_flags.get_override_values(FLAGS["config"])))
    workdirs.check_ensemble(FLAGS.ensemble, FLAGS.workdir, overrides)
    if FLAGS.config is not None:
      applied = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "none"
      print(f"xmr_jax: --ensemble evaluates each member with its own config.json; of --config "
            f"only the eval.* overrides apply: {applied}", file=sys.stderr, flush=True)
    training.evaluate_ensemble(FLAGS.ensemble, FLAGS.workdir, overrides=overrides)
    return
  config = FLAGS.config
  if config is None and FLAGS.mode == "eval":
    # A trained workdir knows its config: --mode=eval needs no --config.
    config = workdirs.config_from_workdir(FLAGS.workdir)
  elif config is None:
    raise InputError("--config is required (e.g. --config=configs/sgraf.py)")
  else:
    # A --config.x=... the chosen path never reads is an error, not a silent no-op.
    config_check.check_overrides(config, config_flags.get_override_values(FLAGS["config"]))
    config_check.absolute_paths(config)   # config.json then serves from any directory
    # "auto" becomes the dtype it means on this hardware, so config.json records what ran
    # and a resume elsewhere keeps it.
    chosen = config_check.resolve_auto(config)
    if chosen:
      print(chosen, file=sys.stderr, flush=True)
    # The settings a preset chooses silently (backbone, tower, batch) are named once.
    print(config_check.summary(config), file=sys.stderr, flush=True)
  if FLAGS.mode == "train":
    training.train_and_evaluate(config, FLAGS.workdir, rebuild_tokenizer=FLAGS.rebuild_tokenizer)
  elif FLAGS.mode == "sweep":
    sweep.run_sweep(config, FLAGS.workdir)
  else:
    training.evaluate_workdir(config, FLAGS.workdir, rebuild_tokenizer=FLAGS.rebuild_tokenizer)


def main(argv):
  """absl entry point: :func:`run`, with every InputError printed as one line, exit 2.

  Any other exception is a bug in xmr_jax and keeps its traceback.
  """
  try:
    run(argv)
  except InputError as e:
    _fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
