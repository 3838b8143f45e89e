"""The report.json schema shipped in `harness/schemas`: a valid JSON Schema that every report the
harness writes follows (tests/conftest.py also validates every report the suite writes), that rejects
a report missing part of the stable core, and that accepts additive changes."""

from __future__ import annotations

import copy
import json
import re
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import pytest
import torch
from jsonschema import Draft202012Validator

from harness.engine.diff import STATUSES, FieldDiff, diff_scalars, diff_tensors
from harness.report.model import STAGE_STATUSES, VOLATILE_KEY, Diagnosis, Report, StageResult, stage_status
from harness.schemas import REPORT_SCHEMA_FILE, ReportSchemaError, load_report_schema, validate_report

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[2]
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


def _report(*, diverged: bool) -> dict:
    """A synthetic report with every kind of value the JSON can hold (NaN floats, shapes, errors)."""
    ref = torch.arange(12.0).reshape(3, 4)
    cus = ref.clone()
    if diverged:
        cus[1, 2] = float("nan")
    fields = [diff_tensors(ref, cus, stage="loss", field="logits", decode=lambda i: f"row {i[0]}",
                           sample_of=lambda i: "spk1_0001"),
              diff_scalars(1.5, 1.5, stage="loss", field="audio_ce"),
              diff_tensors(torch.zeros(2, 3), torch.zeros(3, 2), stage="loss", field="shape_changed"),
              FieldDiff("loss", "declared", "mismatch", expected=True, expected_reason="by design", numel=1,
                        mismatches=1, first_index=[], reference="a", custom="b")]
    fields[2].expected, fields[2].expected_reason = True, "layout differs by design"
    stages = [StageResult("dataset", "ok", [FieldDiff("dataset", "ids", "equal", numel=3)]),
              StageResult("loss", stage_status(fields), fields, seconds_compute=0.5),
              StageResult("backward", "skipped", [], note="not requested"),
              StageResult("step", "error", [], error="RuntimeError: boom")]
    report = Report(run_name="schema-test", mode="isolated", stages_requested=["all"], stages=stages,
                    config={"device": "cpu", "seed": 0, "faults": [], "samples": ["spk1_0001"]},
                    config_diff=[{"setting": "lora.r", "reference": 16, "custom": 32, "same": False}],
                    catalogue=[{"id": "x", "stage": "loss", "field": "declared", "reason": "r", "check": "by-design"}],
                    diagnoses=[Diagnosis("cause", "evidence", stage="loss", field="logits")],
                    extras={"per_codebook": {"reference": [1.0], "custom": [float("inf")]}})
    return report.to_json()


@pytest.fixture
def report() -> dict:
    return _report(diverged=True)


def test_schema_is_valid_draft_2020_12():
    schema = load_report_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_schema_is_package_data():
    """Shipped inside the package (importlib.resources) and listed in pyproject's package-data."""
    assert resources.files("harness.schemas").joinpath(REPORT_SCHEMA_FILE).is_file()
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch(REPORT_SCHEMA_FILE, p) for p in patterns["harness.schemas"])


def test_schema_enums_are_the_codes_values():
    """A new status in the code must be added to the schema, which is a major version bump (README)."""
    defs = load_report_schema()["$defs"]
    assert defs["stageStatus"]["enum"] == list(STAGE_STATUSES)
    assert defs["fieldStatus"]["enum"] == list(STATUSES)
    assert load_report_schema()["properties"]["verdict"]["enum"] == ["pass", "diverged", "error"]


@pytest.mark.parametrize("diverged", [False, True])
def test_synthetic_reports_validate(diverged):
    r = _report(diverged=diverged)
    assert r["verdict"] == ("diverged" if diverged else "error")
    assert (r["first_divergence"] is not None) == diverged
    validate_report(r)


def test_schema_version_is_semver_of_major_1_and_not_volatile(report):
    version = report["schema_version"]
    assert SEMVER.match(version) and version.split(".")[0] == "2"
    assert "schema_version" not in report[VOLATILE_KEY]
    assert re.match(load_report_schema()["properties"]["schema_version"]["pattern"], version)


