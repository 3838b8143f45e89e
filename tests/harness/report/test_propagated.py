"""--mode propagated shows how declared differences spread: it says so in the verdict and does not
fail the run on them; an undeclared divergence before any declared one still fails it."""

from __future__ import annotations

import json

import pytest

from harness.engine.diff import FieldDiff
from harness.report.model import Report, StageResult, stage_status
from harness.schemas import validate_report


def _field(stage: str, name: str, *, expected: bool = False) -> FieldDiff:
    return FieldDiff(stage, name, "mismatch", expected=expected, expected_reason="[x] by design" if expected else None,
                     numel=2, mismatches=1, first_index=[0], reference=1, custom=2)


def _stage(name: str, fields: list[FieldDiff]) -> StageResult:
    return StageResult(name, stage_status(fields), fields)


def _report(mode: str, dataset_expected: bool) -> Report:
    stages = [_stage("dataset", [_field("dataset", "labels", expected=dataset_expected)]),
              _stage("collator", [_field("collator", "supervised_audio_codes"), _field("collator", "label_ids")]),
              _stage("forward", [_field("forward", "logits")])]
    return Report("t", mode, ["all"], stages, generated_at="2025-01-01T00:00:00+00:00")


def test_declared_differences_spreading_pass_and_the_verdict_says_what_the_mode_shows():
    r = _report("propagated", dataset_expected=True)
    assert r.propagation_origin() == "dataset"
    assert r.verdict == "pass" and r.first_divergence() is None
    assert r.spread() == [("collator", 2), ("forward", 1)]
    reason = r.verdict_reason()
    assert "Propagated mode shows how differences spread" in reason and "--mode isolated" in reason
    assert "stage dataset spread to 3" in reason
    j = r.to_json()
    validate_report(j)
    assert j["verdict"] == "pass" and j["propagation_origin"] == "dataset" and j["verdict_reason"] == reason


def test_undeclared_divergence_first_still_fails_in_propagated_mode():
    r = _report("propagated", dataset_expected=False)
    assert r.propagation_origin() is None
    assert r.verdict == "diverged" and r.first_divergence()["field"] == "labels"
    assert "may be its consequences" in r.verdict_reason()


def test_isolated_mode_is_unchanged():
    r = _report("isolated", dataset_expected=True)
    assert r.propagation_origin() is None and r.verdict == "diverged"
    assert r.first_divergence()["stage"] == "collator"


@pytest.mark.slow
def test_cli_propagated_clean_pipelines_exit_0(tmp_path, capsys):
    from harness import compare

    code = compare.main(["--mode", "propagated", "--samples", "2", "--ddp-world-size", "0", "--quiet",
                         "--out", str(tmp_path)])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == 0, report["verdict_reason"]
    assert report["verdict"] == "pass" and report["propagation_origin"] == "dataset"
    assert sum(st["counts"]["diverged"] for st in report["stages"]) > 0     # it did spread, and says so
    assert "Propagated mode shows how differences spread" in " ".join(out.split())


def test_reports_say_what_spread_instead_of_no_divergence(tmp_path):
    from harness.report.render import write_report

    paths = write_report(_report("propagated", dataset_expected=True), tmp_path)
    for text in (paths["md"].read_text(), paths["html"].read_text()):
        assert "the declared differences at stage dataset spread to 3 undeclared difference(s)" in text
        assert "No undeclared divergence" not in text
