"""higgs-diff: differential testing of Higgs Audio v2 training pipelines.

Public API (everything else is internal and may move):

    from harness import compare                  # compare(reference=SPEC, custom=SPEC, stage=...) -> Report
    from harness.testing import assert_pipelines_agree
    from harness.report import Report

`harness.compare` is the function `harness.api.compare`; its parameters are the options of
`python -m harness.compare` (`--fault NAME` -> `fault=`).  `compare.main(argv)` runs that command
line in-process.

Layout: `engine` (adapters, the stage runner, diffs, tolerances), `semantics` (declared conventions
-> expected differences, projections, the loss and schedule oracles), `explain` (relations and
causes), `report` (data model, JSON/Markdown/HTML, terminal); the command-line entry points are
`harness.compare`, `harness.check_adapter` and `harness.cli` (`higgs-diff`).
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any, Sequence

from harness.api import compare


def _compare_main(argv: Sequence[str] | None = None) -> int:
    """`python -m harness.compare` in-process: parse `argv`, run, write the report; returns the exit status."""
    from harness.compare import main

    return main(argv)


compare.main = _compare_main    # type: ignore[attr-defined]


class _Package(ModuleType):
    """Keeps `harness.compare` the function: importing the submodule `harness.compare` (the CLI, as
    `from harness.compare import main` does) would otherwise rebind the package attribute to it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "compare" and isinstance(value, ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
