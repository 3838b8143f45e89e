#!/usr/bin/env bash
# Issue 17 in one command on one GPU: training speed of both pipelines side by side (batch 8, 32 and
# the largest that fits), the length-grouping comparison, and every custom speed switch flipped.
#
#   here (pip access), once:   echo /.whl/ >> .git/info/exclude && scripts/gpu_wheels.sh .whl
#   on the GPU machine:        bash scripts/gpu_speed.sh h200-speed        (device run, carry [".whl"])
#
# Writes reports/bench/<name>/{bench.json,bench.md,bench.log,gpu.txt} and copies them into $OUT when
# set (the device tool's output folder).  Ends well inside 10 minutes on one H200: the full random
# checkpoint builds into $FULL (~75 s, reused when already there), then `python -m bench`
# stops launching runs $BUDGET seconds into its sweep (skipped runs are listed as such in
# bench.md) and is killed $HARD_LIMIT seconds after this script started, whatever happens;
# bench.json is rewritten after every run, so what was measured comes back either way.  Variants
# are in priority order (a budget cut skips the last).
#
# Knobs (environment; pass SPECs starting with "-" as they are: the script uses --variants=...): FULL, BUDGET, HARD_LIMIT, STEPS, WARMUP, BATCHES, VARIANTS, VARIANT_BATCH,
# EPOCH_BATCH, CUSTOM_SPEED (e.g. "default,-compile" for the main custom rows), WHL, and TESTS=1:
# afterwards, in the time left before 590 s, `pytest -m gpu tests/custom_impl/test_speed.py` (the
# switches' bf16 loss and gradients on CUDA, tiny checkpoint; ~2 min; e.g. TESTS=1 BUDGET=250).
set -uo pipefail
name=${1:-h200-speed}
WHL=${WHL:-.whl}
FULL=${FULL:-/tmp/higgs-full}
BUDGET=${BUDGET:-380}
HARD_LIMIT=${HARD_LIMIT:-575}        # seconds since this script started
STEPS=${STEPS:-5}
WARMUP=${WARMUP:-3}
BATCHES=${BATCHES:-8,32,max}
VARIANT_BATCH=${VARIANT_BATCH:-32}
EPOCH_BATCH=${EPOCH_BATCH:-32}
CUSTOM_SPEED=${CUSTOM_SPEED:-default}
VARIANTS=${VARIANTS:-"none;-compile;-fast-head;-fused-adamw;-compile,+liger-rmsnorm,+liger-swiglu;-causal-attn;-tf32;-index-ffn;+liger-rmsnorm,+liger-swiglu"}
res=reports/bench/$name
mkdir -p "$res"
export PYTHONUNBUFFERED=1

if compgen -G "$WHL/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl \
        || { echo "installing $WHL failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    echo "no wheels in $WHL: using the packages already installed (transformers must be 4.46.x)"
    export PYTHONPATH=$PWD
fi
nvidia-smi -L | tee "$res/gpu.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$res/gpu.txt"
python3 -c "import liger_kernel" 2>/dev/null && echo "liger-kernel importable" | tee -a "$res/gpu.txt"

timeout --signal=KILL "$((HARD_LIMIT - SECONDS))" python3 -m bench --build-full "$FULL" --sections train \
    --configs lora-common --batch-sizes "$BATCHES" --max-batch 256 --steps "$STEPS" --warmup "$WARMUP" \
    --no-flop-count --custom-speed="$CUSTOM_SPEED" --variants="$VARIANTS" --variant-batch "$VARIANT_BATCH" \
    --epoch-batch "$EPOCH_BATCH" --deadline-s "$BUDGET" --out "$res" 2>&1 | tee "$res/bench.log"
status=${PIPESTATUS[0]}
echo "bench exit status $status" | tee -a "$res/bench.log"
if [ "${TESTS:-0}" = 1 ]; then
    left=$((590 - SECONDS))
    if [ "$left" -gt 60 ]; then
        timeout --signal=KILL "$left" python3 -m pytest -q -p no:cacheprovider -m gpu tests/custom_impl/test_speed.py \
            2>&1 | tee "$res/gpu_tests.log"
    else
        echo "TESTS=1: only $left s left, tests not run" | tee "$res/gpu_tests.log"
    fi
fi
if [ -n "${OUT:-}" ]; then
    cp "$res"/bench.json "$res"/bench.md "$res"/bench.log "$res"/gpu.txt "$OUT"/ 2>/dev/null
    [ -f "$res/gpu_tests.log" ] && cp "$res/gpu_tests.log" "$OUT"/
fi
exit "$status"
