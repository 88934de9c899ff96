"""``python -m xmr_jax.search``: the command line of :mod:`xmr_jax.search.cli`."""
import sys

from xmr_jax.search.cli import main

if __name__ == "__main__":
  sys.exit(main())
