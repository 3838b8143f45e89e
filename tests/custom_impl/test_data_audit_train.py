"""custom_impl.train runs the data audit and the vocabulary check before training: exit 2, one line naming
file, sample and field; warnings are printed once."""

from __future__ import annotations

from custom_impl import train as T
from tests.audit_cases import bad_manifest, oversized_tokenizer_model, warnings_only_manifest

SMALL = ("--max-steps", "1", "--batch-size", "1", "--grad-accum", "1", "--cpu", "--speed", "none")


def _bad_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("custom_impl.train: bad input:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def test_audit_errors_exit_2_before_training(tmp_path, capsys):
    folder = bad_manifest(tmp_path)
    out = tmp_path / "run"
    assert T.main(["--data", str(folder), "--output-dir", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    line = _bad_line(err)
    assert "DataAuditError" in line and "sample='cafe'" in line and "field='text'" in line
    assert str(folder / "manifest.jsonl") in line
    assert err.count("data audit of") == 1 and "audio.range" in err and "text.chars_per_second" in err
    assert not (out / "metrics.jsonl").exists()


def test_audit_warnings_printed_once_and_training_runs(tmp_path, capsys):
    folder = warnings_only_manifest(tmp_path)
    assert T.main(["--data", str(folder), "--output-dir", str(tmp_path / "run"), *SMALL]) == 0
    err = capsys.readouterr().err
    assert err.count("data audit of") == 1 and err.count("text.whitespace") == 1


def test_tokenizer_beyond_embedding_table_exits_2(tmp_path, capsys, assets):
    model = oversized_tokenizer_model(tmp_path, assets.model)
    assert T.main(["--model-path", str(model), "--audio-tokenizer-path", str(assets.audio_tokenizer),
                   "--output-dir", str(tmp_path / "run"), *SMALL]) == 2
    line = _bad_line(capsys.readouterr().err)
    assert "VocabularyMismatchError" in line and "520 tokens" in line and "512 embedding rows" in line
    assert "field='vocab_size'" in line and str(model.resolve()) in line
