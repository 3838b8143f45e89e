"""Terminal output of a run (rich): one progress channel while it runs, then the summary.

While a run goes, `RunOutput` is the ONLY channel: a progress bar over the stages (the current
stage's own messages beside it) and every log record and library warning through the same rich
console; with ``quiet`` nothing but errors.  Afterwards `print_summary` prints the per-stage table
and the verdict panel: the verdict's reason, the first divergence, its cause and the symptom of the
faults switched on, wrapped to the terminal's width and never cut short.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping, Sequence

from rich.console import Console, Group
from rich.logging import RichHandler
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from harness.engine.diff import jsonable
from harness.report.model import Report

_STATUS_STYLE = {"ok": "green", "expected": "yellow", "diverged": "bold red",
                 "error": "bold dark_orange", "skipped": "dim"}
_VERDICT_STYLE = {"pass": "bold green", "diverged": "bold red", "error": "bold dark_orange"}
# Prefix of the runner's stage-start messages (harness.engine.runner.Comparison.run).
STAGE_PREFIX = "stage "


def _value(x: object) -> str:
    return str(jsonable(x))


class RunOutput:
    """Context manager: the run's single progress channel (module docstring).

    `stages`: the stages the run will go through, in order (the bar's length).  Call the object with
    each progress message (``harness.api.compare(progress=...)``): ``"stage NAME"`` advances the bar,
    anything else is shown beside it.  On entry it routes logging and Python warnings through the
    console (``quiet``: only errors, warnings dropped); on exit it restores them.
    """

    def __init__(self, console: Console, stages: Sequence[str], *, quiet: bool = False) -> None:
        self.console = console
        self.stages = list(stages)
        self.quiet = quiet
        self._progress: Progress | None = None
        self._task: Any = None
        self._done = 0
        self._current: str | None = None
        self._saved: tuple[int, list] | None = None
        self._handler: logging.Handler | None = None
        self._showwarning = warnings.showwarning

    def __enter__(self) -> "RunOutput":
        root = logging.getLogger()
        self._saved = (root.level, list(warnings.filters))
        # handlers already there (a host application's, pytest's caplog) stay; ours prints through the console
        self._handler = RichHandler(console=self.console, show_path=False, show_time=False, markup=False,
                                    rich_tracebacks=False)
        self._handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        self._handler.setLevel(logging.ERROR if self.quiet else logging.INFO)
        root.addHandler(self._handler)
        if not self.quiet and root.level > logging.INFO:
            root.setLevel(logging.INFO)
        self._showwarning = warnings.showwarning
        if self.quiet:
            warnings.simplefilter("ignore")
        else:
            warnings.showwarning = _warning_to_log
            self._progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[stage]}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"),
                                      console=self.console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task("", total=len(self.stages) or None, stage="starting")
        return self

    def __call__(self, message: str) -> None:
        if self.quiet or self._progress is None:
            return
        if message.startswith(STAGE_PREFIX):
            name = message[len(STAGE_PREFIX):].strip()
            if self._current is not None:
                self._done += 1
            self._current = name
            self._progress.update(self._task, completed=min(self._done, len(self.stages)), stage=name,
                                  description="")
            self.console.print(Text(f"{message}", style="bold dim"), highlight=False)
        else:
            self._progress.update(self._task, description=message)
            self.console.print(Text(f"  {message}", style="dim"), highlight=False)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
        warnings.showwarning = self._showwarning
        if self._saved is not None:
            level, filters = self._saved
            root = logging.getLogger()
            root.removeHandler(self._handler)
            root.setLevel(level)
            warnings.filters[:] = filters


def _warning_to_log(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: Any = None, line: str | None = None) -> None:
    """`warnings.showwarning` replacement: one log line (the progress channel), not two on stderr."""
    where = str(filename).split("site-packages/")[-1]
    logging.getLogger("py.warnings").warning("%s: %s (%s:%d)", category.__name__, message, where, lineno)


def symptom_text(s: dict) -> str:
    """One symptom (`Report.symptoms`) in words: which run shows it, what, why, where."""
    run = f"[{s['run']}] " if s.get("run") else ""
    loc = f" (at {s['location']})" if s.get("location") else ""
    return f"{run}{s.get('text')}: {s.get('mechanism')}{loc}"


def verdict_panel(report: Report) -> Panel:
    """The verdict, its reason, the first divergence with its cause and the faults' symptoms.

    Every value is wrapped at the console width (a two-column grid: label, value); nothing is cut."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", justify="right", no_wrap=True)
    grid.add_column(overflow="fold")

    def row(label: str, value: Any, style: str = "") -> None:
        if value is None or value == "":
            return
        grid.add_row(label, Text(value if isinstance(value, str) else _value(value), style=style))

    fd = report.first_divergence()
    if fd is not None:
        row("where", f"{fd['stage']}.{fd['field']}" + (f"  (sample {fd['sample']})" if fd.get("sample") else ""))
        row("position", fd.get("decoded") or (fd.get("index") if fd.get("index") else None))
        left, right = ("declared", "actual") if fd.get("check") == "declared" else ("reference", "custom")
        row(left, fd.get("reference"))
        row(right, fd.get("custom"))
        row("relation", fd.get("relation"))
        cause = fd.get("cause") or {}
        row("cause", cause.get("mechanism") or "no rule explains it; read the relation and the window (report.html)",
            "bold" if cause else "italic")
        row("evidence", cause.get("evidence"))
        row("location", cause.get("location"))
    for s in report.symptoms:
        row("symptom", symptom_text(s))
    v = report.verdict
    # with a first divergence its "where" row says what the reason would; otherwise the reason leads
    lead = [] if fd is not None and report.mode != "propagated" else [Text(report.verdict_reason())]
    body = Group(*lead, grid) if grid.row_count else Group(*lead)
    return Panel(body, title=Text(f"verdict: {v}", style=_VERDICT_STYLE.get(v, "")), title_align="left")


def stage_table(report: Report) -> Table:
    """One row per stage: status, counts, the first undeclared divergence (names folded, never cut)."""
    table = Table(title=f"higgs-diff: {report.run_name} ({report.mode})")
    for col in ("stage", "status", "equal", "expected", "diverged"):
        table.add_column(col, no_wrap=True, justify="left" if col in ("stage", "status") else "right")
    table.add_column("first diverged field / error", overflow="fold", ratio=1)
    for st in report.ordered_stages():
        first = st.first_unexpected()
        table.add_row(st.stage, Text(st.status, style=_STATUS_STYLE.get(st.status, "")),
                      str(st.n_equal), str(st.n_expected), str(st.n_diverged),
                      first.field if first else (st.error or ""))
    return table


def print_summary(report: Report, console: Console | None = None,
                  paths: Mapping[str, Path] | None = None) -> None:
    """Print the stage table, the verdict panel and (if given) where the report files are."""
    console = console or Console()
    console.print(stage_table(report))
    console.print(verdict_panel(report))
    if paths:
        for kind, path in sorted(paths.items()):
            console.print(f"  {kind:>4}: {path}", soft_wrap=True, highlight=False)
