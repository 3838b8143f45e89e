#!/usr/bin/env bash
# One entry point for the GPU machine (docs/gpu.md).
#
#   scripts/gpu.sh --prepare SUITE     here, where pip reaches a registry: build the wheels the GPU
#                                      machine lacks into .gpu-wheels/ (scripts/gpu_wheels.py, from the
#                                      lock files) and print the device command to run
#   scripts/gpu.sh --on-device SUITE   on the GPU machine (no network): install .gpu-wheels/ with
#                                      `pip install --no-deps --target`, run SUITE, write the results
#   scripts/gpu.sh SUITE               either, by whether an NVIDIA GPU answers (nvidia-smi -L)
#
# SUITE (each sized for one 10-minute device call on one H200):
#   speed    both pipelines and the plain-PyTorch yardstick side by side on the full checkpoint at
#            batch 8, 32, 64, three repeats at batch 8, and a torch.profiler summary of the custom
#            step at batch 32 (python -m bench ... --yardstick --repeats 3 --profile-batch 32)
#   harness  the harness's own cost on the full checkpoint: `compare --stage all` (timed per stage,
#            progress printed) against both pipelines' training step at the same batch of 4
#   tests    pytest -m gpu (tiny checkpoint, built there)
#   trace    both training CLIs traced on the full checkpoint: CUDA defaults vs every speed switch off
#            (custom) and bf16 autocast vs off (reference), compare-traces at bf16 tolerance, and the
#            trace's overhead per step (scripts/gpu_trace_suite.py)
#   mutants  the trace mutation suite's speed-path and precision mutants (CUDA-only ones included) on
#            the tiny checkpoint under the CUDA defaults, a clean-vs-clean control first, compared at
#            bf16 tolerance (python -m tests.mutation.run_trace --gpu --paths speed precision)
#
# Results go to a NEW folder, reports/bench/<suite>-<UTC time>/ ($GPU_RESULTS_DIR to name another; an
# existing folder is refused, so committed results are never written over).  When $OUT is set (the
# device tool's output folder) the folder is also packed into $OUT/<suite>-<UTC time>.tar.gz, next to
# $OUT/summary.md and $OUT/run.log.  Exit status: the suite's (0 ok; 1 failures; 124/137 cut at
# the hard limit), 2 bad usage or refused folder, 3 wheels missing or not installable.
#
# Knobs (environment): GPU_WHEELS (.gpu-wheels), GPU_SITE (/tmp/higgs-site), FULL (/tmp/higgs-full,
# the full random checkpoint, built there in ~75 s and reused), HARD_LIMIT (570: seconds after which
# the suite is killed), BUDGET (speed: 330 s of sweep after which no new run starts), PYTHON (python3),
# BENCH_ARGS (speed, harness: more `python -m bench` options, e.g. "--variants=-compile;-tf32"),
# PYTEST_ARGS (tests: more pytest arguments, e.g. "-k speed"), TRACE_STEPS / TRACE_ARGS (trace: steps traced,
# default 10; more scripts/gpu_trace_suite.py options: --custom-only, --overhead-only, --profile-host), TRACE_SIZE
# (trace: `tiny` runs it on the tiny checkpoint, a ~2-minute check of the speed paths against off),
# MUTANT_IDS / MUTANT_JOBS (mutants: only these ids, space-separated; mutants run at once, default 4),
# GPU_ALLOW_CPU=1 (run without CUDA: a dry run of the flow, e.g. `tests`, where every GPU test is skipped).
set -uo pipefail

SUITES=(speed harness tests trace mutants)
usage() { sed -n '2,39p' "$0" | sed 's/^# \{0,1\}//'; }
mode=auto
suite=""
for arg in "$@"; do
    case "$arg" in
    --prepare) mode=prepare ;;
    --on-device) mode=device ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "gpu.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
    *) [ -n "$suite" ] && { echo "gpu.sh: one SUITE only (got '$suite' and '$arg')" >&2; exit 2; }; suite=$arg ;;
    esac
done
if [ -z "$suite" ] || [[ ! " ${SUITES[*]} " =~ " $suite " ]]; then
    echo "gpu.sh: unknown suite '${suite}'; known: ${SUITES[*]}" >&2
    exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 2
