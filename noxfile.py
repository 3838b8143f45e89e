"""Nox sessions for higgs-diff.

All sessions share ONE project virtualenv (`.venv`), created on first use from
`pyproject.toml` (the only place versions are pinned), because torch alone is ~5 GB and
installing it once per session would dominate every run.  The venv is rebuilt when
`pyproject.toml` changes (a hash stamp is kept inside it).

    nox -s diff            # build the embedded tiny checkpoint, run every harness stage
    nox -s tests           # the test suite (CPU, hypothesis `ci` profile)
    nox -s property        # only the property-based tests
    nox -s train_reference # train reference_impl on the embedded default
    nox -s train_custom    # train custom_impl on the embedded default
    nox -s assets          # (re)build the embedded checkpoint
    nox -s bench           # benchmarks (meant for the GPU machine)
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import nox

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests"]

ROOT = Path(__file__).parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".higgs-diff-stamp"


def _pyproject_hash() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_env(session: nox.Session) -> str:
    """Create/refresh `.venv` from pyproject.toml and return its python path."""
    want = _pyproject_hash()
    if PY.exists() and STAMP.exists() and STAMP.read_text().strip() == want:
        return str(PY)
    session.log("setting up .venv from pyproject.toml (first run: a few minutes)")
    if not PY.exists():
        session.run(sys.executable, "-m", "venv", str(VENV), external=True)
    pip = [str(PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    session.run(*pip, "-e", f"{ROOT}[dev]", external=True)
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["higgs-diff"]
    session.run(*pip, "--no-deps", *cfg["no-deps"], *cfg["no-deps-extras"], external=True)
    STAMP.write_text(want)
    return str(PY)


def _run(session: nox.Session, *args: str, env: dict[str, str] | None = None) -> None:
    py = ensure_env(session)
    session.run(py, *args, external=True, env=env)


@nox.session(python=False)
def assets(session: nox.Session) -> None:
    """Build the embedded default (tiny) checkpoint and encode the sample data."""
    _run(session, "-m", "higgs_common.assets.build", *session.posargs)


@nox.session(python=False)
def diff(session: nox.Session) -> None:
    """Run every harness stage on the embedded default and print where the report is."""
    _run(session, "-m", "harness.compare", "--stage", "all", *session.posargs)


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The CPU test suite; hypothesis runs its fast, derandomised `ci` profile."""
    env = {"HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "ci")}
    _run(session, "-m", "pytest", "-m", "not gpu", *session.posargs, env=env)


@nox.session(python=False)
def property(session: nox.Session) -> None:  # noqa: A001 - nox session name
    """Only the property-based tests, with per-property example counts."""
    env = {"HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "ci")}
    _run(session, "-m", "pytest", "-m", "property", "--hypothesis-show-statistics", *session.posargs, env=env)


@nox.session(python=False)
def train_reference(session: nox.Session) -> None:
    """Train reference_impl (HF Trainer + LoRA) on the embedded default."""
    _run(session, "-m", "reference_impl.train", *session.posargs)


@nox.session(python=False)
def train_custom(session: nox.Session) -> None:
    """Train custom_impl (manual DDP loop) on the embedded default."""
    _run(session, "-m", "custom_impl.train", *session.posargs)


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Benchmarks (see harness/bench.py); meant for the GPU machine."""
    _run(session, "-m", "harness.bench", *session.posargs)
