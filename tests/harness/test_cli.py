"""The console commands (`[project.scripts]` in pyproject.toml): `higgs-diff` and its subcommands,
`higgs-train-reference`, `higgs-train-custom`.

They are run from the bin folder of the interpreter running the tests (the nox-built `.venv`, where the
editable install put them).  Each subcommand must be the `python -m` module it stands for: same
`--help`, same options, same exit status, same report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest

from harness import cli
from harness.schemas import validate_report

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "COLUMNS": "100", "OMP_NUM_THREADS": "1"}

# Options the docs name for each command (its --help must list them).
COMPARE_OPTIONS = ("--stage", "--mode", "--fault", "--device", "--data", "--model", "--audio-tokenizer",
                   "--samples", "--seed", "--out", "--tolerance", "--precision", "--ddp-world-size",
                   "--ddp-steps", "--quiet", "--skip-bad-samples", "--max-audio-seconds")
BENCH_OPTIONS = ("--build-full", "--model", "--audio-tokenizer", "--device", "--out")
REFERENCE_TRAIN_OPTIONS = ("--use-lora", "--task-type", "--max-steps", "--model-path", "--no-autocast", "--resume",
                           "--skip-bad-samples", "--max-audio-seconds", "--allow-default-ref-transcript",
                           "--allow-missing-ref-audio")
CUSTOM_TRAIN_OPTIONS = ("--data", "--full-finetune", "--batch-size", "--grad-accum", "--lr", "--max-steps",
                        "--fault", "--resume", "--skip-bad-samples", "--model-path")


def script(name: str) -> str:
    """Path of an installed console script (fails, naming the fix, when the install predates it)."""
    path = BIN / name
    if not path.is_file():
        pytest.fail(f"console script {name!r} is not installed in {BIN}: the project was installed before "
                    "[project.scripts] listed it; `nox -s tests` reinstalls .venv when pyproject.toml changes "
                    "(or run: pip install --no-deps --no-build-isolation -e .)")
    return str(path)


def run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- --help of every command

@pytest.mark.parametrize("command, module, options", [
    (["higgs-diff", "compare"], "harness.compare", COMPARE_OPTIONS),
    (["higgs-diff", "bench"], "bench", BENCH_OPTIONS),
    (["higgs-train-reference"], "reference_impl.train", REFERENCE_TRAIN_OPTIONS),
    (["higgs-train-custom"], "custom_impl.train", CUSTOM_TRAIN_OPTIONS),
], ids=["compare", "bench", "train-reference", "train-custom"])
def test_help_is_the_module_help(command, module, options):
    """`<command> --help` prints exactly `python -m <module> --help`, listing the README's options."""
    got = run([script(command[0]), *command[1:], "--help"])
    want = run([sys.executable, "-m", module, "--help"])
    assert got.returncode == 0, got.stderr[-3000:]
    assert want.returncode == 0, want.stderr[-3000:]
    assert got.stdout == want.stdout
    missing = [o for o in options if o not in got.stdout]
    assert not missing, f"{' '.join(command)} --help does not list {missing}"


def test_check_adapter_help_is_the_module_help():
    pytest.importorskip("harness.check_adapter")
    got = run([script("higgs-diff"), "check-adapter", "--help"])
    want = run([sys.executable, "-m", "harness.check_adapter", "--help"])
    assert got.returncode == want.returncode == 0, got.stderr[-3000:] + want.stderr[-3000:]
    assert got.stdout == want.stdout and "usage:" in got.stdout


def test_top_level_help_lists_every_subcommand():
    res = run([script("higgs-diff"), "--help"])
    assert res.returncode == 0, res.stderr
    for word in ("compare", "check-adapter", "bench", "--version", "higgs-train-reference", "higgs-train-custom"):
        assert word in res.stdout, word


def test_version_is_the_package_version():
    res = run([script("higgs-diff"), "--version"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"higgs-diff {metadata.version('higgs-diff')}"


# --------------------------------------------------------------------------- dispatcher (in-process)

def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    assert f"a command is required: one of {', '.join(cli.SUBCOMMANDS)}" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["comapre", "--stage", "all"])
    assert exc.value.code == 2
    assert "invalid choice: 'comapre'" in capsys.readouterr().err


def test_argv_after_the_subcommand_is_passed_untouched(monkeypatch):
    seen = []
    fake = types.ModuleType("fake_subcommand")
    fake.main = lambda argv: seen.append(list(argv)) or 7
    monkeypatch.setitem(sys.modules, "fake_subcommand", fake)
    monkeypatch.setitem(cli.SUBCOMMANDS, "compare", cli.Subcommand("fake_subcommand", "test"))
    assert cli.main(["compare", "--help", "--stage", "loss", "x"]) == 7
    assert seen == [["--help", "--stage", "loss", "x"]]


def test_missing_subcommand_module_is_named(monkeypatch, capsys):
    monkeypatch.setitem(cli.SUBCOMMANDS, "check-adapter", cli.Subcommand("harness.no_such_module", "test"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["check-adapter", "x"])
    assert exc.value.code == 2
    assert "no module 'harness.no_such_module'" in capsys.readouterr().err


def test_missing_dependency_of_a_subcommand_is_not_hidden(monkeypatch):
    """Only the subcommand's own module counts as absent; a module it imports surfaces as itself."""
    monkeypatch.setitem(cli.SUBCOMMANDS, "bench", cli.Subcommand("broken_subcommand", "test"))

    def import_module(name):
        raise ModuleNotFoundError("No module named 'some_dependency'", name="some_dependency")

    monkeypatch.setattr(cli.importlib, "import_module", import_module)
    with pytest.raises(ModuleNotFoundError, match="some_dependency"):
        cli.main(["bench"])


# --------------------------------------------------------------------------- same run, same report

@pytest.mark.slow
def test_compare_command_behaves_like_python_m_harness_compare(tmp_path):
    """`higgs-diff compare --stage all` == `python -m harness.compare --stage all`: same exit status,
    same report.json apart from `volatile`."""
    args = ["--stage", "all", "--ddp-world-size", "0", "--quiet"]
    got = run([script("higgs-diff"), "compare", *args, "--out", str(tmp_path / "cli")], timeout=600)
    want = run([sys.executable, "-m", "harness.compare", *args, "--out", str(tmp_path / "module")], timeout=600)
    assert got.returncode == want.returncode, got.stderr[-3000:] + want.stderr[-3000:]
    assert want.returncode in (0, 1), want.stderr[-3000:]
    reports = []
    for name in ("cli", "module"):
        report = json.loads((tmp_path / name / "report.json").read_text())
        validate_report(report)
        report.pop("volatile")
        reports.append(report)
    assert reports[0] == reports[1]
