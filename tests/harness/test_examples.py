"""Bring your own pipeline: the three adapters pass check_adapter, every pair compares with only
declared differences, broken adapters fail the check that names them, and named faults are found
when the custom side is given by SPEC."""

from __future__ import annotations

import itertools
import json
import textwrap

import pytest

from harness import check_adapter, compare
from harness.adapters.conformance import run_checks
from harness.testing import PipelinesDiverged, assert_pipelines_agree

ADAPTERS = ("reference_impl.stages", "custom_impl.stages", "examples/upstream_defaults/stages.py")
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("spec", ADAPTERS)
def test_every_adapter_passes_the_conformance_suite(spec, tmp_path):
    out = tmp_path / "checks.json"
    assert check_adapter.main([spec, "--json", str(out)]) == 0
    assert all(c["passed"] for c in json.loads(out.read_text()))


@pytest.mark.parametrize("pair", list(itertools.permutations(ADAPTERS, 2)))
def test_every_pair_differs_only_as_declared(pair):
    report = assert_pipelines_agree(*pair, stage="all")
    expected = [f for st in report.stages for f in st.fields if f.diverged]
    assert expected and all(f.expected_reason for f in expected)
    assert report.to_json()["config"]["sides"]["custom"]["spec"] == pair[1]


def _broken(tmp_path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text("from custom_impl.stages import *  # noqa: F401,F403\n"
                    "from custom_impl.stages import NAME, CONVENTIONS, DEFAULT_TRAIN, collate as _collate\n"
                    + textwrap.dedent(body))
    return str(path)


def test_an_adapter_whose_collate_mutates_its_input_fails_collate_pure(tmp_path):
    spec = _broken(tmp_path, "mutating", """
        def collate(items, ctx):
            for it in items:
                it.sample.label_ids[0] = 7        # writes into the caller's sample
            return _collate(items, ctx)
    """)
    results = {c.name: c for c in run_checks(spec)}
    assert not results["collate-pure"].passed and "mutated its input" in results["collate-pure"].reason
    assert check_adapter.main([spec]) == 1


def test_an_adapter_whose_declaration_contradicts_its_output_fails_conventions(tmp_path):
    spec = _broken(tmp_path, "contradicting", """
        import dataclasses
        CONVENTIONS = dataclasses.replace(CONVENTIONS, delay_pattern=False)   # but the collator applies it
    """)
    results = {c.name: c for c in run_checks(spec)}
    reason = results["conventions"].reason
    assert not results["conventions"].passed and "delay_pattern" in reason and "@reference" not in reason


def test_faults_are_found_when_the_custom_side_is_given_by_spec():
    from tests.harness.test_fault_table import FAULT_TABLE

    for fault, (stage, _field, _cause) in FAULT_TABLE.items():
        if fault in ("ddp-unwrapped-forward", "inverted-no-sync"):
            continue                      # the DDP ones: tests/harness/test_fault_table.py (gloo processes)
        report = compare(custom="custom_impl/stages.py", fault=fault, samples=2, ddp_world_size=0)
        assert report.first_divergence()["stage"] == stage, fault


def test_the_pytest_helper_raises_with_the_first_divergence():
    with pytest.raises(PipelinesDiverged) as err:
        assert_pipelines_agree(fault="no-shift", samples=2)
    assert "first divergence at loss/" in str(err.value) and "cause:" in str(err.value)
    assert err.value.report.verdict == "diverged"
