"""Issue 9, harness: bad input exits 2 naming file/sample/field, --skip-bad-samples, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.compare import EXIT_BAD_INPUT, main
from higgs_common.manifest import write_manifest
from tests.reliability_cases import break_wav, copy_records

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def manifest(records, tmp_path) -> tuple[Path, list]:
    recs = copy_records(records, tmp_path, n=3)
    return write_manifest(recs, tmp_path / "m.jsonl"), recs


def test_corrupt_wav_exits_2_naming_file_sample_field(manifest, tmp_path, capsys):
    path, recs = manifest
    break_wav(recs[0].audio, "truncated")
    rc = main(["--data", str(path), "--stage", "dataset", "--ddp-world-size", "0", "--quiet",
               "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc == EXIT_BAD_INPUT == 2
    assert "AudioDecodeError" in out and "truncated WAV" in out
    assert f"sample='{recs[0].id}'" in out and "field='audio'" in out and str(recs[0].audio) in out
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("field", ["text", "ref_text"])
def test_blank_transcript_exits_2(records, tmp_path, capsys, field):
    recs = copy_records(records, tmp_path, n=1)
    lines = [r.to_json(relative_to=tmp_path) for r in recs]
    lines[0][field] = "  "
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rc = main(["--data", str(tmp_path / "m.jsonl"), "--stage", "dataset", "--ddp-world-size", "0", "--quiet",
               "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc == 2 and "whitespace-only" in out and f"field='{field}'" in out and recs[0].id in out


def test_manifest_line_without_field_exits_2(manifest, tmp_path, capsys):
    path, recs = manifest
    lines = path.read_text().splitlines()
    bad = json.loads(lines[1])
    bad.pop("ref_audio")
    path.write_text("\n".join([lines[0], json.dumps(bad), lines[2]]) + "\n")
    rc = main(["--data", str(path), "--stage", "dataset", "--ddp-world-size", "0", "--quiet",
               "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc == 2 and "ManifestError" in out and f"sample='{recs[1].id}'" in out and "field='ref_audio'" in out


def test_skip_bad_samples_reports_and_continues(manifest, tmp_path, capsys):
    path, recs = manifest
    break_wav(recs[1].ref_audio, "nan")
    rc = main(["--data", str(path), "--stage", "dataset", "--ddp-world-size", "0", "--quiet", "--skip-bad-samples",
               "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc in (0, 1)
    assert out.count("skipped 1 bad sample(s)") == 2                  # once up front, once at the end
    assert f"skipped '{recs[1].id}': AudioNonFiniteError" in out and "field='ref_audio'" in out
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["config"]["samples"] == [recs[0].id, recs[2].id]
    assert report["config"]["skipped_samples"] == [
        {"sample_id": recs[1].id, "field": "ref_audio", "error": "AudioNonFiniteError"}]


def test_compare_subprocess_exit_status_2(manifest, tmp_path):
    path, recs = manifest
    break_wav(recs[2].audio, "garbage")
    proc = subprocess.run([sys.executable, "-m", "harness.compare", "--data", str(path), "--stage", "dataset",
                           "--ddp-world-size", "0", "--quiet", "--out", str(tmp_path / "rep")],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 2, proc.stdout + proc.stderr[-2000:]
    assert f"[sample='{recs[2].id}' field='audio' file='{recs[2].audio}']" in proc.stdout


@pytest.mark.slow
def test_two_runs_same_seed_give_identical_reports(tmp_path):
    """CPU, same seed: report.json is byte-identical apart from its "volatile" object."""
    texts = []
    for i in range(2):
        out = tmp_path / f"rep{i}"
        proc = subprocess.run([sys.executable, "-m", "harness.compare", "--stage", "all", "--ddp-world-size", "0",
                               "--seed", "3", "--quiet", "--out", str(out)], cwd=REPO, capture_output=True,
                              text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode in (0, 1), proc.stderr[-3000:]
        report = json.loads((out / "report.json").read_text())
        assert set(report["volatile"])                      # there is something volatile to drop
        report.pop("volatile")
        texts.append(json.dumps(report, indent=2, ensure_ascii=False))
    assert len(texts[0]) > 1000
    assert texts[0] == texts[1]
