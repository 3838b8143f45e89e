"""The worked example of docs/adapters.md: an adapter around thucth-qt/train-higgs-audio-vi's
script trainer.  It implements the contract (check_adapter), and compare runs on it against
train-higgs-audio and reports what its code does differently.

Needs clones: HIGGS_DIFF_EXAMPLE_TRAINER (github.com/thucth-qt/train-higgs-audio-vi) and, for the
comparison, HIGGS_DIFF_TRAIN_HIGGS_AUDIO (github.com/JimmyMa99/train-higgs-audio).
"""

from __future__ import annotations

import os

import pytest

from harness.adapters.conformance import run_checks

EXAMPLE = os.environ.get("HIGGS_DIFF_EXAMPLE_TRAINER")
REFERENCE = os.environ.get("HIGGS_DIFF_TRAIN_HIGGS_AUDIO")
SPEC = f"examples/train_higgs_audio_vi/stages.py={EXAMPLE}"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not EXAMPLE, reason="set HIGGS_DIFF_EXAMPLE_TRAINER to a clone of "
                                                     "github.com/thucth-qt/train-higgs-audio-vi")]


def test_the_example_adapter_passes_check_adapter_and_reports_its_loss_as_a_finding(tmp_path):
    from harness import check_adapter

    assert check_adapter.main([SPEC, "--json", str(tmp_path / "checks.json")]) == 0
    results = {c.name: c for c in run_checks(SPEC)}
    assert all(c.passed for c in results.values()), {n: c.reason for n, c in results.items() if not c.passed}
    finding = results["declared-behaviour"].reason
    # its declaration is truthful (no audio shift, mean of terms); what no declaration can say (text
    # labels the model never got) is reported as the pipeline deviating, with the mechanism
    assert finding.startswith("FINDING") and "audio_shift = 'none'" in finding and "no expanded_labels" in finding


@pytest.mark.skipif(not REFERENCE, reason="set HIGGS_DIFF_TRAIN_HIGGS_AUDIO to a clone of "
                                          "github.com/JimmyMa99/train-higgs-audio")
def test_compare_runs_and_finds_its_loss_differs():
    from harness.api import compare
    report = compare(f"train-higgs-audio={REFERENCE}", SPEC, stage="all", ddp_world_size=0)
    assert all(st.status != "error" for st in report.stages), [(st.stage, st.status) for st in report.stages]
    first = report.first_divergence()
    assert first["stage"] == "loss" and "no next-token shift" in first["cause"]["mechanism"]
    assert "custom fault" not in first["cause"]["mechanism"]         # not one of custom_impl's named faults
    config = next(st for st in report.stages if st.stage == "config")
    assert any(f.field == "defect.loss.audio_shift@custom" and f.unexpected for f in config.fields)
    assert any(s["kind"] == "unscored_head" for s in report.symptoms)
