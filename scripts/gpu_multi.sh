#!/usr/bin/env bash
# Issue 8's runs on one host with 2+ GPUs (how reports/bench/h100x2-full/ was made).
#
#   BATCH=8 scripts/gpu_multi.sh scaling OUT   # full checkpoint; both training CLIs under torchrun on 1 and 2 GPUs
#   scripts/gpu_multi.sh harness OUT   # harness DDP check over NCCL: full model (no fault), tiny (faults), GPU tests
#   scripts/gpu_multi.sh reference-bf16 OUT   # reference CLI, 20 LoRA steps on the full checkpoint under bf16 autocast
#
# Needs the project importable (PYTHONPATH=repo) and its pinned packages (see README "Benchmarks").
# The full random checkpoint is built on the GPU into $FULL once (~75 s) and reused by both phases.
set -euo pipefail
phase=$1
out=$2
FULL=${FULL:-/tmp/higgs-full}
BATCH=${BATCH:-8}
mkdir -p "$out"
nvidia-smi -L | tee "$out/gpus.txt"
if ! python3 -m higgs_common.assets.build --info --out "$FULL" >/dev/null 2>&1; then
    python3 -m higgs_common.assets.build --size full --materialize --device cuda --out "$FULL" 2>&1 | tail -4
fi
case "$phase" in
scaling)
    python3 -m bench.scaling --model "$FULL/model" --audio-tokenizer "$FULL/audio_tokenizer" \
        --gpus 1,2 --batch-size "$BATCH" --steps 10 --warmup 3 --out /tmp/scaling-b$BATCH 2>&1 | tee "$out/scaling-b$BATCH.log"
    cp /tmp/scaling-b$BATCH/scaling.json "$out/scaling-b$BATCH.json"
    cp /tmp/scaling-b$BATCH/scaling.md "$out/scaling-b$BATCH.md"
    ;;
harness)
    python3 -m harness.compare --stage all --device cuda --model "$FULL/model" --audio-tokenizer "$FULL/audio_tokenizer" \
        --ddp-world-size 2 --quiet --out /tmp/cmp_full 2>&1 | tail -25 | tee "$out/compare_full.log" || true
    cp /tmp/cmp_full/report.json "$out/compare_full_ddp_report.json"
    cp /tmp/cmp_full/report.md "$out/compare_full_ddp_report.md"
    if [ "${SKIP_TESTS:-0}" != 1 ]; then
        python3 -m pytest -q -p no:cacheprovider -m gpu tests/harness/test_multi_gpu.py 2>&1 | tail -15 | tee "$out/gpu_tests.log"
    fi
    ;;
reference-bf16)
    # issue 15: the reference runs under the Trainer's bf16 autocast (audio_merge.py casts the
    # audio-out embedding to the embedding dtype, as the shipped train-higgs-audio does)
    python3 -m reference_impl.train --model-path "$FULL/model" --audio-tokenizer-path "$FULL/audio_tokenizer" \
        --use-lora --max-steps 20 --logging-steps 1 --per-device-train-batch-size 4 --learning-rate 1e-4 \
        --warmup-steps 0 --report-to none --device cuda --output-dir /tmp/ref-bf16 2>&1 \
        | tr '\r' '\n' | grep -v "it/s\]$\|s/it\]$" | tee "$out/reference_train_bf16.log"
    ;;
*) echo "unknown phase $phase (scaling | harness | reference-bf16)"; exit 2 ;;
esac
