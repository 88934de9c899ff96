"""The data room's error: a dataset, caption, photo or word-vector file the user can fix."""
from xmr_jax.common.errors import InputError


class DataError(InputError):
  """A dataset file is missing or malformed; the message names the file (and line or index)
  and says how to fix it. The CLI prints it as one line, exit status 2."""
