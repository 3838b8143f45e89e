"""higgs_common.audit: every kind of bad data is reported at its level naming file, sample and field;
the shipped data is clean; higgs_common.vocab: a tokenizer larger than the embedding table is an error."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from higgs_common import DEFAULT_MANIFEST
from higgs_common.audit import DataAuditError, audit_before_training, run_audit
from higgs_common.audit.rates import spoken_chars
from higgs_common.audit.runner import is_dataset_check
from higgs_common.text_encoding import EncodingError, decode_utf8, likely_encoding
from tests.audit_cases import EXPECTED, bad_manifest, bom_reference_folder, oversized_tokenizer_model


def _find(report, sample_id, check):
    hits = [f for f in report.findings if f.sample_id == sample_id and f.check == check]
    assert hits, f"{check} not reported for {sample_id}: " + "\n".join(f.line() for f in report.findings)
    return hits[0]


def test_shipped_data_is_clean():
    report = run_audit(DEFAULT_MANIFEST.parent)
    assert report.records == 28 and len(report.clips) == 28
    assert report.findings == [], "\n".join(f.line() for f in report.findings)
    assert report.exit_status(strict=True) == 0


@pytest.fixture(scope="module")
def bad_report(tmp_path_factory):
    folder = bad_manifest(tmp_path_factory.mktemp("audit"))
    return folder, run_audit(folder)


@pytest.mark.parametrize("sample_id", sorted(EXPECTED))
def test_each_kind_is_reported_at_its_level(bad_report, sample_id):
    folder, report = bad_report
    check, level, field = EXPECTED[sample_id]
    f = _find(report, sample_id, check)
    assert f.level == level and f.field == field
    audio_field = check.startswith("audio.")
    expected_file = folder / "wavs" / f"{sample_id}.wav" if audio_field else folder / "manifest.jsonl"
    assert Path(f.path) == expected_file


def test_bad_report_exit_status_and_good_records_untouched(bad_report):
    _, report = bad_report
    assert report.exit_status() == 2 and report.exit_status(strict=True) == 2
    good = {json.loads(x)["id"] for x in DEFAULT_MANIFEST.read_text().splitlines()[:10]}
    # the clean records draw nothing but the conflicting-transcript / duplicate findings that name the pair
    assert not [f for f in report.findings if f.sample_id in good]


def test_encoding_finding_names_line_offset_and_likely_encoding(bad_report):
    _, report = bad_report
    f = _find(report, "cafe", "file.encoding")
    assert "line 20" in f.message and "byte offset" in f.message and "cp1252" in f.message


def test_bom_in_reference_transcript_file(tmp_path):
    folder, sid = bom_reference_folder(tmp_path)
    report = run_audit(folder)
    f = _find(report, sid, "text.bom")
    assert f.level == "error" and f.field == "transcript_file" and f.path == str(folder / f"{sid}.txt")
    assert "BYTE ORDER MARK" in f.message
    assert [x.check for x in report.findings] == ["text.bom"]        # the BOM is no transcript conflict


def test_chatml_text_field_with_cr(tmp_path):
    from higgs_common.converters import write_chatml_json
    from higgs_common.manifest import CanonicalRecord, load_manifest

    recs = load_manifest(DEFAULT_MANIFEST)
    r0 = recs[0]
    recs[0] = CanonicalRecord(r0.id, r0.speaker, r0.scene, r0.text + "\r\n", r0.audio, r0.ref_text, r0.ref_audio)
    path = write_chatml_json(recs, tmp_path / "train.json")
    report = run_audit(path)
    f = _find(report, r0.id, "text.whitespace")
    assert f.field == "messages[1].content[2].text" and f.path == str(path)
    assert report.exit_status() == 0 and report.exit_status(strict=True) == 2


def test_tokenizer_beyond_embedding_rows(tmp_path, assets):
    from transformers import AutoTokenizer

    from boson_multimodal.model.higgs_audio import HiggsAudioConfig
    from higgs_common.context import build_context
    from higgs_common.vocab import VocabularyMismatchError

    model = oversized_tokenizer_model(tmp_path, assets.model)
    tok = AutoTokenizer.from_pretrained(str(model))
    report = run_audit(DEFAULT_MANIFEST, tokenizer=tok, model_config=HiggsAudioConfig.from_pretrained(str(model)),
                       model_path=model)
    f = _find(report, None, "model.vocabulary")
    assert f.level == "error" and f.field == "vocab_size"
    assert "520 tokens" in f.message and "512 embedding rows" in f.message
    with pytest.raises(VocabularyMismatchError, match=r"520 tokens .* 512 embedding rows") as exc:
        build_context(model, assets.audio_tokenizer)
    assert str(model.resolve()) in str(exc.value)


def test_gate_prints_once_and_raises_on_errors(tmp_path):
    folder = bad_manifest(tmp_path)
    stream = io.StringIO()
    with pytest.raises(DataAuditError) as exc:
        audit_before_training(folder, prog="prog", stream=stream)
    lines = stream.getvalue().splitlines()
    own = [f for f in run_audit(folder).findings if not is_dataset_check(f.check)]
    assert lines[0].startswith("prog: data audit of") and lines[1:] == [f"  {f.line()}" for f in own]
    assert exc.value.sample_id and exc.value.path and "audit" in str(exc.value)
    quiet = io.StringIO()
    assert audit_before_training(DEFAULT_MANIFEST, prog="prog", stream=quiet) is not None
    assert quiet.getvalue() == ""                       # clean data: nothing printed


def test_decode_utf8_names_line_and_offset():
    data = "ok line\n".encode() + "caf\u00e9 \u201cquoted\u201d\n".encode("cp1252")
    with pytest.raises(EncodingError, match=r"line 2, byte 3 of the line \(byte offset 11 in the file\)") as exc:
        decode_utf8(data, path="m.jsonl")
    assert "likely encoding cp1252" in str(exc.value) and "file='m.jsonl'" in str(exc.value)
    assert likely_encoding("\u00e9".encode("latin-1")) == "cp1252 or ISO-8859-1 (latin-1)"


def test_spoken_chars_reads_numbers_and_symbols():
    assert spoken_chars("ab, c!") == 3
    assert spoken_chars("25°C") == 4 + 4 + len("degrees") + 1
