"""`higgs-diff compare-traces A B`: diff two traces written by `higgs-diff trace`.

    higgs-diff compare-traces traces/clean traces/suspect            # report under reports/compare-traces
    higgs-diff compare-traces A B --out out/ --precision bf16       # speed paths vs plain, bf16 tolerance

A is the run you trust, B the run under test.  The report (report.json / .md / .html, the same schema
as `higgs-diff compare`) opens with the symptoms of both runs, then the first divergence: step,
stage, field, both values, how they relate, and the code location (file:line) in B that produced it.

Exit status: 0 nothing unexpected diverged, 1 something did, 2 bad usage or a folder that is not a trace.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="higgs-diff compare-traces",
        description="Compare two training traces (written by `higgs-diff trace`): symptoms of both runs, then the "
                    "first step, stage and field where run B parts from run A, with the code location that "
                    "produced it.",
        epilog="exit status: 0 nothing unexpected diverged, 1 something did, 2 bad usage or a folder that is "
               "not a trace.")
    p.add_argument("a", type=Path, help="trace of the run you trust")
    p.add_argument("b", type=Path, help="trace of the run under test")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: reports/compare-traces)")
    p.add_argument("--precision", choices=("exact", "bf16"), default="exact",
                   help="float tolerance: exact = torch.testing's defaults for the recorded dtype (same program, "
                        "same device); bf16 = bf16 rounding, for speed paths vs the plain pipeline (default: exact)")
    p.add_argument("--common-steps", action="store_true",
                   help="compare only the steps both traces recorded (a resumed run, a shorter trace of a longer run)")
    p.add_argument("--quiet", action="store_true", help="only the verdict panel")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console

    from harness.report.render import write_report
    from harness.report.terminal import print_summary
    from harness.trace.compare import Tolerance, compare_traces
    from harness.trace.load import Trace, TraceError
    from higgs_common import REPO_ROOT

    console = Console()
    try:
        a, b = Trace.load(args.a), Trace.load(args.b)
    except TraceError as exc:
        console.print(f"[bold red]bad input:[/] {exc}", soft_wrap=True, markup=False)
        return EXIT_USAGE
    progress = (lambda _m: None) if args.quiet else (lambda m: console.log(m))
    report = compare_traces(a, b, tolerance=Tolerance.for_precision(args.precision), progress=progress,
                            common_steps_only=args.common_steps)
    out = args.out or (REPO_ROOT / "reports" / "compare-traces")
    paths = write_report(report, out)
    print_summary(report, console=console, paths=paths)
    return EXIT_OK if report.verdict == "pass" else EXIT_DIVERGED


if __name__ == "__main__":
    sys.exit(main())