PYTHON=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-.gpu-wheels}
if [ "$mode" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then mode=device; else mode=prepare; fi
fi

# ---------------------------------------------------------------------------------------------- prepare
if [ "$mode" = prepare ]; then
    echo "[gpu.sh] building the wheels the GPU machine lacks into $WHEELS (scripts/gpu_wheels.py)"
    "$PYTHON" scripts/gpu_wheels.py --out "$WHEELS" || {
        echo "[gpu.sh] FAILED: the wheels above are missing; nothing to carry" >&2
        exit 3
    }
    git check-ignore -q "$WHEELS" 2>/dev/null ||
        echo "[gpu.sh] warning: $WHEELS is not ignored by git; the device tool carries only ignored paths named in carry" >&2
    cat <<EOF

[gpu.sh] ready. Run on the GPU machine (device tool, kind nvidia-h200):
    run(command="bash scripts/gpu.sh --on-device $suite", carry=["$WHEELS"], timeout_s=600)
Its files come back under files_at: ${suite}-<UTC time>.tar.gz (the whole results folder; unpack it
into reports/bench/), summary.md and run.log.
EOF
    exit 0
fi

# ---------------------------------------------------------------------------------------------- device
stamp=$(date -u +%Y%m%dT%H%M%SZ)
name=$suite-$stamp
RES=${GPU_RESULTS_DIR:-reports/bench/$name}
name=$(basename "$RES")
if [ -e "$RES" ]; then
    echo "gpu.sh: refusing to write into $RES: it exists (results are never written over; set GPU_RESULTS_DIR to a new folder)" >&2
    exit 2
fi
mkdir -p "$RES" || exit 2
exec > >(tee -a "$RES/run.log") 2>&1
HARD_LIMIT=${HARD_LIMIT:-570}
SITE=${GPU_SITE:-/tmp/higgs-site}
FULL=${FULL:-/tmp/higgs-full}
step() { echo "[gpu.sh +${SECONDS}s] $*"; }
left() { local l=$((HARD_LIMIT - SECONDS)); echo $((l > 1 ? l : 1)); }   # seconds left (timeout 0 would mean none)

finish() {   # $1: exit status; writes summary.md, packs the folder into $OUT
    local status=$1
    {
        echo "# gpu.sh $suite: exit status $status after ${SECONDS} s"
        echo
        echo "results folder: $RES (packed: $name.tar.gz)"
        echo
        [ -f "$RES/env.txt" ] && { echo '```'; cat "$RES/env.txt"; echo '```'; echo; }
        case "$suite" in
        mutants)
            if [ -f "$RES/table.md" ]; then cat "$RES/table.md"; else echo "no table.md (see run.log)"; fi ;;
        trace)
            if [ -f "$RES/trace_suite.md" ]; then cat "$RES/trace_suite.md"; else echo "no trace_suite.md (see run.log)"; fi ;;
        speed | harness)
            if [ -f "$RES/bench.md" ]; then cat "$RES/bench.md"; else echo "no bench.md was written (see run.log)"; fi ;;
        tests)
            echo '```'; grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed|skipped|error" "$RES/pytest.log" 2>/dev/null | tail -40; echo '```' ;;
        esac
    } >"$RES/summary.md"
    step "summary ($RES/summary.md):"
    sed -n '1,12p' "$RES/summary.md"
    if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
        cp "$RES/summary.md" "$RES/run.log" "$OUT"/
        # run.log is still being written: tar may report it changed, which costs nothing here.  Training run
        # folders (checkpoints) and raw traces stay behind: the device tool brings back 16 MiB a file.
        timeout 60 tar -czf "$OUT/$name.tar.gz" --exclude="$name/run-*" --exclude="$name/trace-*" \
            -C "$(dirname "$RES")" "$name" 2>/dev/null || step "tar: $(ls -l "$OUT/$name.tar.gz" 2>&1)"
        step "packed into \$OUT: $name.tar.gz, summary.md, run.log"
    fi
    exit "$status"
}

step "suite $suite -> $RES (hard limit ${HARD_LIMIT} s)"
if [ ! -f "$WHEELS/manifest.txt" ]; then
    step "FAILED: no $WHEELS/manifest.txt: build the wheels where pip works (scripts/gpu.sh --prepare $suite) and carry $WHEELS"
    finish 3
fi
missing=$(awk '{print $2}' "$WHEELS/manifest.txt" | while read -r whl; do [ -f "$WHEELS/$whl" ] || echo "$whl"; done)
if [ -n "$missing" ]; then
    step "FAILED: wheels listed in $WHEELS/manifest.txt are missing:"; echo "$missing"
    finish 3
fi
step "installing $(wc -l <"$WHEELS/manifest.txt") wheels into $SITE (--no-deps --target)"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl ||
    { step "FAILED: pip install of $WHEELS"; finish 3; }
