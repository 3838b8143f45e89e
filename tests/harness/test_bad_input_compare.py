"""Issue 15, harness: each kind of bad input from the bug reports exits 2 with one line naming
sample, field and file; `--skip-bad-samples` leaves it out and still writes a report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from harness.compare import EXIT_BAD_INPUT, main
from tests.reliability_cases import issue15_manifest

BASE = ["--stage", "dataset", "--ddp-world-size", "0", "--quiet"]

# case -> (error class, manifest field named, whether the file named is the wav (else the manifest))
CASES = {
    "short": ("AudioTooShortError", "audio", True),
    "short_ref": ("AudioTooShortError", "ref_audio", True),
    "hiss": ("AudioNoSpeechError", "audio", True),
    "token": ("ReservedTokenError", "text", False),
    "token_ref": ("ReservedTokenError", "ref_text", False),
    "empty_norm": ("TranscriptEmptyError", "text", False),
}


def _bad_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("bad input:")]
    assert len(lines) == 1, out
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_naming_sample_field_file(records, tmp_path, capsys, case):
    error, field, names_wav = CASES[case]
    data, bad = issue15_manifest(records, tmp_path, case)
    rc = main(["--data", str(data), *BASE, "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc == EXIT_BAD_INPUT == 2
    line = _bad_line(out)
    wav = bad.ref_audio if field == "ref_audio" else bad.audio
    expected_file = str(wav) if names_wav else str(data / "manifest.jsonl")
    assert error in line and f"sample='{bad.id}'" in line and f"field='{field}'" in line
    assert f"file='{expected_file}'" in line
    assert "diverged" not in out and "verdict" not in out and not (tmp_path / "rep").exists()


@pytest.mark.parametrize("case", sorted(CASES))
def test_skip_bad_samples_leaves_it_out_and_writes_the_report(records, tmp_path, capsys, case):
    error, field, _ = CASES[case]
    data, bad = issue15_manifest(records, tmp_path, case)
    rc = main(["--data", str(data), *BASE, "--skip-bad-samples", "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc in (0, 1), out
    assert f"skipped '{bad.id}': {error}" in out and f"field='{field}'" in out
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert bad.id not in report["config"]["samples"] and len(report["config"]["samples"]) == 2
    assert report["config"]["skipped_samples"] == [{"sample_id": bad.id, "field": field, "error": error}]


def test_speech_floor_options(records, tmp_path, capsys, caplog):
    data, bad = issue15_manifest(records, tmp_path, "hiss")
    args = ["--data", str(data), *BASE]
    with caplog.at_level(logging.WARNING, logger="higgs_common.audio"):
        assert main([*args, "--allow-no-speech", "--out", str(tmp_path / "a")]) in (0, 1)
    assert any("no speech content" in r.getMessage() and str(bad.audio) in r.getMessage() for r in caplog.records)
    assert bad.id in json.loads((tmp_path / "a" / "report.json").read_text())["config"]["samples"]
    assert main([*args, "--speech-floor-dbfs", "-90", "--out", str(tmp_path / "b")]) in (0, 1)
    assert main([*args, "--speech-floor-dbfs", "-70", "--out", str(tmp_path / "c")]) == 2
    assert "below the speech floor of -70.0 dBFS" in capsys.readouterr().out


def test_data_folder_means_its_manifest(records, tmp_path, capsys):
    from higgs_common.manifest import write_manifest
    from tests.reliability_cases import copy_records

    folder = tmp_path / "data"
    write_manifest(copy_records(records, folder, n=2), folder / "manifest.jsonl")
    assert main(["--data", str(folder), *BASE, "--out", str(tmp_path / "rep")]) in (0, 1)
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["config"]["data"] == str((folder / "manifest.jsonl").resolve())
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--data", str(empty), *BASE, "--out", str(tmp_path / "rep2")]) == 2
    line = _bad_line(capsys.readouterr().out)
    assert "ManifestError" in line and "holds no manifest.jsonl" in line and str(empty) in line


def test_a_stage_failing_because_of_a_sample_error_is_bad_input(records, tmp_path, capsys, monkeypatch):
    """A library error raised around a SampleError (its cause) is reported as bad input, not 'error'."""
    import custom_impl.stages as custom_stages
    from higgs_common.manifest import write_manifest
    from higgs_common.stages import SampleError
    from tests.reliability_cases import copy_records

    def collate(items, ctx):
        try:
            raise SampleError("labels of this sample are unusable", sample_id=items[0].sample_id,
                              field="label_ids", path="x.json")
        except SampleError as exc:
            raise IndexError("index 3 is out of bounds") from exc

    monkeypatch.setattr(custom_stages, "collate", collate)
    folder = tmp_path / "data"
    write_manifest(copy_records(records, folder, n=2), folder / "manifest.jsonl")
    rc = main(["--data", str(folder), "--stage", "collator", "--ddp-world-size", "0", "--quiet",
               "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc == 2 and "field='label_ids'" in _bad_line(out) and "verdict" not in out
