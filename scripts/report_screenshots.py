"""Regenerate the report screenshots of docs/reading-a-report.md (needs chromium; ~1 min on CPU).

    PYTHONPATH=. python scripts/report_screenshots.py [--out docs/img]

Runs the harness on the embedded tiny checkpoint twice (fault no-shift, and no fault), writes both
reports under OUT/reports-*, and screenshots their first viewport at 1366 x 900 and 1920 x 900, and
the terminal summary of the fault run as text.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from rich.console import Console

from harness.api import compare
from harness.report.browser import find_chromium, screenshot
from harness.report.render import write_report
from harness.report.terminal import print_summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("docs/img"))
    args = p.parse_args(argv)
    if find_chromium() is None:
        print("chromium not found (apt-get install -y chromium)", file=sys.stderr)
        return 2
    runs = {"fault": compare(faults=["no-shift"], samples=2, ddp_world_size=0, run_name="all-isolated-no-shift-seed0"),
            "clean": compare(samples=2, ddp_world_size=0, run_name="all-isolated-nofault-seed0")}
    work = Path("/tmp/higgs-diff-screenshots")
    for kind, report in runs.items():
        page = write_report(report, work / kind)["html"]
        for width in (1366, 1920):
            png = screenshot(page, args.out / f"report-{kind}-{width}.png", width=width, height=900)
            print(png)
    console = Console(file=io.StringIO(), width=80, color_system=None)
    print_summary(runs["fault"], console=console)
    (args.out / "terminal-fault-80.txt").write_text(console.file.getvalue(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
