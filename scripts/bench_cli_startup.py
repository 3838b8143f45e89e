"""Measure how long the command lines take to answer `--help` and a usage error (no pipeline run).

    python scripts/bench_cli_startup.py [--repeat 5]

Each command runs in a fresh interpreter (`python -m MODULE ARGS`), `--repeat` times; the table
gives the median and the worst wall time in seconds and whether torch was imported (checked with
`-X importtime`).  A command that answers without importing torch takes well under a second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS: tuple[tuple[str, ...], ...] = (
    ("harness.compare", "--help"),
    ("harness.compare", "--stage", "no-such-stage"),
    ("harness.check_adapter", "--help"),
    ("harness.check_adapter",),
    ("harness.cli", "--help"),
    ("harness.cli", "compare", "--help"),
)


def time_command(args: tuple[str, ...], repeat: int) -> tuple[list[float], bool, int]:
    """(wall seconds of each run, whether torch was imported, exit status of the last run)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    times, rc = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        rc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True).returncode
        times.append(time.perf_counter() - start)
    probe = subprocess.run([sys.executable, "-X", "importtime", "-m", *args], cwd=REPO, env=env,
                           capture_output=True, text=True)
    imported_torch = any(line.rsplit("|", 1)[-1].strip() == "torch" for line in probe.stderr.splitlines()
                         if line.startswith("import time:"))
    return times, imported_torch, rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="runs per command (default: %(default)s)")
    args = p.parse_args(argv)
    print(f"{'command':<52} {'median s':>9} {'max s':>7} {'exit':>5}  torch")
    for cmd in COMMANDS:
        times, imported_torch, rc = time_command(cmd, args.repeat)
        print(f"{'python -m ' + ' '.join(cmd):<52} {statistics.median(times):>9.3f} {max(times):>7.3f} {rc:>5}  "
              f"{'imported' if imported_torch else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
