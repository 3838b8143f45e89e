"""The terminal verdict panel shows the whole cause, its evidence and the run's symptoms at 80
columns: wrapped, never cut short with an ellipsis."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from harness.engine.diff import FieldDiff
from harness.report.model import Report, StageResult, stage_status
from harness.report.terminal import print_summary, symptom_text, verdict_panel

WIDTH = 80
ELLIPSIS = "\u2026"


def _squash(text: str) -> str:
    """Text without whitespace and box-drawing characters: what wrapping cannot change."""
    return re.sub(r"[\s\u2500-\u257f]+", "", text)


def _panel_text(report: Report, width: int = WIDTH) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(verdict_panel(report))
    return console.file.getvalue()


def assert_panel_shows_everything(report: Report, width: int = WIDTH) -> str:
    out = _panel_text(report, width)
    assert ELLIPSIS not in out, out
    assert all(len(line) <= width for line in out.splitlines()), out
    fd = report.first_divergence()
    wanted = [report.verdict_reason()] if fd is None else []
    if fd is not None:
        cause = fd["cause"] or {}
        wanted += [v for v in (cause.get("mechanism"), cause.get("evidence"), cause.get("location"),
                               fd.get("relation")) if v]
    wanted += [symptom_text(s) for s in report.symptoms]
    for text in wanted:
        assert _squash(text) in _squash(out), f"not shown whole: {text!r}\n{out}"
    return out


def _long_cause_report() -> Report:
    cause = ("all audio labels are -100 (or absent) on the custom side: label_audio_ids is not mapped from the "
             "audio-out codes, so no audio token is supervised and the audio loss can only be 0.0 or skipped "
             "(custom fault unmapped-audio-labels); a_very_long_identifier_without_any_space_" + "x" * 90)
    f = FieldDiff("collator", "supervised_audio_codes", "shape", numel=1192, reference=[8, 149], custom=[8, 0],
                  relation={"kind": "truncation", "words": "149 frame position(s) cut at the end of frame on the "
                                                           "custom side (values 0, 3, 5, 7 ...)"},
                  cause={"mechanism": cause, "evidence": "custom label_audio_ids has no supervised entry",
                         "rule": "audio_labels", "location": "custom_impl/collator.py:89"})
    return Report("t", "isolated", ["all"], [StageResult("collator", stage_status([f]), [f])],
                  generated_at="x", symptoms=[{
                      "kind": "zero_loss", "text": "audio loss is exactly 0.0 on a batch with target audio",
                      "mechanism": "no audio position is supervised: every audio label is -100, so the audio term "
                                   "has nothing to score and the run trains the text only", "stage": "loss",
                      "field": "audio_loss", "steps": [], "location": None, "run": "custom (custom)"}])


@pytest.mark.parametrize("width", [60, 80, 100, 160])
def test_long_cause_and_symptom_are_wrapped_whole(width):
    out = assert_panel_shows_everything(_long_cause_report(), width)
    assert "custom_impl/collator.py:89" in out


def test_summary_table_never_truncates_field_names():
    report = _long_cause_report()
    report.stages[0].fields[0].field = "grad/base_model.model.layers.0.audio_mlp.down_proj.lora_A.default.weight"
    console = Console(file=io.StringIO(), width=WIDTH, color_system=None)
    print_summary(report, console=console)
    out = console.file.getvalue()
    assert ELLIPSIS not in out
    assert _squash(report.stages[0].fields[0].field) in _squash(out)


def test_clean_report_panel_says_why_it_passed():
    f = FieldDiff("dataset", "a", "equal", numel=1)
    report = Report("t", "isolated", ["dataset"], [StageResult("dataset", "ok", [f])], generated_at="x")
    out = assert_panel_shows_everything(report)
    assert "verdict: pass" in out and "No undeclared divergence" in out


# ---------------------------------------------------------------------------- every named fault, real runs


def _faults() -> list[str]:
    from custom_impl.faults import FAULTS

    return sorted(FAULTS)


DDP_FAULTS = {"ddp-unwrapped-forward", "inverted-no-sync"}


@pytest.mark.slow
@pytest.mark.parametrize("fault", _faults())
def test_panel_shows_the_whole_cause_for_every_named_fault(fault, tmp_path, fault_report):
    from harness.report.render import write_report
    from harness.schemas import validate_report

    if fault in DDP_FAULTS:
        pytest.importorskip("torch.distributed")
    report = fault_report(fault)
    assert report.verdict == "diverged", report.verdict_reason()
    fd = report.first_divergence()
    assert fd["cause"] and fd["cause"]["mechanism"], fd
    assert_panel_shows_everything(report)
    # the same run's report.json: valid, and its classes and counts agree
    j = json.loads(write_report(report, tmp_path)["json"].read_text())
    validate_report(j)
    for st in j["stages"]:
        assert st["counts"]["diverged"] == sum(f["diverged"] for f in st["fields"])
        assert st["counts"]["expected"] == sum(f["expected"] for f in st["fields"])
        assert all(f["diverged"] == (f["differs"] and not f["expected"]) for f in st["fields"])
    assert j["first_divergence"]["cause"] == next(f["cause"] for st in j["stages"] for f in st["fields"]
                                                  if f["diverged"])
