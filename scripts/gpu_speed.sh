#!/usr/bin/env bash
# Kept for old instructions: the speed measurements are `scripts/gpu.sh --on-device speed` (docs/gpu.md),
# which writes a new reports/bench/speed-<UTC time>/ and never over committed results.  Extra
# harness.bench options (e.g. the speed-switch variants) go in $BENCH_ARGS:
#   BENCH_ARGS="--variants=-compile;-tf32 --variant-batch 32" bash scripts/gpu.sh --on-device speed
echo "scripts/gpu_speed.sh: replaced by scripts/gpu.sh --on-device speed (docs/gpu.md)" >&2
exec bash "$(dirname "$0")/gpu.sh" --on-device speed
