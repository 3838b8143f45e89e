"""The `trace` suite of scripts/gpu.sh: both training CLIs traced on the full checkpoint on one GPU.

1. custom CLI, CUDA defaults (compile, index dual FFN, fast head, fused AdamW, tf32, bf16): untraced,
   then traced with summaries only (--max-numel 0) for the same steps: the trace's overhead per step
   (metrics.jsonl wall_s, median of the steps after compile warm-up);
2. custom CLI with every speed switch off (--speed none), traced (tensors up to --max-numel), the same
   --max-steps (so the same schedule): compare-traces --precision bf16 --common-steps against (1);
3. reference CLI (LoRA, its bf16 autocast) traced vs --no-autocast traced: compare-traces --precision bf16;
Writes OUT/trace_suite.md and OUT/trace_suite.json; reports of each comparison under OUT/.
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


def step_walls(run_dir: Path, skip: int) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r["wall_s"] for r in rows if "wall_s" in r and r["step"] > skip]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--full", type=Path, required=True, help="full checkpoint folder (model/, audio_tokenizer/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--custom-only", action="store_true", help="leave out the reference CLI (short device budget)")
    args = p.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    paths = ["--model-path", str(args.full / "model"), "--audio-tokenizer-path", str(args.full / "audio_tokenizer")]
    custom = [py, "-m", "custom_impl.train", *paths, "--max-steps", str(args.steps), "--batch-size",
              str(args.batch_size), "--grad-accum", "1"]
    trace = [py, "-m", "harness.trace.run", "--quiet"]
    res: dict = {}

    def say(msg: str) -> None:
        print(f"[trace-suite] {msg}", flush=True)

    say("custom traced (summaries only)")
    res["custom_traced"] = run(trace + ["--out", str(out / "trace-custom"), "--steps", str(args.steps), "--max-numel", "0",
                                        "--"] + custom + ["--output-dir", str(out / "run-custom-traced")],
                               out / "custom-traced.log")
    say("custom --speed none traced (3 steps)")
    res["custom_plain"] = run(trace + ["--out", str(out / "trace-custom-plain"), "--steps", "3", "--"] + custom
                              + ["--speed", "none", "--output-dir", str(out / "run-custom-plain")], out / "custom-plain.log")
    say("compare: plain (A) vs CUDA defaults (B)")
    res["compare_custom"] = run([py, "-m", "harness.trace.cli", str(out / "trace-custom-plain"), str(out / "trace-custom"),
                                 "--precision", "bf16", "--common-steps", "--quiet", "--out", str(out / "report-custom")],
                                out / "compare-custom.log")
    say("custom untraced")
    res["custom_untraced"] = run(custom + ["--output-dir", str(out / "run-custom-untraced")], out / "custom-untraced.log")
    walls_u = step_walls(out / "run-custom-untraced", skip=3) if (out / "run-custom-untraced" / "metrics.jsonl").is_file() else []
    walls_t = step_walls(out / "run-custom-traced", skip=3) if (out / "run-custom-traced" / "metrics.jsonl").is_file() else []
    summary = {"custom_step_s_untraced": statistics.median(walls_u) if walls_u else None,
               "custom_step_s_traced": statistics.median(walls_t) if walls_t else None}
    if walls_u and walls_t:
        summary["custom_trace_overhead"] = summary["custom_step_s_traced"] / summary["custom_step_s_untraced"] - 1
    if not args.custom_only:
        reference = [py, "-m", "reference_impl.train", *paths, "--max-steps", "3", "--use-lora",
                     "--per-device-train-batch-size", str(args.batch_size)]
        say("reference traced (bf16 autocast, as configured)")
        res["reference_traced"] = run(trace + ["--out", str(out / "trace-ref"), "--max-numel", "0", "--"] + reference
                                      + ["--output-dir", str(out / "run-ref-traced")], out / "ref-traced.log")
        say("reference --no-autocast traced")
        res["reference_plain"] = run(trace + ["--out", str(out / "trace-ref-plain"), "--"] + reference
                                     + ["--no-autocast", "--output-dir", str(out / "run-ref-plain")], out / "ref-plain.log")
        res["compare_reference"] = run([py, "-m", "harness.trace.cli", str(out / "trace-ref-plain"),
                                        str(out / "trace-ref"), "--precision", "bf16", "--quiet", "--out",
                                        str(out / "report-ref")], out / "compare-ref.log")
    summary["runs"] = {k: {"exit": v[0], "wall_s": round(v[1], 1)} for k, v in res.items()}
    for name in ("report-custom", "report-ref"):
        f = out / name / "report.json"
        if f.is_file():
            r = json.loads(f.read_text())
            summary[name] = {"verdict": r["verdict"], "headline": r.get("summary"),
                             "first_divergence": r["first_divergence"] and {k: r["first_divergence"][k] for k in
                                                                           ("stage", "field", "cause")}}
    (out / "trace_suite.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["# Trace suite (full checkpoint, one GPU)", "", "| run | exit | wall s |", "|---|---|---|"]
    lines += [f"| {k} | {v['exit']} | {v['wall_s']} |" for k, v in summary["runs"].items()]
    lines += ["", f"custom step (median after warm-up): untraced {summary.get('custom_step_s_untraced')} s, traced "
              f"{summary.get('custom_step_s_traced')} s, overhead {summary.get('custom_trace_overhead')}", ""]
    for name in ("report-custom", "report-ref"):
        if name in summary:
            lines.append(f"- {name}: {summary[name]['verdict']}: {summary[name]['headline']}")
    (out / "trace_suite.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    wanted = ("report-custom",) if args.custom_only else ("report-custom", "report-ref")
    return 0 if all(summary.get(n, {}).get("verdict") == "pass" for n in wanted) else 1


if __name__ == "__main__":
    sys.exit(main())
