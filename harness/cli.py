"""`higgs-diff`: one console command for the harness's entry points.

    higgs-diff compare ...        = python -m harness.compare ...
    higgs-diff check-adapter ...  = python -m harness.check_adapter ...
    higgs-diff audit DATA ...     = python -m harness.audit DATA ...
    higgs-diff bench ...          = python -m harness.bench ...
    higgs-diff --version

Everything after the subcommand name is passed untouched to that module's ``main(argv)``, so its
options, its ``--help`` and its exit status are exactly those of the ``python -m`` form.  Modules are
imported only when their subcommand runs: ``higgs-diff --help`` starts without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Sequence

DISTRIBUTION = "higgs-diff"
EXIT_USAGE = 2


@dataclass(frozen=True)
class Subcommand:
    """A subcommand: the module whose ``main(argv) -> int`` it runs, and a one-line summary."""

    module: str
    summary: str

    def entry(self) -> Callable[[Sequence[str] | None], int | None]:
        """The module's ``main`` (imported now; an absent module exits with status 2, naming it)."""
        try:
            module = importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (self.module == exc.name or self.module.startswith(exc.name + ".")):
                raise                       # a dependency of the module is missing: show that
            print(f"higgs-diff: this installation has no module {self.module!r} (needed by this "
                  f"subcommand): {exc}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
        return module.main


SUBCOMMANDS: dict[str, Subcommand] = {
    "compare": Subcommand("harness.compare",
                          "diff the reference and custom pipelines stage by stage and write a report "
                          "(= python -m harness.compare)"),
    "check-adapter": Subcommand("harness.check_adapter",
                                "check a pipeline adapter module (SPEC) against the stage contract "
                                "(= python -m harness.check_adapter)"),
    "trace": Subcommand("harness.trace.run",
                        "run a training command unchanged and record what its first optimizer steps do"),
    "compare-traces": Subcommand("harness.trace.cli",
                                 "diff two traces: symptoms first, then the first step/stage/field where they part"),
    "check-resume": Subcommand("harness.trace.resume",
                               "kill a training command after step k, resume it, and check it continues exactly"),
    "check-flags": Subcommand("harness.trace.flags",
                              "change each option of a training command in turn and name the ones the run ignores"),
    "bench": Subcommand("harness.bench.single",
                        "benchmark both pipelines and the harness on one device (= python -m harness.bench)"),
    "audit": Subcommand("harness.audit",
                        "check a data set (manifest, reference folder or ChatML JSON) before training: every "
                        "finding names file, sample and field (= python -m harness.audit)"),
}


def package_version() -> str:
    """The installed distribution's version (``unknown`` when running from a clone without install)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: only ``--help``, ``--version`` and the list of subcommands."""
    p = argparse.ArgumentParser(
        prog="higgs-diff",
        description="Differential testing harness for Higgs Audio v2 training pipelines.",
        epilog="Each subcommand takes exactly the options of its `python -m` form; "
               "`higgs-diff COMMAND --help` lists them. Training: higgs-train-reference, higgs-train-custom.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, cmd in SUBCOMMANDS.items():
        sub.add_parser(name, help=cmd.summary, add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``higgs-diff``; returns the exit status of the subcommand (2 for bad usage)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        status = SUBCOMMANDS[args[0]].entry()(args[1:])
        return 0 if status is None else int(status)
    parser = build_parser()
    parser.parse_args(args)            # --help / --version exit here; an unknown command is an error
    parser.error(f"a command is required: one of {', '.join(SUBCOMMANDS)}")
    return EXIT_USAGE                  # not reached: parser.error exits


if __name__ == "__main__":
    sys.exit(main())
