"""`python -m harness.check_adapter SPEC`: does an adapter implement the stage contract?

Run this first when you write an adapter for your own pipeline (docs/adapters.md): it loads SPEC
(a module path or a .py file), runs it on the embedded tiny checkpoint and the shipped samples, and
prints pass/fail per check with the reason (`harness.adapters.conformance` lists the checks).

Exit status: 0 every check passed, 1 a check failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    from harness.adapters import conformance

    p = argparse.ArgumentParser(prog="python -m harness.check_adapter", description=__doc__.split("\n\n")[0],
                                epilog="checks:\n" + conformance.__doc__.split("is checked")[1].split("\n\n")[0]
                                       .split("\n", 1)[1] + "\n\nexit status: 0 all passed, 1 a check failed, 2 bad usage",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="SPEC", help="adapter: module path (mypkg.higgs_stages) or .py file")
    p.add_argument("--samples", type=int, default=4, help="shipped samples to run on (default: 4)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rich.console import Console
    from rich.table import Table

    from harness.adapters.conformance import run_checks

    results = run_checks(args.spec, samples=args.samples)
    table = Table(title=f"check_adapter {args.spec}")
    for col in ("check", "result", "reason"):
        table.add_column(col)
    for r in results:
        table.add_row(r.name, "[green]pass[/]" if r.passed else "[bold red]FAIL[/]", r.reason)
    Console().print(table)
    failed = [r.name for r in results if not r.passed]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed" + (f"; failed: {failed}" if failed else ""))
    if args.json:
        args.json.write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
