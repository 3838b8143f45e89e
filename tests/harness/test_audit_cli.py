"""`higgs-diff audit DATA`: table, --json, --html, --strict and exit status; the compare gate."""

from __future__ import annotations

import json

from harness import cli
from harness.audit import main
from higgs_common import DEFAULT_MANIFEST
from tests.audit_cases import EXPECTED, bad_manifest, warnings_only_manifest


def test_shipped_data_exits_0(capsys):
    assert cli.main(["audit", str(DEFAULT_MANIFEST.parent)]) == 0
    assert "28 records, 28 clips): 0 error(s), 0 warning(s)" in capsys.readouterr().out


def test_bad_data_table_json_html(tmp_path, capsys):
    folder = bad_manifest(tmp_path)
    rc = main([str(folder), "--json", str(tmp_path / "a.json"), "--html", str(tmp_path / "a.html")])
    out = capsys.readouterr().out
    assert rc == 2
    for sid, (check, _, _) in EXPECTED.items():
        assert sid in out and check in out
    doc = json.loads((tmp_path / "a.json").read_text())
    got = {(f["sample_id"], f["check"]): f for f in doc["findings"]}
    for sid, (check, level, field) in EXPECTED.items():
        f = got[(sid, check)]
        assert f["level"] == level and f["field"] == field and f["path"]
    assert doc["exit_status"] == 2 and doc["errors"] >= 5 and doc["warnings"] >= 4
    page = (tmp_path / "a.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 4 and "scaled.wav" in page and "noise.wav" in page


def test_strict_turns_warnings_into_exit_2(tmp_path, capsys):
    folder = warnings_only_manifest(tmp_path)
    assert main([str(folder)]) == 0
    assert main([str(folder), "--strict"]) == 2
    assert "text.whitespace" in capsys.readouterr().out


def test_unknown_data_is_bad_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "holds neither manifest.jsonl" in capsys.readouterr().err


def test_compare_stops_on_audit_errors_before_any_stage(tmp_path, capsys):
    from harness.compare import main as compare

    folder = bad_manifest(tmp_path)
    rc = compare(["--data", str(folder), "--stage", "dataset", "--ddp-world-size", "0", "--quiet",
                  "--out", str(tmp_path / "rep")])
    cap = capsys.readouterr()
    assert rc == 2 and "DataAuditError" in cap.out and "sample='cafe'" in cap.out and "field='text'" in cap.out
    assert "data audit of" in cap.err and not (tmp_path / "rep").exists()


def test_compare_refuses_tokenizer_beyond_embedding_table(tmp_path, capsys, assets):
    from harness.compare import main as compare
    from tests.audit_cases import oversized_tokenizer_model

    model = oversized_tokenizer_model(tmp_path, assets.model)
    rc = compare(["--model", str(model), "--stage", "dataset", "--ddp-world-size", "0", "--quiet",
                  "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc == 2 and "VocabularyMismatchError" in out and "520 tokens" in out and "512 embedding rows" in out
    assert "field='vocab_size'" in out and not (tmp_path / "rep").exists()


def test_model_option_checks_tokenizer_against_embedding_rows(tmp_path, capsys, assets):
    from tests.audit_cases import oversized_tokenizer_model

    assert main([str(DEFAULT_MANIFEST.parent), "--model", str(assets.model)]) == 0
    model = oversized_tokenizer_model(tmp_path, assets.model)
    capsys.readouterr()
    assert main([str(DEFAULT_MANIFEST.parent), "--model", str(model), "--json", str(tmp_path / "a.json")]) == 2
    (finding,) = json.loads((tmp_path / "a.json").read_text())["findings"]
    assert finding["check"] == "model.vocabulary" and finding["field"] == "vocab_size"
    assert "520 tokens" in finding["message"] and str(model) in finding["message"]
