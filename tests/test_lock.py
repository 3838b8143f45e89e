"""The lock files: every package pinned with hashes, in step with pyproject.toml's ranges, and the
nox-built `.venv` holding exactly the locked versions."""

from __future__ import annotations

import importlib.util
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCKS = ("requirements.lock", "requirements-no-deps.lock")
_REQUIREMENT_START = re.compile(r"^[A-Za-z0-9]")


def _noxfile():
    spec = importlib.util.spec_from_file_location("higgs_diff_noxfile", REPO / "noxfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entries(path: Path) -> list[str]:
    """The lock's requirement entries, each with its continuation lines joined."""
    entries: list[str] = []
    for line in path.read_text().splitlines():
        if _REQUIREMENT_START.match(line):
            entries.append(line)
        elif line.startswith("    --hash") and entries:
            entries[-1] += " " + line.strip()
    return entries


@pytest.mark.parametrize("name", LOCKS)
def test_every_entry_is_pinned_with_hashes(name):
    entries = _entries(REPO / name)
    assert entries
    for entry in entries:
        assert "==" in entry.split()[0], f"{name}: not pinned: {entry[:80]}"
        assert "--hash=sha256:" in entry, f"{name}: no hash: {entry[:80]}"


def test_lock_files_match_pyproject():
    """Every declared requirement is pinned inside its range (else: run `nox -s lock`)."""
    assert _noxfile().lock_problems() == []


def test_venv_holds_the_locked_versions():
    """The nox-built .venv is exactly the lock (checked only when the tests run in it)."""
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip(f"not running in {REPO / '.venv'} (the environment nox builds from the lock)")
    nox = _noxfile()
    wrong = []
    for name in LOCKS:
        for package, pinned in nox.lock_pins(REPO / name).items():
            try:
                installed = metadata.version(package)
            except metadata.PackageNotFoundError:
                wrong.append(f"{package}=={pinned} is not installed")
                continue
            if Version(installed).public != Version(pinned).public:
                wrong.append(f"{package}: installed {installed}, {name} pins {pinned}")
    assert not wrong, "\n".join(wrong)
    assert canonicalize_name("higgs-diff") in {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions()}
