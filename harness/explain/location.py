"""Where in a pipeline's source a named cause acts: ``path:line`` for the report's "location".

A cause that names a fault the run switched on ("... (custom fault no-shift)") is located at the
first line of the adapter's package that tests for that fault by name (a string literal holding it),
outside the fault registry itself; other causes get no location.  Paths are relative to the
repository when they lie inside it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from harness.report.model import StageResult

# Files that only list the faults (their names, stories and symptoms) are not where a fault acts.
REGISTRY_NAMES = ("faults.py",)


@lru_cache(maxsize=256)
def _site(fault: str, root: str) -> str | None:
    literal = re.compile(r"""(["'])""" + re.escape(fault) + r"\1")
    base = Path(root)
    for path in sorted(base.rglob("*.py")):
        if path.name in REGISTRY_NAMES:
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for no, line in enumerate(lines, 1):
            if literal.search(line) and not line.lstrip().startswith("#"):
                return f"{_portable(path)}:{no}"
    return None


def _portable(path: Path) -> str:
    from higgs_common import REPO_ROOT

    try:
        return str(path.resolve().relative_to(Path(REPO_ROOT).resolve()))
    except ValueError:
        return str(path)


def fault_site(fault: str, roots: Sequence[Path]) -> str | None:
    """``path:line`` of the first source line under `roots` that names `fault` in a string literal
    (the fault's switch, e.g. ``is_on(faults, "no-shift")``), or None."""
    for root in roots:
        site = _site(fault, str(root))
        if site is not None:
            return site
    return None


def attach_locations(stages: Iterable[StageResult], faults: Sequence[str], roots: Sequence[Path]) -> None:
    """Set ``cause["location"]`` (in place) of every cause that names one of `faults` and whose switch
    is found under `roots` (the adapter packages); other causes keep ``None``."""
    if not faults:
        return
    for st in stages:
        for f in st.fields:
            if not f.cause:
                continue
            named = [name for name in faults if re.search(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])",
                                                          f.cause.get("mechanism", ""))]
            sites = [s for s in (fault_site(n, roots) for n in named) if s]
            f.cause["location"] = ", ".join(sites) if sites else None
