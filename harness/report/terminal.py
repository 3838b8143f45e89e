"""Terminal summary of a run (rich): per-stage table, first-divergence panel, output paths."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from harness.engine.diff import jsonable
from harness.report import Report

_STATUS_STYLE = {"ok": "green", "expected": "yellow", "diverged": "bold red",
                 "error": "bold dark_orange", "skipped": "dim"}
_VERDICT_STYLE = {"pass": "bold green", "diverged": "bold red", "error": "bold dark_orange"}


def _short(x: object, limit: int = 80) -> str:
    text = str(jsonable(x))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def print_summary(report: Report, console: Console | None = None,
                  paths: Mapping[str, Path] | None = None) -> None:
    """Print the stage table, the first divergence and (if given) where the report files are."""
    console = console or Console()
    console.print(Text(report.summary(), style=_VERDICT_STYLE.get(report.verdict, "")))
    for sym in report.symptoms:
        run = f"[{sym['run']}] " if sym.get("run") else ""
        line = Text(f"symptom {run}", style="bold red")
        line.append(str(sym.get("text")), style="bold")
        line.append(f": {sym.get('mechanism')}" + (f" (at {sym['location']})" if sym.get("location") else ""))
        console.print(line)
    table = Table(title=f"higgs-diff: {report.run_name} ({report.mode})")
    for col in ("stage", "status", "#fields", "#diverged", "#expected", "first field"):
        table.add_column(col)
    for st in report.ordered_stages():
        first = st.first_unexpected()
        table.add_row(st.stage, Text(st.status, style=_STATUS_STYLE.get(st.status, "")),
                      str(len(st.fields)), str(st.n_diverged), str(st.n_expected),
                      first.field if first else ("" if not st.error else _short(st.error, 60)))
    console.print(table)

    verdict = report.verdict
    fd = report.first_divergence()
    errored = next((st for st in report.ordered_stages() if st.status == "error"), None)
    if fd is None and errored is not None:
        body = Text(f"Stage {errored.stage} could not run: {errored.error}\n"
                    "Nothing diverged before it; later stages were not compared.")
    elif fd is None:
        body = Text("No unexpected divergence.")
    else:
        body = Text()
        for key in ("stage", "field", "status", "sample", "index", "reference", "custom",
                    "decoded", "relation", "cause"):
            if fd.get(key) is None:
                continue
            body.append(f"{key:>9}: ", style="bold")
            body.append(_short(fd[key], 200) + "\n")
        body.rstrip()
    console.print(Panel(body, title=Text(f"verdict: {verdict}", style=_VERDICT_STYLE.get(verdict, "")),
                        title_align="left"))
    if paths:
        for kind, path in sorted(paths.items()):
            console.print(f"  {kind:>4}: {path}")
