"""Errors a user caused, as opposed to bugs in the code.

``python -m xmr_jax.main`` prints an :class:`InputError` as one message (no traceback) and
exits with status 2; any other exception is a bug and keeps its traceback. Every check of
user input (data files, config values, command-line usage, ensemble members, workdirs)
raises a subclass, with a message naming what is wrong, where, and what to do.
"""


class InputError(ValueError):
  """Bad input from the user: a file, a config value, a command line, a workdir."""


class ConfigError(InputError):
  """A config value (or a combination of values) that cannot run; names the key."""


class WorkdirError(InputError):
  """A workdir that does not hold what the command needs (no checkpoint, no config.json)."""
