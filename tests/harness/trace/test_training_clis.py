"""The two training CLIs, traced as people run them (slow: each run is a real training command).

- the reference CLI and the custom CLI, 3 steps on the shipped data: compare-traces exit 0;
- each named fault of the custom pipeline through its training CLI: exit 1 at its pinned stage,
  against a clean trace of the same command (the DDP faults under torchrun, 2 gloo ranks);
- check-resume passes on both clean CLIs; check-resume fails on a resume that does not restore the
  scheduler and check-flags names an option whose value the code ignores (the toy trainer).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from harness.trace import cli as compare_cli
from harness.trace import flags as flags_cli
from harness.trace import resume as resume_cli
from harness.trace.run import run_traced
from tests.harness.trace.conftest import toy_command

pytestmark = pytest.mark.slow

PY = sys.executable
# fault -> the stage compare-traces must put it at (the custom pipeline's fault table, seen from a real run)
TRACE_FAULT_STAGES = {
    "reference-audio-as-label": "dataset",
    "unmapped-audio-labels": "collator",
    "silent-zero-audio-loss": "loss",
    "no-shift": "loss",
    "random-extra-layers": "forward",
    "ddp-unwrapped-forward": "backward",
    "inverted-no-sync": "backward",
}
DDP = {"ddp-unwrapped-forward", "inverted-no-sync"}


def custom_cmd(out: Path, *extra: str, ddp: bool = False) -> list[str]:
    launcher = [PY, "-m", "torch.distributed.run", "--nproc-per-node", "2"] if ddp else [PY]
    return launcher + ["-m", "custom_impl.train", "--max-steps", "3", "--output-dir", str(out), *extra]


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-traces")
    made: dict[str, Path] = {}

    def get(name: str, cmd: list[str]) -> Path:
        if name not in made:
            out = root / name
            run_traced(cmd, out, steps=3, echo=False)
            made[name] = out
        return made[name]
    return get, root


def _compare(a: Path, b: Path, out: Path) -> tuple[int, dict]:
    code = compare_cli.main([str(a), str(b), "--out", str(out), "--quiet"])
    return code, json.loads((out / "report.json").read_text())


def test_reference_and_custom_clis_agree(traces, tmp_path):
    get, root = traces
    ref = get("reference", [PY, "-m", "reference_impl.train", "--max-steps", "3", "--output-dir", str(root / "r-ref")])
    cus = get("custom", custom_cmd(root / "r-cus"))
    code, report = _compare(ref, cus, tmp_path / "rep")
    assert code == 0, report["first_divergence"]
    assert report["symptoms"] == []


@pytest.mark.parametrize("fault", sorted(TRACE_FAULT_STAGES))
def test_fault_through_the_training_cli_is_found_at_its_stage(traces, tmp_path, fault):
    get, root = traces
    ddp = fault in DDP
    clean = get("custom-ddp" if ddp else "custom", custom_cmd(root / ("r-cus-ddp" if ddp else "r-cus"), ddp=ddp))
    bad = get(fault, custom_cmd(root / f"r-{fault}", "--fault", fault, ddp=ddp))
    code, report = _compare(clean, bad, tmp_path / "rep")
    first = report["first_divergence"]
    assert code == 1 and first is not None
    assert first["stage"] == TRACE_FAULT_STAGES[fault], first
    cause = first["cause"]["mechanism"] if isinstance(first["cause"], dict) else first["cause"]
    assert "custom_impl/" in cause or "symptom" in first["field"], cause   # points at code in run B


@pytest.mark.parametrize("module", ["custom_impl.train", "reference_impl.train"])
def test_check_resume_passes_on_the_clean_cli(tmp_path, module):
    code = resume_cli.main(["--steps", "3", "--kill-after", "1", "--work-dir", str(tmp_path), "--", PY, "-m", module])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert code == 0, report["first_divergence"]


def test_check_resume_fails_when_the_scheduler_is_not_restored(tmp_path):
    code = resume_cli.main(["--steps", "4", "--kill-after", "2", "--work-dir", str(tmp_path), "--",
                            *toy_command("--bug", "forget-scheduler")])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert code == 1
    assert report["first_divergence"]["stage"] == "step"
    assert "lr" in report["first_divergence"]["field"]
    assert resume_cli.main(["--steps", "4", "--kill-after", "2", "--work-dir", str(tmp_path / "ok"), "--",
                            *toy_command()]) == 0


@pytest.mark.parametrize("bug, words", [
    ("forget-scheduler", "does not restore the learning-rate schedule"),
    ("forget-optimizer", "does not restore the optimizer's state"),
    ("skip-batch-on-resume", "does not restore the data position"),
    ("forget-rng", "does not restore the random state"),
])
def test_check_resume_names_the_state_the_checkpoint_does_not_restore(tmp_path, bug, words):
    code = resume_cli.main(["--steps", "4", "--kill-after", "2", "--work-dir", str(tmp_path), "--",
                            *toy_command("--bug", bug, "--dropout", "0.25")])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert code == 1
    cause = report["first_divergence"]["cause"]
    assert words in cause["mechanism"] and cause["rule"] == "check-resume", cause
    if bug == "skip-batch-on-resume":
        assert "straight run trained at step 4 (micro-batch 0): the position is off by +1 step(s)" in cause["mechanism"]


def test_check_resume_passes_with_dropout_when_the_random_state_is_restored(tmp_path):
    assert resume_cli.main(["--steps", "4", "--kill-after", "2", "--work-dir", str(tmp_path), "--",
                            *toy_command("--dropout", "0.25")]) == 0


def test_repeated_runs_ask_mkl_for_reproducible_results(monkeypatch):
    """check-resume and check-flags run one program several times and expect the same numbers: MKL's
    reproducible mode is on for them unless the caller's environment already chooses one."""
    from harness.trace.run import reproducible_env

    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert reproducible_env(X="1") == {**os.environ, "X": "1", "MKL_CBWR": "AUTO,STRICT"}
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    assert reproducible_env()["MKL_CBWR"] == "COMPATIBLE"


def test_check_flags_names_an_ignored_option(tmp_path):
    code = flags_cli.main(["--only", "weight-decay,lr", "--work-dir", str(tmp_path), "--",
                           *toy_command("--bug", "ignore-wd")])
    results = {r["option"]: r for r in json.loads((tmp_path / "flags.json").read_text())}
    assert code == 1
    assert results["--weight-decay"]["verdict"] == "ignored"
    detail = results["--weight-decay"]["detail"]          # the flag as given and the param-group key it misses
    assert "asks --weight-decay" in detail and "never reaches the optimizer's param groups (weight_decay)" in detail
    assert results["--lr"]["verdict"] == "acts" and results["--lr"]["where"].startswith("step")