export PYTHONPATH="$SITE:$repo" PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false PYTHONWARNINGS="ignore::SyntaxWarning,ignore::FutureWarning"
"$PYTHON" - "$WHEELS/manifest.txt" >"$RES/env.txt" <<'EOF' || { cat "$RES/env.txt"; step "FAILED: the installed packages are not the locked ones, or no CUDA device"; finish 3; }
import os
import sys
from importlib.metadata import version
import torch
bad = []
for line in open(sys.argv[1]):
    pin = line.split()[0]
    name, want = pin.split("==")
    got = version(name)
    if got != want:
        bad.append(f"{name}: {got} imported, {want} locked")
import boson_multimodal, peft, transformers  # noqa: F401,E401  (import check)
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"peft {peft.__version__}, python {sys.version.split()[0]}")
print("GPUs:", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none")
for b in bad:
    print("MISMATCH", b)
cpu_ok = os.environ.get("GPU_ALLOW_CPU") == "1"
if not torch.cuda.is_available():
    print("no CUDA device" + (" (GPU_ALLOW_CPU=1: a dry run of the flow)" if cpu_ok else ""))
sys.exit(1 if bad or not (torch.cuda.is_available() or cpu_ok) else 0)
EOF
cat "$RES/env.txt"
echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)" >>"$RES/env.txt"

case "$suite" in
speed)
    step "speed: full checkpoint into $FULL, then reference / custom / yardstick at batch 8, 32, 64, 3 repeats at 8, profile at 32"
    timeout -s KILL "$(left)" "$PYTHON" -m bench --build-full "$FULL" --sections train --configs lora-common \
        --batch-sizes 8,32,64 --repeats 3 --repeat-steps 40 --yardstick --profile-batch 32 --profile-steps 3 --steps 8 --warmup 5 \
        --no-flop-count --deadline-s "${BUDGET:-330}" --out "$RES" ${BENCH_ARGS:-}
    status=$?
    ;;
harness)
    step "harness: full checkpoint into $FULL, both training steps at batch 4, then compare --stage all (4 samples)"
    timeout -s KILL "$(left)" "$PYTHON" -m bench --build-full "$FULL" --sections train,harness \
        --configs lora-common --batch-sizes 4 --steps 5 --warmup 3 --no-flop-count --compare-samples 4 \
        --ddp-world-size 0 --compare-progress --out "$RES" ${BENCH_ARGS:-}
    status=$?
    ;;
trace)
    if [ "${TRACE_SIZE:-full}" = tiny ]; then
        step "trace: tiny checkpoint into /tmp/higgs-tiny, both CLIs traced (scripts/gpu_trace_suite.py)"
        timeout -s KILL "$(left)" "$PYTHON" -m higgs_common.assets.build --size tiny --out /tmp/higgs-tiny &&
            timeout -s KILL "$(left)" "$PYTHON" scripts/gpu_trace_suite.py --full /tmp/higgs-tiny --out "$RES" \
                --steps ${TRACE_STEPS:-10} ${TRACE_ARGS:-}
    else
        step "trace: full checkpoint into $FULL, both CLIs traced (scripts/gpu_trace_suite.py)"
        timeout -s KILL "$(left)" "$PYTHON" -c "import sys, torch; from bench.single import build_full_assets; build_full_assets(__import__('pathlib').Path(sys.argv[1]), torch.device('cuda'))" "$FULL" &&
            timeout -s KILL "$(left)" "$PYTHON" scripts/gpu_trace_suite.py --full "$FULL" --out "$RES" --steps ${TRACE_STEPS:-10} ${TRACE_ARGS:-}
    fi
    status=$?
    ;;
mutants)
    step "mutants: tiny checkpoint, then the speed-path and precision trace mutants under the CUDA defaults"
    timeout -s KILL "$(left)" "$PYTHON" -m higgs_common.assets.build --size tiny &&
        timeout -s KILL "$(left)" "$PYTHON" -m tests.mutation.run_trace --gpu --paths speed precision \
            --precision bf16 --jobs "${MUTANT_JOBS:-4}" --timeout 300 --out "$RES" ${MUTANT_IDS:+--ids $MUTANT_IDS}
    status=$?
    ;;
tests)
    step "tests: pytest -m gpu (builds the tiny checkpoint first)"
    timeout -s KILL "$(left)" "$PYTHON" -m pytest -m gpu -p no:cacheprovider -rA -q --junitxml "$RES/junit.xml" ${PYTEST_ARGS:-} tests \
        2>&1 | tee "$RES/pytest.log"
    status=${PIPESTATUS[0]}
    ;;
esac
[ "$status" = 137 ] && step "cut at the hard limit (${HARD_LIMIT} s): what was measured is in $RES"
step "$suite finished with exit status $status"
finish "$status"
