#!/usr/bin/env bash
# The accelerator check (issue 15): one script, under 8 minutes on one GPU, one JSON.
#
#   bash experiments/accelerator_check.sh [OUT_DIR]        # repo root, on the GPU machine
#   XMR_CHECK_QUICK=1 bash experiments/accelerator_check.sh /tmp/acc   # CPU dry run, ~5 min
#
# 1. the tests that matter on an accelerator: data parallelism (tests/test_parallel.py), the
#    evaluation engine (tests/test_engine.py), kernels against their references
#    (tests/test_roi_align.py, tests/test_losses.py) and mixed precision (tests/test_bf16.py),
#    with float32 matmuls at full precision (JAX_DEFAULT_MATMUL_PRECISION=highest: the
#    references' 1e-5 tolerances assume it; a GPU's default TF32 would not meet them);
# 2. experiments/benchmark.py for every method at paper model dims (on the synthetic
#    benchmark's 36 x 128-d regions: the region projection is the only smaller matmul) in
#    float32 and bfloat16 (model.dtype);
# 3. experiments/bench_sgraf.py: SGR and SAF paper-dim scoring of a Flickr30K-size
#    1,000 x 5,000 test grid and the train step, float32 and bfloat16.
# Everything lands in OUT_DIR/accelerator_check.json (+ one JSON and log per part).
#
# Needs: JAX for the accelerator, flax, optax, orbax-checkpoint, absl-py, tqdm,
# sentencepiece, pytest, numpy, pillow (all on the lent H200 image) and ml_collections,
# grain, tensorboardX with their dependencies, carried as wheels in .whl/: run
# experiments/accelerator_wheels.sh here first, then name .whl in the device tool's carry.
set -uo pipefail
OUT_DIR=${1:-${OUT:-/tmp/accelerator_check}}
mkdir -p "$OUT_DIR"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/xmr_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/xmr_site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 XMR_DATA_DIR=${XMR_DATA_DIR:-/tmp/xmr_data}
QUICK=${XMR_CHECK_QUICK:-0}
START=$(date +%s)

python3 - "$OUT_DIR/env.json" <<'EOF'
import json, platform, sys
import jax
from xmr_jax.common.hardware import cpu_bf16_flags
json.dump({"jax": jax.__version__, "backend": jax.default_backend(),
           "devices": [str(d) for d in jax.devices()], "python": platform.python_version(),
           "cpu": cpu_bf16_flags()}, open(sys.argv[1], "w"), indent=1)
EOF

# 1. Tests (the conftest defaults JAX_PLATFORMS to cpu only where it is unset).
PLATFORM=$(python3 -c "import jax; print(jax.default_backend())")
TESTS="tests/test_parallel.py tests/test_engine.py tests/test_roi_align.py tests/test_losses.py tests/test_bf16.py"
[ "$QUICK" = 1 ] && TESTS="tests/test_roi_align.py"      # the dry run checks the plumbing
JAX_PLATFORMS=$PLATFORM JAX_DEFAULT_MATMUL_PRECISION=highest timeout 240 \
  python3 -m pytest -q -p no:cacheprovider $TESTS \
  --junitxml="$OUT_DIR/tests.xml" > "$OUT_DIR/tests.log" 2>&1
echo "tests: exit $? ($(tail -n 1 "$OUT_DIR/tests.log"))"

# 2. Every method, paper model dims, both dtypes.
declare -A DIMS=(
  [vsepp]="--config.model.embed_dim=1024 --config.model.word_dim=300"
  [pcme]="--config.model.embed_dim=1024 --config.model.word_dim=300"
  [sgraf]="--config.model.embed_dim=1024 --config.model.word_dim=300 --config.model.sim_dim=256"
  [defrag]="--config.model.embed_dim=1000 --config.model.word_dim=200"
  [mmca]="--config.model.embed_dim=1024 --config.model.word_dim=768 --config.model.num_heads=8 --config.model.ffn_dim=2048 --config.model.conv_dim=1024"
)
declare -A IMAGES=([vsepp]=1000 [pcme]=1000 [sgraf]=1000 [defrag]=1000 [mmca]=100)
for m in vsepp pcme sgraf defrag mmca; do
  for dt in float32 bfloat16; do
    if [ "$QUICK" = 1 ]; then
      args="--config=configs/$m.py:runlocal --steps=3 --n_images=50"
    else
      args="--config=configs/$m.py ${DIMS[$m]} --steps=10 --n_images=${IMAGES[$m]}"
    fi
    timeout 120 python3 experiments/benchmark.py $args --config.model.dtype=$dt \
        --out="$OUT_DIR/bench_${m}_${dt}.json" > "$OUT_DIR/bench_${m}_${dt}.log" 2>&1
    echo "benchmark $m $dt: exit $?"
  done
done

# 3. SGRAF at F30K size.
if [ "$QUICK" = 1 ]; then
  sg="--shapes=small --grid=small=50x250 --repeats=1 --no_train"
else
  sg="--shapes=paper --grid=paper=1000x5000 --repeats=2"
fi
timeout 240 python3 experiments/bench_sgraf.py $sg --dtypes=float32,bfloat16 \
    --out="$OUT_DIR/bench_sgraf.json" > "$OUT_DIR/bench_sgraf.log" 2>&1
echo "bench_sgraf: exit $?"

python3 - "$OUT_DIR" "$START" <<'EOF'
import glob, json, os, sys, time
out, start = sys.argv[1], int(sys.argv[2])
result = {"seconds": time.time() - start}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
  name = os.path.basename(path)[:-5]
  if name != "accelerator_check":
    try:
      result[name] = json.load(open(path))
    except ValueError as e:
      result[name] = {"unreadable": str(e)}
log = os.path.join(out, "tests.log")
result["tests_tail"] = open(log).read()[-2000:] if os.path.exists(log) else "no log"
json.dump(result, open(os.path.join(out, "accelerator_check.json"), "w"), indent=1,
          default=str)
print(f"wrote {out}/accelerator_check.json ({result['seconds']:.0f} s)")
EOF
