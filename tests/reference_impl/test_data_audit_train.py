"""reference_impl.train runs the data audit and the vocabulary check before training: exit 2, one line
naming file, sample and field, before the first step (the reference CLI used to fail only after training
started)."""

from __future__ import annotations

from reference_impl.train import cli
from tests.audit_cases import bad_manifest, bom_reference_folder, oversized_tokenizer_model

SMALL = ("--max-steps", "1", "--report-to", "none", "--device", "cpu")


def _bad_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("reference_impl.train: bad input:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def test_audit_errors_exit_2_before_training(tmp_path, capsys):
    folder = bad_manifest(tmp_path)
    assert cli(["--data", str(folder), "--output-dir", str(tmp_path / "run"), *SMALL]) == 2
    line = _bad_line(capsys.readouterr().err)
    assert "DataAuditError" in line and "sample='cafe'" in line and "field='text'" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_bom_transcript_in_reference_folder_exits_2(tmp_path, capsys):
    folder, sid = bom_reference_folder(tmp_path)
    assert cli(["--data-dir", str(folder), "--output-dir", str(tmp_path / "run"), *SMALL]) == 2
    line = _bad_line(capsys.readouterr().err)
    assert "text.bom" in line and f"sample='{sid}'" in line and "field='transcript_file'" in line
    assert str(folder / f"{sid}.txt") in line


def test_tokenizer_beyond_embedding_table_exits_2(tmp_path, capsys, assets):
    model = oversized_tokenizer_model(tmp_path, assets.model)
    assert cli(["--model-path", str(model), "--audio-tokenizer-path", str(assets.audio_tokenizer),
                "--output-dir", str(tmp_path / "run"), *SMALL]) == 2
    line = _bad_line(capsys.readouterr().err)
    assert "VocabularyMismatchError" in line and "520 tokens" in line and "field='vocab_size'" in line
