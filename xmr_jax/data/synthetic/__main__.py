"""``python -m xmr_jax.data.synthetic --out DIR ...`` (see :mod:`xmr_jax.data.synthetic.cli`)."""
from xmr_jax.data.synthetic.cli import main

if __name__ == "__main__":
  main()
