"""The README and docs/ speak to users: short README with the two commands, no development
narrative (issue numbers, "sessions"), and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
NARRATIVE = re.compile(r"issue [0-9]|session", re.IGNORECASE)      # grep -rniE 'issue [0-9]|session'
LINK = re.compile(r"\]\(([^)\s]+)\)")
COMMANDS = ("python3 -m pip install -q 'nox>=2024.4' && python3 -m nox -s diff",
            "python3 -m pip install -q 'nox>=2024.4' && python3 -m nox -s tests")   # .ci/run calls the second


def _rel(page: Path) -> str:
    return str(page.relative_to(REPO))


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_development_narrative(page):
    hits = [f"{_rel(page)}:{n}: {line.strip()}" for n, line in enumerate(page.read_text().splitlines(), 1)
            if NARRATIVE.search(line)]
    assert not hits, ("say what the tool does, not how it was made (no issue numbers, no 'session'; a nox "
                      "session is a 'nox command'):\n" + "\n".join(hits))


def test_readme_is_short_and_has_both_commands_verbatim():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150, "README.md: keep it to ~150 lines; move detail into docs/"
    for command in COMMANDS:
        assert command in text, command
    assert "reports/" in text and "report.html" in text, "the README must say where the report is written"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue                              # a URL or an anchor on the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{_rel(page)} links to missing files: {broken}"


def test_docs_index_links_every_page():
    index = (REPO / "docs" / "README.md").read_text()
    missing = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.name != "README.md" and p.name not in index]
    assert not missing, f"docs/README.md does not link {missing}"
