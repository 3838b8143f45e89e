"""The report leads with the divergence that changes the loss or the gradients; the first one in
pipeline order stays available; adapters can declare intended differences."""

from __future__ import annotations

import types

from harness.engine.diff import FieldDiff
from harness.report.model import Report, StageResult


def _stage(name: str, *fields: tuple[str, str]) -> StageResult:
    st = StageResult(name, "ok", [FieldDiff(name, f, status) for f, status in fields])
    st.refresh_status()
    return st


def _report(*stages: StageResult, mode: str = "propagated") -> Report:
    return Report(run_name="t", mode=mode, stages_requested=[s.stage for s in stages], stages=list(stages))


def test_loss_divergence_leads_and_layout_one_is_the_pointer():
    report = _report(_stage("collator", ("label_ids", "mismatch"), ("input_ids", "equal"), ("label_ids", "mismatch")),
                     _stage("loss", ("text", "equal"), ("audio", "mismatch")),
                     _stage("backward", ("grad/x", "mismatch")))
    hl = report.headline()
    assert (hl["stage"], hl["field"]) == ("loss", "audio") and hl["consequence"] == "changes the loss or the gradients"
    assert hl["first_in_pipeline_order"] == {"stage": "collator", "field": "label_ids"}
    assert report.first_divergence()["field"] == "label_ids"
    assert hl["other_divergences"] == [{"stage": "collator", "field": "label_ids"}]
    assert "## Headline" in report.to_markdown() and report.to_json()["headline"]["field"] == "audio"


def test_layout_only_divergence_says_it_changes_neither():
    hl = _report(_stage("collator", ("attention_mask", "mismatch")), _stage("loss", ("total", "equal"))).headline()
    assert hl["field"] == "attention_mask" and hl["consequence"].startswith("changes neither")
    hl = _report(_stage("collator", ("attention_mask", "mismatch")), _stage("loss", ("total", "equal")),
                 mode="isolated").headline()
    assert hl["consequence"].startswith("not measured") and "--mode propagated" in hl["consequence"]
    hl = _report(_stage("collator", ("attention_mask", "mismatch"))).headline()
    assert hl["consequence"].startswith("unknown")
    assert _report(_stage("loss", ("total", "equal"))).headline() is None


def test_intended_differences_are_expected_with_the_adapters_reason():
    from harness.engine.runner import Comparison
    from harness.engine.sides import Side

    module = types.SimpleNamespace(NAME="mine", __name__="mine", INTENDED_DIFFERENCES={"collator/attention_*": "we pad left"})
    side = Side("custom", "mine", module, "?", None)
    fake = types.SimpleNamespace(side={"custom": types.SimpleNamespace(side=side)})
    st = _stage("collator", ("attention_mask", "mismatch"), ("label_ids", "mismatch"))
    Comparison.mark_intended(fake, st)
    st.refresh_status()
    marked = {f.field: f.expected_reason for f in st.fields if f.expected}
    assert marked == {"attention_mask": "[intended by the custom adapter mine] we pad left"}
    assert _report(st).first_divergence()["field"] == "label_ids"
