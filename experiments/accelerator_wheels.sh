#!/usr/bin/env bash
# Downloads (here, where pip reaches the package index) the wheels that
# experiments/accelerator_check.sh needs on the lent GPU machine, whose image has JAX, flax,
# optax, orbax, absl, tqdm, sentencepiece, pytest, numpy and pillow but not these. Python 3.12
# x86-64 wheels, no dependencies resolved: each needed one is named. Versions: setup.cfg's pins.
#
#   bash experiments/accelerator_wheels.sh        # -> .whl/ (ignored by git)
set -euo pipefail
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo /.whl/ >> "$EXCLUDE"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d .whl \
    ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 portpicker==1.6.0 \
    tensorboardX==2.6.5 nltk==3.10.4 importlib_resources==7.1.0
ls -la .whl
