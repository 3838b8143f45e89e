"""Nox sessions for higgs-diff.

All sessions share ONE project virtualenv (`.venv`), because torch alone is ~5 GB and installing it
once per session would dominate every run.  `.venv` is installed from the lock files, never by
resolving version ranges: `requirements.lock` (every dependency of `pyproject.toml` and its `dev`
extra, pinned with hashes) and `requirements-no-deps.lock` (the packages installed with
`--no-deps`, see `[tool.higgs-diff]` in pyproject.toml), both with `pip install --require-hashes`,
then the project itself as `pip install --no-deps -e .`.  `pyproject.toml` declares the version
ranges (the one place versions are declared); `nox -s lock` regenerates the lock files from it.
`.venv` is rebuilt when `pyproject.toml` or a lock file changes (a hash stamp is kept inside it).

    nox -s diff            # build the embedded tiny checkpoint, run every harness stage
    nox -s tests           # the test suite (CPU, hypothesis `ci` profile)
    nox -s property        # only the property-based tests
    nox -s train_reference # train reference_impl on the embedded default
    nox -s train_custom    # train custom_impl on the embedded default
    nox -s assets          # (re)build the embedded checkpoint
    nox -s bench           # benchmarks (meant for the GPU machine)
    nox -s lock            # regenerate the lock files (-- --upgrade, -- --upgrade-package NAME)
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests"]

ROOT = Path(__file__).parent
PYPROJECT = ROOT / "pyproject.toml"
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".higgs-diff-stamp"
LOCK = ROOT / "requirements.lock"                 # pyproject dependencies + dev extra, with hashes
LOCK_NO_DEPS = ROOT / "requirements-no-deps.lock"  # [tool.higgs-diff] no-deps packages, with hashes
LOCK_TOOLS_VENV = ROOT / ".nox" / "lock-tools"
LOCK_COMMAND = "nox -s lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def _pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def _env_hash() -> str:
    """Hash of everything `.venv` is installed from: pyproject.toml and both lock files."""
    h = hashlib.sha256()
    for path in (PYPROJECT, LOCK, LOCK_NO_DEPS):
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    return h.hexdigest()


def lock_pins(path: Path) -> dict[str, str]:
    """`{canonical name: pinned version}` of a requirements lock file."""
    pins = {}
    for line in path.read_text().splitlines():
        m = _PIN.match(line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def lock_problems() -> list[str]:
    """Why the lock files do not pin what pyproject.toml declares (empty list: they do).

    Every declared requirement (dependencies, the `dev` extra, the --no-deps packages) must be pinned
    in its lock file, to a version inside the declared range.
    """
    project = _pyproject()
    cfg = project["tool"]["higgs-diff"]
    wanted = {
        LOCK: [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["dev"]],
        LOCK_NO_DEPS: [*cfg["no-deps"], *cfg["no-deps-extras"]],
    }
    problems = []
    for path, requirements in wanted.items():
        if not path.is_file():
            problems.append(f"{path.name} is missing")
            continue
        pins = lock_pins(path)
        for text in requirements:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate():
                continue
            pin = pins.get(canonicalize_name(req.name))
            if pin is None:
                problems.append(f"{req.name} is declared in pyproject.toml but not pinned in {path.name}")
            elif not req.specifier.contains(pin, prereleases=True):
                problems.append(f"pyproject.toml asks for {req} but {path.name} pins {req.name}=={pin}")
    return problems


def ensure_env(session: nox.Session) -> str:
    """Create/refresh `.venv` from the lock files and return its python path."""
    want = _env_hash()
    if PY.exists() and STAMP.exists() and STAMP.read_text().strip() == want:
        return str(PY)
    problems = lock_problems()
    if problems:
        session.error("the lock files do not match pyproject.toml:\n  - " + "\n  - ".join(problems)
                      + f"\nregenerate them with `{LOCK_COMMAND}` (docs/environment.md)")
    session.log(f"setting up .venv from {LOCK.name} and {LOCK_NO_DEPS.name} (first run: a few minutes)")
    if not PY.exists():
        session.run(sys.executable, "-m", "venv", str(VENV), external=True)
    pip = [str(PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # Every package pinned with its hashes; pip fails if a dependency is not in the lock.
    session.run(*pip, "--require-hashes", "-r", str(LOCK), external=True)
    # The --no-deps packages (two are sdists: built with the locked setuptools, no isolated build env).
    session.run(*pip, "--require-hashes", "--no-deps", "--no-build-isolation", "-r", str(LOCK_NO_DEPS),
                external=True)
    # The project itself: its dependencies are all in already; nothing is resolved.
    session.run(*pip, "--no-deps", "--no-build-isolation", "-e", str(ROOT), external=True)
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
    """Benchmarks (the bench package, docs/benchmarks.md); meant for the GPU machine."""
    _run(session, "-m", "bench", *session.posargs)


def _lock_tools(session: nox.Session) -> Path:
    """A venv with the lock tools of `[tool.higgs-diff] lock-tools`; returns its bin folder."""
    bin_dir = LOCK_TOOLS_VENV / "bin"
    if not (bin_dir / "python").exists():
        session.run(sys.executable, "-m", "venv", str(LOCK_TOOLS_VENV), external=True)
    tools = _pyproject()["tool"]["higgs-diff"]["lock-tools"]
    session.run(str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                "--upgrade", "pip", *tools, external=True)
    return bin_dir


@nox.session(python=False)
def lock(session: nox.Session) -> None:
    """Regenerate requirements.lock and requirements-no-deps.lock (hashes) from pyproject.toml.

    Existing pins are kept where pyproject.toml still allows them; `nox -s lock -- --upgrade`
    moves everything to the newest allowed versions, `-- --upgrade-package NAME` one package.
    """
    bin_dir = _lock_tools(session)
    env = {"CUSTOM_COMPILE_COMMAND": LOCK_COMMAND, "UV_CUSTOM_COMPILE_COMMAND": LOCK_COMMAND}
    # pip-compile resolves with pip and pip's configuration (find-links, extra indexes), so packages
    # that lie on local disk (torch) are found exactly as `pip install` finds them.  The index
    # options are not written into the lock: installing uses the machine's pip configuration.
    session.run(str(bin_dir / "pip-compile"), "--quiet", "--generate-hashes", "--allow-unsafe",
                "--strip-extras", "--no-emit-index-url", "--no-emit-find-links", "--extra", "dev",
                "--build-deps-for", "editable", "--output-file", LOCK.name, PYPROJECT.name,
                *session.posargs, external=True, env=env)
    cfg = _pyproject()["tool"]["higgs-diff"]
    no_deps_in = LOCK_TOOLS_VENV / "no-deps.in"
    no_deps_in.write_text("".join(f"{r}\n" for r in (*cfg["no-deps"], *cfg["no-deps-extras"])))
    # uv pins exactly the listed packages (--no-deps), with the hashes of every file of that version.
    session.run(str(bin_dir / "uv"), "pip", "compile", "--quiet", "--no-deps", "--generate-hashes",
                "--no-annotate", "--python", str(bin_dir / "python"), "--output-file", LOCK_NO_DEPS.name,
                str(no_deps_in), *session.posargs, external=True, env=env)
    problems = lock_problems()
    if problems:
        session.error("the new lock files still do not match pyproject.toml:\n  - " + "\n  - ".join(problems))
    session.log(f"{LOCK.name}: {len(lock_pins(LOCK))} pins, {LOCK_NO_DEPS.name}: {len(lock_pins(LOCK_NO_DEPS))} "
                "pins; the next session reinstalls .venv from them")
