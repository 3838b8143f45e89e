"""The canonical manifest: round trip, path resolution, and errors that say where the problem is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from higgs_common.manifest import REQUIRED_FIELDS, CanonicalRecord, ManifestError, load_manifest, write_manifest


def _record(root: Path, sid: str = "a_000", text: str = "Hello there.") -> CanonicalRecord:
    return CanonicalRecord(id=sid, speaker="a", scene="a quiet room", text=text,
                           audio=root / "wavs" / f"{sid}.wav", ref_text="Other words.",
                           ref_audio=root / "wavs" / "a_001.wav")


def _good_line(sid: str = "s1") -> dict:
    return {"id": sid, "speaker": "a", "scene": "a quiet room", "text": "Hi.", "audio": "wavs/x.wav",
            "ref_text": "Yo.", "ref_audio": "wavs/y.wav"}


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_round_trip_keeps_fields_and_makes_paths_relative_on_disk(tmp_path: Path) -> None:
    recs = [_record(tmp_path, "a_000"), _record(tmp_path, "a_001", text="It was 25°C (warm) [laugh]")]
    path = write_manifest(recs, tmp_path / "manifest.jsonl")
    on_disk = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert on_disk[0]["audio"] == "wavs/a_000.wav"
    assert "°C" in on_disk[1]["text"]          # written as UTF-8, not \u escapes
    assert "°C" in path.read_text(encoding="utf-8")
    back = load_manifest(path)
    assert back == [CanonicalRecord(**{**r.__dict__, "audio": r.audio.resolve(), "ref_audio": r.ref_audio.resolve()})
                    for r in recs]
    assert all(r.audio.is_absolute() and r.ref_audio.is_absolute() for r in back)


def test_paths_resolve_against_manifest_folder_not_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "deep" / "dir"
    sub.mkdir(parents=True)
    path = _write_lines(sub / "m.jsonl", [json.dumps(_good_line())])
    monkeypatch.chdir(tmp_path)
    (rec,) = load_manifest(path)
    assert rec.audio == (sub / "wavs" / "x.wav").resolve()


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "m.jsonl", [json.dumps(_good_line("s1")), "", "   ", json.dumps(_good_line("s2"))])
    assert [r.id for r in load_manifest(path)] == ["s1", "s2"]


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "m.jsonl", [json.dumps(_good_line("s1")), "{not json"])
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: not valid JSON"):
        load_manifest(path)


def test_non_object_line_is_a_clear_error(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "m.jsonl", ["[1, 2]"])
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: expected a JSON object, got list"):
        load_manifest(path)


@pytest.mark.parametrize("field", REQUIRED_FIELDS[1:])
def test_missing_field_names_line_sample_and_field(tmp_path: Path, field: str) -> None:
    bad = _good_line("s7")
    del bad[field]
    path = _write_lines(tmp_path / "m.jsonl", [json.dumps(_good_line("s1")), json.dumps(bad)])
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    msg = str(err.value)
    assert "m.jsonl:2" in msg and "'s7'" in msg and repr(field) in msg


def test_missing_id_names_the_line(tmp_path: Path) -> None:
    bad = _good_line()
    del bad["id"]
    path = _write_lines(tmp_path / "m.jsonl", [json.dumps(bad)])
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: sample '<line 1>' lacks string field 'id'"):
        load_manifest(path)


def test_wrong_type_field_is_rejected(tmp_path: Path) -> None:
    bad = {**_good_line("s3"), "text": 42}
    path = _write_lines(tmp_path / "m.jsonl", [json.dumps(bad)])
    with pytest.raises(ManifestError, match=r"sample 's3' lacks string field 'text'"):
        load_manifest(path)


def test_duplicate_id_is_rejected(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "m.jsonl", [json.dumps(_good_line("dup")), json.dumps(_good_line("dup"))])
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: sample 'dup' duplicated"):
        load_manifest(path)


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@pytest.mark.property
@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.tuples(_text, _text, _text), min_size=1, max_size=5))
def test_any_unicode_text_round_trips(tmp_path_factory: pytest.TempPathFactory,
                                      texts: list[tuple[str, str, str]]) -> None:
    root = tmp_path_factory.mktemp("m")
    recs = [CanonicalRecord(id=f"id{i}", speaker=spk, scene="a small studio", text=t, audio=root / f"{i}.wav",
                            ref_text=rt, ref_audio=root / "r.wav")
            for i, (t, rt, spk) in enumerate(texts)]
    back = load_manifest(write_manifest(recs, root / "m.jsonl"))
    assert [(r.text, r.ref_text, r.speaker) for r in back] == list(texts)
