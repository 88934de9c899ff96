"""Writes the synthetic image–sentence retrieval benchmark (SCAN precomp layout) into --out.

Run as ``python -m xmr_jax.data.synthetic --out DIR [--seed 0] [--n-train N] ... [--pixels]``;
every :class:`Difficulty` field is a flag too (``--feature-noise 0.3``).
"""
import argparse
import dataclasses
from typing import Optional, Sequence

from xmr_jax.data.synthetic.spec import Difficulty
from xmr_jax.data.synthetic.store import generate


def main(argv: Optional[Sequence[str]] = None) -> str:
  """Parses ``argv`` (default: sys.argv), generates the benchmark, prints and returns its path."""
  # prog: run as the package's __main__, argparse would call itself "__main__.py".
  ap = argparse.ArgumentParser(prog="python -m xmr_jax.data.synthetic",
                               description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True, help="dataset directory to create")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--n-train", type=int, default=10000)
  ap.add_argument("--n-dev", type=int, default=500)
  ap.add_argument("--n-test", type=int, default=1000)
  ap.add_argument("--pixels", action="store_true", help="also render 64x64 RGB scenes")
  ap.add_argument("--overwrite", action="store_true")
  for field in dataclasses.fields(Difficulty):
    ap.add_argument("--" + field.name.replace("_", "-"), type=type(field.default),
                    default=field.default, help="difficulty knob")
  args = vars(ap.parse_args(argv))
  knobs = {f.name: args.pop(f.name) for f in dataclasses.fields(Difficulty)}
  path = generate(args.pop("out"), **args, **knobs)
  print(path)
  return path

