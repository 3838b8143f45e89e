"""The README's fault table, pinned: every named custom fault -> where the harness says it acts.

Runs `python -m harness.compare --stage all` in-process (the tiny checkpoint and the code cache are
shared with the rest of the session) once per fault and checks exit status and
`report.json["first_divergence"]`.
"""

from __future__ import annotations

import json

import pytest

from custom_impl.faults import FAULTS
from harness import compare

# fault -> (stage, field or field prefix ending in '*', words the cause must contain)
FAULT_TABLE: dict[str, tuple[str, str, str]] = {
    "reference-audio-as-label": ("dataset", "target_audio_codes", "reference clip's codes"),
    "unmapped-audio-labels": ("collator", "supervised_audio_codes", "all audio labels are -100"),
    "silent-zero-audio-loss": ("loss", "audio_supervised_tokens@custom", "audio term left out"),
    "no-shift": ("loss", "audio_ce_common", "no next-token shift"),
    "random-extra-layers": ("forward", "logits", "absent from the checkpoint"),
    "ddp-unwrapped-forward": ("backward", "ddp_rank*", "not synchronised across ranks"),
    "inverted-no-sync": ("backward", "ddp_rank*", "not synchronised across ranks"),
}
DDP_FAULTS = {"ddp-unwrapped-forward", "inverted-no-sync"}


@pytest.mark.slow
def test_clean_run_passes_at_the_readme_defaults(tmp_path):
    out = tmp_path / "report"
    assert compare.main(["--stage", "all", "--quiet", "--out", str(out)]) == 0


def _run(tmp_path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "report"
    code = compare.main(["--stage", "all", "--quiet", "--samples", "2", "--out", str(out), *extra])
    return code, json.loads((out / "report.json").read_text())


def test_table_covers_every_registered_fault():
    assert set(FAULT_TABLE) == set(FAULTS)


@pytest.mark.slow
def test_no_fault_passes_with_only_catalogued_differences(tmp_path):
    code, report = _run(tmp_path, "--ddp-world-size", "2")
    assert code == 0
    assert report["verdict"] == "pass" and report["first_divergence"] is None
    differs = [f for st in report["stages"] for f in st["fields"] if f["differs"]]
    assert differs, "the pipelines differ by design; the catalogue must have matched something"
    assert all(f["expected"] and f["expected_reason"] and not f["diverged"] for f in differs)
    assert {st["stage"] for st in report["stages"]} == {"dataset", "collator", "forward", "loss", "backward", "step",
                                                        "config"}


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(FAULT_TABLE))
def test_fault_is_reported_where_it_acts(tmp_path, fault, fault_report):
    """The run `python -m harness.compare --fault F --samples 2` makes (the session's shared run)."""
    from harness.report.render import write_report

    if fault in DDP_FAULTS:
        pytest.importorskip("torch.distributed")
    stage, field, cause = FAULT_TABLE[fault]
    run = fault_report(fault)
    code = 0 if run.verdict == "pass" else 1
    report = json.loads(write_report(run, tmp_path / "report")["json"].read_text())
    first = report["first_divergence"]
    assert code == 1, f"{fault}: expected exit 1, got {code}"
    assert first is not None and first["stage"] == stage, first
    if field.endswith("*"):
        assert first["field"].startswith(field[:-1]), first
    else:
        assert first["field"] == field, first
    assert first["cause"] and cause in first["cause"]["mechanism"], first["cause"]


def test_unknown_fault_is_bad_usage(tmp_path, capsys):
    assert compare.main(["--stage", "dataset", "--quiet", "--fault", "no-such-fault", "--out", str(tmp_path)]) == 2
    assert "no-such-fault" in capsys.readouterr().out


def test_help_lists_every_fault(capsys):
    with pytest.raises(SystemExit) as exc:
        compare.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in FAULTS:
        assert name in text
