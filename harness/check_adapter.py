"""`python -m harness.check_adapter SPEC`: does an adapter implement the stage contract?

Run this first when you write an adapter for your own pipeline (docs/adapters.md): it loads SPEC
(a module path or a .py file), runs it on the embedded tiny checkpoint and the shipped samples, and
prints pass/fail per check with the reason; a failure says what to change in the adapter.

Exit status: 0 every check passed, 1 a check failed, 2 bad usage or an adapter that does not import.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    from harness.adapters.checks import checks_epilog

    p = argparse.ArgumentParser(
        prog="python -m harness.check_adapter",
        description="Check that a pipeline adapter (SPEC) implements the stage contract of higgs_common/stages.py: "
                    "run it on the embedded tiny checkpoint and the shipped samples, and print pass/fail per check "
                    "with what to change. Run it before comparing your pipeline with python -m harness.compare "
                    "--custom SPEC (docs/adapters.md).",
        epilog=checks_epilog() + "\n\nexit status: 0 every check passed, 1 a check failed, 2 bad usage or an adapter "
                                 "that does not import.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="SPEC", help="adapter: a module path (mypkg.higgs_stages) or a .py file")
    p.add_argument("--samples", type=int, default=4, help="shipped samples to run on (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from harness.adapters.conformance import run_checks
    from harness.engine.sides import AdapterError

    console = Console()
    try:
        results = run_checks(args.spec, samples=args.samples)
    except AdapterError as exc:
        console.print(f"[bold red]bad input:[/] {type(exc).__name__}: {escape(str(exc))}", soft_wrap=True)
        return EXIT_BAD_INPUT
    table = Table(title=f"check_adapter {escape(args.spec)}")
    for col in ("check", "result", "reason"):
        table.add_column(col)
    for r in results:
        table.add_row(r.name, "[green]pass[/]" if r.passed else "[bold red]FAIL[/]", escape(r.reason))
    console.print(table)
    failed = [r.name for r in results if not r.passed]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed" + (f"; failed: {failed}" if failed else ""))
    if args.json:
        args.json.write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
