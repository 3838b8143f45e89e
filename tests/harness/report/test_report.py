"""Report model (verdict, first divergence), writers (json/md/html), plots and terminal summary."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
import torch
from rich.console import Console

from harness.report import plots
from harness.engine.diff import FieldDiff, diff_tensors
from harness.report import (VOLATILE_KEY, Diagnosis, Report, StageResult, stage_status,
                            write_report)
from harness.report.terminal import print_summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def codes_diff(stage="dataset", field="audio_codes", keep_mask=True) -> FieldDiff:
    ref = torch.arange(4 * 30).reshape(4, 30) % 7          # (num_codebooks, T)
    cus = ref.clone()
    cus[1, 12] = 99
    cus[3, 20:25] = 0
    return diff_tensors(ref, cus, stage=stage, field=field, keep_mask=keep_mask,
                        decode=lambda i: f"codebook {i[0]}, frame {i[1]}",
                        sample_of=lambda i: "spk1_0001")


def equal(stage: str, field: str) -> FieldDiff:
    return FieldDiff(stage, field, "equal", numel=3)


def mismatch(stage: str, field: str, *, expected: bool = False, ref=1, cus=2) -> FieldDiff:
    return FieldDiff(stage, field, "mismatch", expected=expected,
                     expected_reason="declared" if expected else None, numel=3, mismatches=1,
                     first_index=[0], reference=ref, custom=cus)


def make_report(stages: list[StageResult], **kw) -> Report:
    kw.setdefault("generated_at", "2025-01-01T00:00:00+00:00")
    return Report(run_name="t", mode="chained", stages_requested=[s.stage for s in stages],
                  stages=stages, **kw)


def st(name: str, fields: list[FieldDiff], status: str | None = None, **kw) -> StageResult:
    return StageResult(name, status or stage_status(fields), fields, **kw)


# ----------------------------------------------------------------------------- verdict / first

def test_pass_when_only_expected_differences():
    r = make_report([st("dataset", [equal("dataset", "input_ids"),
                                    mismatch("dataset", "label_ids", expected=True)]),
                     st("loss", [equal("loss", "total")])])
    assert r.stages[0].status == "expected"
    assert r.verdict == "pass"
    assert r.first_divergence() is None


def test_first_divergence_follows_pipeline_order_not_list_order():
    r = make_report([
        st("loss", [mismatch("loss", "audio")]),
        st("collator", [equal("collator", "a"), mismatch("collator", "x", expected=True),
                        mismatch("collator", "label_audio_ids", ref=5, cus=-100),
                        mismatch("collator", "later")]),
        st("dataset", [mismatch("dataset", "ok", expected=True)]),
    ])
    fd = r.first_divergence()
    assert r.verdict == "diverged"
    assert (fd["stage"], fd["field"], fd["reference"], fd["custom"]) == \
        ("collator", "label_audio_ids", 5, -100)
    assert fd["index"] == [0] and fd["cause"] is None
    assert [s["stage"] for s in r.to_json()["stages"]] == ["dataset", "collator", "loss"]


def test_cause_is_the_fields_own_never_a_diagnosis_of_another_field():
    f = mismatch("collator", "label_audio_ids")
    diags = [Diagnosis("other cause", "e0", "loss", "audio"),
             Diagnosis("stage-level cause", "e1", "collator", None),
             Diagnosis("BOS in audio labels (reference quirk), expected", "e2", "collator", "label_audio_ids")]
    r = make_report([st("collator", [f])], diagnoses=diags)
    # A diagnosis list never lends its text to a divergence: a wrong cause is worse than none.
    assert r.first_divergence()["cause"] is None
    f.cause = {"mechanism": "audio labels shifted one frame left", "evidence": "shift -1 along frame", "rule": "x"}
    f.relation = {"kind": "shift", "words": "shifted 1 frame left", "axis": "frame", "details": {"k": -1}}
    fd = r.first_divergence()
    assert fd["cause"] == {"mechanism": "audio labels shifted one frame left", "evidence": "shift -1 along frame",
                           "rule": "x", "location": None}
    assert fd["relation"] == "shifted 1 frame left" and fd["relation_detail"]["details"]["k"] == -1


def test_error_verdict_and_divergence_before_error_wins():
    err = StageResult("forward", "error", [], error="RuntimeError: boom")
    assert make_report([st("dataset", [equal("dataset", "a")]), err]).verdict == "error"
    r = make_report([st("dataset", [mismatch("dataset", "a")]), err])
    assert r.verdict == "diverged"
    r = make_report([err, st("loss", [mismatch("loss", "a")])])
    assert r.verdict == "error"
    assert make_report([StageResult("step", "skipped", [])]).verdict == "pass"


def test_refresh_status_after_catalogue():
    f = mismatch("dataset", "a")
    s = st("dataset", [f])
    assert s.status == "diverged"
    f.expected, f.expected_reason = True, "known"
    assert s.refresh_status() == "expected"
    e = StageResult("forward", "error", [f], error="x")
    assert e.refresh_status() == "error"


# ----------------------------------------------------------------------------- JSON determinism

def _full_report(generated_at: str, seconds: float) -> Report:
    from harness.explain.window import window

    f = codes_diff()
    f.axes = ["codebook", "frame"]
    f.cause = {"mechanism": "audio labels | masked", "evidence": "all -100", "rule": "test"}
    f.relation = {"kind": "none", "words": "no simple relation fits", "axis": None, "details": {}}
    ref = torch.arange(4 * 30).reshape(4, 30) % 7
    cus = ref.clone()
    cus[1, 12] = 99
    cus[3, 20:25] = 0
    f.window = window(ref, cus, f.first_index, axes=("codebook", "frame"))
    ok = diff_tensors(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]), stage="loss",
                      field="per_codebook")
    return make_report(
        [st("dataset", [f], seconds_compute=seconds, seconds_diff=seconds / 10),
         st("loss", [ok], seconds_compute=2 * seconds)],
        generated_at=generated_at,
        config={"device": "cpu", "seed": 0, "faults": ["skip_audio_labels"]},
        config_diff=[{"setting": "lr", "reference": 1e-4, "custom": 5e-5, "same": False},
                     {"setting": "seed", "reference": 0, "custom": 0, "same": True}],
        catalogue=[{"id": "bos", "field": "collator.label_ids", "reason": "reference keeps BOS"}],
        diagnoses=[Diagnosis("audio labels | masked", "all -100", "dataset", "audio_codes")],
        extras={"per_codebook": {"reference": [5.1, 5.2, 5.0, 4.9], "custom": [0.0, 0.0, 0.0, 0.0]}},
    )


def test_json_identical_apart_from_volatile(tmp_path):
    p1 = write_report(_full_report("2025-01-01T00:00:00+00:00", 1.234), tmp_path / "a")
    p2 = write_report(_full_report("2025-06-01T12:00:00+00:00", 9.87), tmp_path / "b")
    j1 = json.loads(p1["json"].read_text())
    j2 = json.loads(p2["json"].read_text())
    assert j1[VOLATILE_KEY] != j2[VOLATILE_KEY]
    assert j1[VOLATILE_KEY]["timing"]["dataset"]["compute_s"] == 1.234
    v1, v2 = j1.pop(VOLATILE_KEY), j2.pop(VOLATILE_KEY)
    assert set(v1) == {"generated_at", "timing"}
    assert json.dumps(j1, sort_keys=True) == json.dumps(j2, sort_keys=True)
    # nothing time-like leaked outside "volatile"
    assert "2025" not in json.dumps(j1) and "1.234" not in json.dumps(j1)
    # the file itself is sorted JSON
    text = p1["json"].read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    assert j1["verdict"] == "diverged"
    assert list(j1) == sorted(j1)
    # markdown: same apart from its final "Timing (volatile)" section
    md1 = p1["md"].read_text().split("## Timing (volatile)")[0]
    md2 = p2["md"].read_text().split("## Timing (volatile)")[0]
    assert md1 == md2


def test_json_first_divergence_fields():
    j = _full_report("x", 1.0).to_json()
    ref_value = (torch.arange(120).reshape(4, 30) % 7)[1, 12].item()
    fd = j["first_divergence"]
    assert {k: fd[k] for k in ("stage", "field", "status", "sample", "index", "reference", "custom", "decoded",
                               "cause", "relation", "check", "axes")} == {
        "stage": "dataset", "field": "audio_codes", "status": "mismatch", "sample": "spk1_0001",
        "index": [1, 12], "reference": ref_value, "custom": 99, "decoded": "codebook 1, frame 12",
        "cause": {"mechanism": "audio labels | masked", "evidence": "all -100", "rule": "test", "location": None},
        "relation": "no simple relation fits", "check": "cross", "axes": ["codebook", "frame"]}
    win = fd["window"]
    assert win["axis"] == "frame" and win["positions"] == list(range(8, 17)) and len(win["rows"]) == 4
    assert win["rows"][1]["custom"][4] == "99"
    assert j["extras"]["per_codebook"]["custom"] == [0.0, 0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- markdown / html

def test_write_report_three_files_and_markdown_content(tmp_path):
    paths = write_report(_full_report("2025-01-01T00:00:00+00:00", 1.0), tmp_path)
    assert set(paths) == {"json", "md", "html"}
    assert all(p.exists() and p.stat().st_size > 0 for p in paths.values())
    md = paths["md"].read_text()
    assert "**Verdict:** `diverged`" in md
    assert "codebook 1, frame 12" in md and "spk1_0001" in md
    assert "audio labels \\| masked" in md                 # pipe escaped inside tables
    assert "| lr | 0.0001 | 5e-05 |" in md and "| seed |" not in md and "1 setting(s) the same" in md
    assert "reference keeps BOS" in md
    assert "Decoded window around the first difference" in md and "no simple relation fits" in md
    # every table row has the header's number of columns
    for block in re.findall(r"((?:^\|.*\|\n)+)", md, flags=re.M):
        rows = block.strip().splitlines()
        ncols = len(re.split(r"(?<!\\)\|", rows[0]))
        assert all(len(re.split(r"(?<!\\)\|", r)) == ncols for r in rows), block


def test_expected_fields_marked_with_reason(tmp_path):
    f = mismatch("collator", "label_ids", expected=True)
    f.expected_reason = "reference keeps BOS in labels"
    paths = write_report(make_report([st("collator", [f])]), tmp_path)
    assert "| label_ids | mismatch | 1 of 3 |  | reference keeps BOS in labels |" in paths["md"].read_text()
    text = paths["html"].read_text()
    # one click away: inside a closed <details> of a stage that is itself closed (nothing diverged there)
    assert 'class="expected"' in text and "<summary>1 declared difference(s)</summary>" in text
    assert '<details class="stage" id="stage-collator">' in text


def _data_uri_pngs(html_text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"',
                                                      html_text)]


def test_html_is_self_contained_with_heatmap_and_bars(tmp_path):
    paths = write_report(_full_report("2025-01-01T00:00:00+00:00", 1.0), tmp_path)
    text = paths["html"].read_text()
    pngs = _data_uri_pngs(text)
    assert len(pngs) == 2                                   # one heatmap + per-codebook bars
    assert all(p.startswith(PNG_MAGIC) for p in pngs)
    assert "<style>" in text and "http://" not in text and "https://" not in text
    assert "audio labels | masked" in text                  # html-escaped text present
    assert "<script" not in text
    # the heatmap's caption names its sample, its axes and the field's own count
    n = codes_diff().mismatches
    assert f"dataset.audio_codes, sample spk1_0001: {n} of 120 differ (the first divergence)" in text
    assert "(codebook x frame)" in text


def test_html_has_no_image_without_mask(tmp_path):
    r = make_report([st("dataset", [codes_diff(keep_mask=False)])])
    text = write_report(r, tmp_path)["html"].read_text()
    assert _data_uri_pngs(text) == []
    # a declared (expected) difference gets no heatmap either: plots show findings
    f = codes_diff(stage="collator", field="input_ids")
    f.expected, f.expected_reason = True, "declared"
    assert _data_uri_pngs(write_report(make_report([st("collator", [f])]), tmp_path / "b")["html"].read_text()) == []


def test_equal_fields_are_counted_not_listed(tmp_path):
    fields = [equal("backward", f"grad.p{i:03d}") for i in range(100)] + [mismatch("backward", "grad.z")]
    paths = write_report(make_report([st("backward", fields)]), tmp_path)
    for text in (paths["md"].read_text(), paths["html"].read_text()):
        assert "grad.z" in text and "100 equal field(s)" in text and "grad.p000" not in text


# ----------------------------------------------------------------------------- plots

def test_plots_return_deterministic_png():
    mask = torch.zeros(8, 50, dtype=torch.bool)
    mask[2, 17] = True
    a = plots.mismatch_heatmap(mask, "codes")
    assert a.startswith(PNG_MAGIC) and a == plots.mismatch_heatmap(mask, "codes")
    b = plots.per_codebook_bars([1.0, 2.0, float("nan")], [1.0, 0.0, 0.0], "loss")
    assert b.startswith(PNG_MAGIC) and b == plots.per_codebook_bars([1.0, 2.0, float("nan")],
                                                                    [1.0, 0.0, 0.0], "loss")
    assert b"Software" not in a


def test_heatmap_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        plots.mismatch_heatmap(torch.zeros(2, 2, 2, dtype=torch.bool), "x")


# ----------------------------------------------------------------------------- terminal

def test_print_summary_shows_table_panel_and_paths(tmp_path):
    report = _full_report("2025-01-01T00:00:00+00:00", 1.0)
    paths = write_report(report, tmp_path)
    console = Console(file=io.StringIO(), width=140, color_system=None)
    print_summary(report, console=console, paths=paths)
    out = console.file.getvalue()
    assert "verdict: diverged" in out
    assert "audio_codes" in out and "codebook 1, frame 12" in out and "99" in out
    assert str(paths["json"]) in out
    for col in ("stage", "status", "equal", "expected", "diverged", "first diverged field"):
        assert col in out


def test_print_summary_pass():
    report = make_report([st("dataset", [equal("dataset", "a")])])
    console = Console(file=io.StringIO(), width=100, color_system=None)
    print_summary(report, console=console)
    assert "verdict: pass" in console.file.getvalue()
    assert "No undeclared divergence" in console.file.getvalue()


def test_error_verdict_summary_names_the_stage_that_crashed(tmp_path):
    r = make_report([st("dataset", [equal("dataset", "a")]), StageResult("forward", "error", [], error="RuntimeError: boom")])
    paths = write_report(r, tmp_path)
    for text in (paths["md"].read_text(), paths["html"].read_text()):
        assert "Stage forward could not run: RuntimeError: boom" in text and "No undeclared divergence" not in text


def test_decoded_window_marks_the_first_difference_and_explains_nan_and_ignored_labels(tmp_path):
    from harness.explain.window import window

    ref = torch.tensor([[2.0, float("nan"), 3.0, -100.0, 1.0]])      # (sample, position)
    cus = torch.tensor([[2.0, float("nan"), 4.0, -100.0, 1.0]])
    f = diff_tensors(ref, cus, stage="loss", field="text_ce_common")
    f.window = window(ref, cus, f.first_index, axes=("sample", "position"))
    paths = write_report(make_report([st("loss", [f])]), tmp_path)
    html_text, md = paths["html"].read_text(), paths["md"].read_text()
    assert '<td class="first differs"><code>3</code></td>' in html_text
    for text in (html_text, md):
        assert "nan</code> = no value at this position" in text or "`nan` = no value at this position" in text
        assert "ignored label" in text and "infinite" not in text     # only the symbols the window shows