@pytest.mark.slow
def test_real_compare_report_validates(tmp_path):
    """A real run with a historical fault: diverged, a first divergence, and valid."""
    from harness import compare

    code = compare.main(["--stage", "collator", "--fault", "unmapped-audio-labels", "--samples", "2",
                         "--ddp-world-size", "0", "--quiet", "--out", str(tmp_path)])
    r = json.loads((tmp_path / "report.json").read_text())
    assert code == 1 and r["verdict"] == "diverged" and r["first_divergence"]["stage"] == "collator"
    validate_report(r)


CORE_PATHS = [("schema_version",), ("verdict",), ("verdict_reason",), ("first_divergence",), ("stages",), ("config",),
              ("volatile",), ("stages", 1, "fields", 0, "differs"),
              ("stages", 1, "stage"), ("stages", 1, "status"), ("stages", 1, "fields"),
              ("stages", 1, "fields", 0, "field"), ("stages", 1, "fields", 0, "status"),
              ("stages", 1, "fields", 0, "diverged"), ("stages", 1, "fields", 0, "expected"),
              ("first_divergence", "stage"), ("first_divergence", "field"), ("first_divergence", "index"),
              ("first_divergence", "reference"), ("first_divergence", "custom"), ("first_divergence", "cause")]


@pytest.mark.parametrize("path", CORE_PATHS, ids=lambda p: ".".join(map(str, p)))
def test_missing_core_key_fails(report, path):
    broken = copy.deepcopy(report)
    parent = broken
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    with pytest.raises(ReportSchemaError, match=re.escape(f"'{path[-1]}' is a required property")):
        validate_report(broken)


@pytest.mark.parametrize("key, value", [
    ("verdict", "passed"), ("verdict", None), ("verdict", "PASS"),
    ("schema_version", "3.0.0"), ("schema_version", "1.0.0"), ("schema_version", "2.0"), ("schema_version", 2),
    ("first_divergence", []), ("stages", {}), ("config", None), ("volatile", "now"),
])
def test_wrong_top_level_value_fails(report, key, value):
    with pytest.raises(ReportSchemaError, match=re.escape(f"at $.{key}")):
        validate_report({**report, key: value})


def test_wrong_nested_types_fail(report):
    for mutate, where in [
        (lambda r: r["stages"][1].update(status="fine"), "$.stages[1].status"),
        (lambda r: r["stages"][1]["fields"][0].update(diverged="yes"), "$.stages[1].fields[0].diverged"),
        (lambda r: r["stages"][1]["fields"][0].update(status="different"), "$.stages[1].fields[0].status"),
        (lambda r: r["first_divergence"].update(index="0,1"), "$.first_divergence"),
    ]:
        broken = copy.deepcopy(report)
        mutate(broken)
        with pytest.raises(ReportSchemaError, match=re.escape(where)):
            validate_report(broken)


def test_additive_changes_still_validate(report):
    """New keys anywhere (a minor version bump) keep validating against the same major's schema."""
    r = copy.deepcopy(report)
    r["schema_version"] = "2.4.2"
    r["new_top_level"] = {"anything": [1, 2]}
    r["first_divergence"]["new_key"] = {"kind": "shifted", "by": 1}
    r["stages"][1]["new_stage_key"] = 3
    r["stages"][1]["fields"][0]["cause"] = {"mechanism": "m", "evidence": "e", "rule": "r", "location": None,
                                            "new_key": 1}
    r["config"]["new_setting"] = True
    r[VOLATILE_KEY]["host"] = "ci-1"
    validate_report(r)


def test_suite_validates_every_report_it_writes(tmp_path):
    """tests/conftest.py wraps the report writer: an invalid report fails the test that writes it."""
    from harness.report.render import write_report

    bad = Report(run_name="bad", mode="isolated", stages_requested=["loss"],
                 stages=[StageResult("loss", "fine", [])])
    with pytest.raises(ReportSchemaError, match=re.escape("$.stages[0].status")):
        write_report(bad, tmp_path)
    assert not (tmp_path / "report.json").exists()
