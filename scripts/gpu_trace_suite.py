"""The `trace` suite of scripts/gpu.sh: both training CLIs traced on the full checkpoint on one GPU.

Per CLI, at the same batch size and --max-steps (so the same schedule):
1. one run of 2 x --steps optimizer steps, traced with summaries only (--max-numel 0, the full-size mode)
   for its first --steps steps: the trace's overhead per step is the median step time (from the step
   times each CLI logs in metrics.jsonl: custom `wall_s`, reference `step_seconds`) of the traced
   steps after the warm-up (compile, allocator, autotuning) against that of the untraced steps after
   them, in the same process (no run-to-run variance; the hooks left installed but idle are counted
   as untraced);
2. its speed paths off (custom `--speed none`, reference `--no-autocast`), traced with tensors up to
   --max-numel for the first 3 steps: compare-traces --precision bf16 --common-steps against (1)'s trace.
Both runs of a CLI train with LoRA dropout 0, so the comparison sees the paths' arithmetic, not the
different dropout masks of paths that draw their random numbers differently.
Writes OUT/trace_suite.md and OUT/trace_suite.json; reports of each comparison under OUT/.
Exit 0 when both comparisons pass (with --overhead-only: when the timed runs exit 0).

--overhead-only times a window instead (`higgs-diff trace --start-step`): 3 x --steps optimizer steps,
steps --steps+1 .. 2 x --steps traced, and compares them with the untraced steps on both sides of the
window (after the warm-up), so a step time that still falls or rises through the run does not read
as the trace's cost.

--profile-host runs (1) under cProfile and writes OUT/host-profile-<cli>.txt: the traced process's
host time by function (the recorder's hooks among them), to say where an overhead goes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str], log: Path) -> tuple[int, float]:
    t0 = time.time()
    with open(log, "w") as fh:
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    return code, time.time() - t0


def step_walls(run_dir: Path) -> dict[int, float]:
    """Seconds per optimizer step by step number (custom: wall_s, reference: step_seconds)."""
    f = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.is_file() else []
    return {int(r.get("step", 0)): float(r.get("wall_s", r.get("step_seconds")))
            for r in rows if r.get("wall_s", r.get("step_seconds")) is not None}


# `python -c PROFILED_MODULE OUT.prof MODULE ARGS...`: run MODULE as __main__ under cProfile and exit with ITS
# status (`python -m cProfile` swallows SystemExit, so a failing training run would exit 0).
PROFILED_MODULE = """
import cProfile, runpy, sys
out, module = sys.argv[1], sys.argv[2]
sys.argv = [module] + sys.argv[3:]
prof, code = cProfile.Profile(), 0
try:
    prof.runcall(runpy.run_module, module, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
finally:
    prof.dump_stats(out)
sys.exit(code)
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", type=Path, required=True, help="full checkpoint folder (model/, audio_tokenizer/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=10,
                   help="optimizer steps traced; the timed run makes twice as many (default 10)")
    p.add_argument("--warmup", type=int, default=4, help="steps left out of the step-time median (default 4)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--custom-only", action="store_true", help="leave out the reference CLI (short device budget)")
    p.add_argument("--overhead-only", action="store_true", help="only the timed run (1), no comparison")
    p.add_argument("--profile-host", action="store_true", help="run (1) under cProfile (module docstring)")
    args = p.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    paths = ["--model-path", str(args.full / "model"), "--audio-tokenizer-path", str(args.full / "audio_tokenizer")]
    steps = ["--max-steps", str((3 if args.overhead_only else 2) * args.steps)]
    window = ["--start-step", str(args.steps + 1)] if args.overhead_only else []
    # LoRA dropout 0 on both runs of each CLI: the speed paths draw their random numbers differently
    # (torch.compile's kernels draw their own seeds), so with dropout on their masks differ and the
    # comparison would measure dropout's noise, not the paths' arithmetic.
    clis = {"custom": ([py, "-m", "custom_impl.train", *paths, *steps, "--batch-size", str(args.batch_size),
                        "--grad-accum", "1", "--lora-dropout", "0"], ["--speed", "none"]),
            "reference": ([py, "-m", "reference_impl.train", *paths, *steps, "--use-lora", "--lora-dropout", "0",
                           "--per-device-train-batch-size", str(args.batch_size)], ["--no-autocast"])}
    if args.custom_only:
        del clis["reference"]
    trace = [py, "-m", "harness.trace.run", "--quiet"]
    runs: dict[str, dict] = {}
    summary: dict = {"batch_size": args.batch_size, "steps": args.steps, "warmup_left_out": args.warmup}

    def go(name: str, cmd: list[str]) -> None:
        print(f"[trace-suite] {name}", flush=True)
        code, wall = run(cmd, out / f"{name}.log")
        runs[name] = {"exit": code, "wall_s": round(wall, 1)}
        print(f"[trace-suite] {name}: exit {code} after {wall:.0f} s", flush=True)

    for side, (cmd, plain) in clis.items():
        prof = out / f"host-profile-{side}.prof"
        timed = [py, "-c", PROFILED_MODULE, str(prof), *cmd[2:]] if args.profile_host else cmd
        go(f"{side}-traced", trace + ["--out", str(out / f"trace-{side}"), "--steps", str(args.steps), *window,
                                       "--max-numel", "0", "--"] + timed + ["--output-dir", str(out / f"run-{side}-traced")])
        if args.profile_host and prof.is_file():
            write_host_profile(prof, out / f"host-profile-{side}.txt")
            prof.unlink()
        walls = step_walls(out / f"run-{side}-traced")
        if args.overhead_only:
            summary[side] = overhead_row(walls, args, out / f"trace-{side}")
            continue
        go(f"{side}-plain-traced", trace + ["--out", str(out / f"trace-{side}-plain"), "--steps", "3", "--"] + cmd
           + plain + ["--output-dir", str(out / f"run-{side}-plain")])
        go(f"{side}-compare", [py, "-m", "harness.trace.cli", str(out / f"trace-{side}-plain"), str(out / f"trace-{side}"),
                               "--precision", "bf16", "--common-steps", "--quiet", "--out", str(out / f"report-{side}")])
        row = overhead_row(walls, args, out / f"trace-{side}")
        f = out / f"report-{side}" / "report.json"
        if f.is_file():
            r = json.loads(f.read_text())
            fd = r.get("first_divergence") or {}
            row["compare"] = {"verdict": r.get("verdict"), "headline": r.get("summary"),
                              "first_divergence": {k: fd.get(k) for k in ("stage", "field", "cause")} if fd else None}
        summary[side] = row
    summary["runs"] = runs
    (out / "trace_suite.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# Trace suite (checkpoint {args.full}, one GPU)", "",
             _design(args), "", "| run | exit | wall s |", "|---|---|---|"]
    lines += [f"| {k} | {v['exit']} | {v['wall_s']} |" for k, v in runs.items()]
    lines += ["", "| CLI | step s untraced | step s traced (summaries) | overhead | recorder host s per step "
              "(share of untraced step) | summary read-back s | speed paths vs off |", "|---|---|---|---|---|---|---|"]
    for side in clis:
        row = summary[side]
        ov = row.get("trace_overhead")
        share = row.get("recorder_host_share")
        cmp_ = row.get("compare") or {}
        verdict = ("not run (--overhead-only)" if args.overhead_only
                   else f"{cmp_.get('verdict', 'no report')}: {cmp_.get('headline', '')}")
        lines.append(f"| {side} | {_fmt(row['step_s_untraced'])} | {_fmt(row['step_s_traced'])} | "
                     f"{'-' if ov is None else f'{ov:+.1%}'} | {_fmt(row.get('recorder_host_s'))} "
                     f"({'-' if share is None else f'{share:.1%}'}) | {_fmt(row.get('recorder_readback_s'))} | "
                     f"{verdict} |")
    lines += ["", "overhead: traced against untraced step time in one process (includes any warm-up still "
              "going on in the traced steps); recorder host s: the recorder's own time in its hooks, "
              "summaries and file writing, from each step's `recorder` record (the read-back also waits for "
              "the step's GPU work, which an untraced step waits for at its own next sync)."]
    (out / "trace_suite.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.overhead_only:
        return 0 if all(runs[f"{s}-traced"]["exit"] == 0 for s in clis) else 1
    return 0 if all((summary[s].get("compare") or {}).get("verdict") == "pass" for s in clis) else 1


def recorder_cost(trace_dir: Path, first: int, last: int) -> dict[str, float | None]:
    """Median over steps first..last of the recorder's own host seconds and summary read-back seconds
    (each step's `recorder` record, rank 0)."""
    host, read = [], []
    for step in range(first, last + 1):
        f = trace_dir / "rank0" / f"step-{step:04d}.json"
        rec = (json.loads(f.read_text()).get("recorder") or {}) if f.is_file() else {}
        if "host_s" in rec:
            host.append(rec["host_s"])
            read.append(rec.get("readback_s", 0.0))
    return {"recorder_host_s": statistics.median(host) if host else None,
            "recorder_readback_s": statistics.median(read) if read else None}


def overhead_row(walls: dict[int, float], args: argparse.Namespace, trace_dir: Path) -> dict:
    """Median traced (after the warm-up) and untraced step seconds, their ratio, every step's seconds,
    and the recorder's own host time per traced step (`recorder_cost`) against the untraced step.
    Traced steps: 1..steps, or with --overhead-only the window steps+1..2*steps (module docstring)."""
    n = args.steps
    if args.overhead_only:
        first, last = n + 1, 2 * n
        traced = [w for s, w in walls.items() if first <= s <= last]
        untraced = [w for s, w in walls.items() if args.warmup < s < first or s > last]
    else:
        first, last = args.warmup + 1, n
        traced = [w for s, w in walls.items() if first <= s <= last]
        untraced = [w for s, w in walls.items() if s > n]
    row: dict = {"step_s_untraced": statistics.median(untraced) if untraced else None,
                 "step_s_traced": statistics.median(traced) if traced else None,
                 "steps_timed": [len(untraced), len(traced)], "step_s": {str(k): round(v, 4) for k, v in sorted(walls.items())}}
    if untraced and traced:
        row["trace_overhead"] = row["step_s_traced"] / row["step_s_untraced"] - 1
    row.update(recorder_cost(trace_dir, first, last))
    if row["recorder_host_s"] is not None and untraced:
        row["recorder_host_share"] = row["recorder_host_s"] / row["step_s_untraced"]
    return row


def write_host_profile(prof: Path, txt: Path) -> None:
    """The cProfile dump as text: top functions by cumulative and by own time, and the recorder's."""
    import io
    import pstats
    buf = io.StringIO()
    stats = pstats.Stats(str(prof), stream=buf).strip_dirs()
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats("recorder", 30)
    txt.write_text(buf.getvalue())


def _design(args: argparse.Namespace) -> str:
    n, w = args.steps, args.warmup
    if args.overhead_only:
        return (f"batch {args.batch_size}, {3 * n} optimizer steps, steps {n + 1}-{2 * n} traced; step time = median "
                f"of the traced steps and of the untraced steps {w + 1}-{n} and {2 * n + 1}-{3 * n} (same process)")
    return (f"batch {args.batch_size}, {2 * n} optimizer steps per run, the first {n} traced; step time = median "
            f"of steps {w + 1}-{n} (traced) and {n + 1}-{2 * n} (untraced, same process)")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    sys.exit(main())
