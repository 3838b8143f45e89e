"""Converters from the canonical manifest to each pipeline's native format, and back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import dacite
import numpy as np
import pytest
import soundfile as sf
from boson_multimodal.data_types import AudioContent, ChatMLSample, TextContent

from higgs_common.converters import (
    CHATML_SYSTEM_PROMPT,
    read_chatml_json,
    read_reference_folder,
    write_chatml_json,
    write_reference_folder,
)
from higgs_common.manifest import CanonicalRecord, load_manifest
from higgs_common.stages import SampleError

MANIFEST = Path(__file__).resolve().parents[2] / "data" / "manifest.jsonl"

SAMPLE_KEYS = {"id", "audio_file", "transcript_file", "duration", "speaker_id", "speaker_name", "scene",
               "ref_audio_file", "ref_transcript", "language"}
INFO_KEYS = {"total_samples", "speakers", "languages", "total_duration", "avg_duration", "created_from"}


@pytest.fixture(scope="module")
def records() -> list[CanonicalRecord]:
    return load_manifest(MANIFEST)


def _tiny_wav(path: Path, seconds: float, freq: float = 220.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(24000 * seconds)) / 24000
    sf.write(str(path), 0.3 * np.sin(2 * np.pi * freq * t), 24000, subtype="PCM_16")
    return path


def _tiny_records(root: Path) -> list[CanonicalRecord]:
    a, b = _tiny_wav(root / "w" / "a.wav", 1.0), _tiny_wav(root / "w" / "b.wav", 1.5, 330.0)
    return [CanonicalRecord("s0", "spk", "a quiet room", "Hello.", a, "World.", b),
            CanonicalRecord("s1", "spk", "a quiet room", "World.", b, "Hello.", a)]


def _same_content(x: CanonicalRecord, y: CanonicalRecord) -> bool:
    return (replace(x, audio=Path(), ref_audio=Path()) == replace(y, audio=Path(), ref_audio=Path())
            and x.audio.read_bytes() == y.audio.read_bytes()
            and x.ref_audio.read_bytes() == y.ref_audio.read_bytes())


# ----------------------------------------------------------------------------- reference folder

def test_reference_folder_round_trips(records: list[CanonicalRecord], tmp_path: Path) -> None:
    out = write_reference_folder(records, tmp_path / "ref_native")
    back = read_reference_folder(out)
    assert [r.id for r in back] == [r.id for r in records]
    for orig, new in zip(records, back):
        assert _same_content(orig, new), orig.id
        assert new.audio.parent == out.resolve()               # copies, not the canonical files
        assert new.ref_audio.parent == (out / "ref").resolve()


def test_metadata_json_schema(records: list[CanonicalRecord], tmp_path: Path) -> None:
    out = write_reference_folder(records, tmp_path / "native")
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    assert set(meta) == {"dataset_info", "samples"}
    assert set(meta["dataset_info"]) == INFO_KEYS
    info = meta["dataset_info"]
    assert info["total_samples"] == len(records) == len(meta["samples"])
    assert set(info["speakers"]) == {r.speaker for r in records}
    assert info["total_duration"] == pytest.approx(sum(s["duration"] for s in meta["samples"]), abs=1e-2)
    for s, r in zip(meta["samples"], records):
        assert set(s) == SAMPLE_KEYS
        assert (s["id"], s["audio_file"], s["transcript_file"]) == (r.id, f"{r.id}.wav", f"{r.id}.txt")
        assert (s["speaker_id"], s["scene"], s["ref_transcript"]) == (r.speaker, r.scene, r.ref_text)
        assert s["duration"] == pytest.approx(sf.info(str(r.audio)).duration, abs=1e-3)
        # The reference joins every path with its data_dir: all must be relative and exist there.
        for key in ("audio_file", "transcript_file", "ref_audio_file"):
            assert not Path(s[key]).is_absolute() and (out / s[key]).is_file(), (r.id, key)
        assert s["ref_audio_file"].startswith("ref/")
        assert (out / s["transcript_file"]).read_text(encoding="utf-8") == r.text   # verbatim, unnormalised
        assert (out / s["ref_audio_file"]).read_bytes() == r.ref_audio.read_bytes()
        assert (out / s["ref_audio_file"]).read_bytes() != (out / s["audio_file"]).read_bytes()


def test_reference_folder_copies_each_reference_once(records: list[CanonicalRecord], tmp_path: Path) -> None:
    out = write_reference_folder(records, tmp_path / "native")
    assert sorted(p.name for p in (out / "ref").iterdir()) == sorted({r.ref_audio.name for r in records})


# ----------------------------------------------------------------------------- ChatML JSON

def test_chatml_round_trips_exactly(records: list[CanonicalRecord], tmp_path: Path) -> None:
    path = write_chatml_json(records, tmp_path / "sub" / "train.json")
    assert read_chatml_json(path) == records          # same absolute canonical paths, no copies


def test_chatml_structure(records: list[CanonicalRecord], tmp_path: Path) -> None:
    items = json.loads(write_chatml_json(records, tmp_path / "train.json").read_text(encoding="utf-8"))
    assert isinstance(items, list) and len(items) == len(records)
    for item, r in zip(items, records):
        assert set(item) == {"messages", "start_index", "speaker", "misc"}
        assert item["start_index"] == 0 and item["speaker"] == r.speaker
        assert item["misc"]["sample_id"] == r.id and item["misc"]["scene"] == r.scene
        system, user, assistant = item["messages"]
        assert system == {"role": "system", "content": CHATML_SYSTEM_PROMPT}
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"] == [
            {"type": "text", "text": r.ref_text},
            {"type": "audio", "audio_url": str(r.ref_audio)},
            {"type": "text", "text": r.text},
        ]
        assert assistant["content"] == [{"type": "audio", "audio_url": str(r.audio)}]
        assert Path(user["content"][1]["audio_url"]).is_absolute()


def test_chatml_items_parse_like_upstream_prepare_chatml_sample(records: list[CanonicalRecord],
                                                                tmp_path: Path) -> None:
    """Upstream parses dict samples with dacite strict + type checks; an unknown key would fail there."""
    items = json.loads(write_chatml_json(records[:3], tmp_path / "t.json").read_text(encoding="utf-8"))
    for item, r in zip(items, records):
        sample = dacite.from_dict(ChatMLSample, item, config=dacite.Config(strict=True, check_types=True))
        user = sample.messages[1].content
        assert isinstance(user[0], TextContent) and isinstance(user[1], AudioContent)
        assert user[1].audio_url == str(r.ref_audio) and user[1].duration is None
        assert isinstance(sample.messages[2].content[0], AudioContent)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("writer", [write_reference_folder, write_chatml_json])
@pytest.mark.parametrize("field", ["audio", "ref_audio"])
def test_missing_wav_names_sample_and_field(tmp_path: Path, writer, field: str) -> None:
    recs = _tiny_records(tmp_path)
    missing = tmp_path / "gone.wav"
    recs[1] = replace(recs[1], **{field: missing})
    target = tmp_path / "out"
    with pytest.raises(SampleError) as err:
        writer(recs, target if writer is write_reference_folder else target / "t.json")
    assert (err.value.sample_id, err.value.field) == ("s1", field)
    assert "'s1'" in str(err.value) and repr(field) in str(err.value) and "gone.wav" in str(err.value)
    assert not target.exists()                        # validated before writing anything


def test_unreadable_wav_is_a_sample_error(tmp_path: Path) -> None:
    recs = _tiny_records(tmp_path)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav at all")
    with pytest.raises(SampleError, match=r"cannot read wav .*field='audio'"):
        write_chatml_json([replace(recs[0], audio=bad)], tmp_path / "t.json")


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    recs = _tiny_records(tmp_path)
    with pytest.raises(SampleError, match=r"duplicate sample id 's0'.*field='id'"):
        write_reference_folder([recs[0], recs[0]], tmp_path / "out")


def test_unsafe_id_is_rejected(tmp_path: Path) -> None:
    recs = _tiny_records(tmp_path)
    with pytest.raises(SampleError, match=r"field='id'"):
        write_reference_folder([replace(recs[0], id="../escape")], tmp_path / "out")


def test_empty_input_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SampleError, match="no records"):
        write_chatml_json([], tmp_path / "t.json")


def test_reference_name_collision_with_different_audio_is_rejected(tmp_path: Path) -> None:
    recs = _tiny_records(tmp_path)
    other = _tiny_wav(tmp_path / "elsewhere" / "b.wav", 2.0, 440.0)      # same file name, other clip
    with pytest.raises(SampleError, match=r"'b\.wav'.*sample='s1' field='ref_audio'"):
        write_reference_folder([recs[0], replace(recs[1], ref_audio=other, id="s1")], tmp_path / "out")


def test_read_reference_folder_names_missing_metadata_field(tmp_path: Path) -> None:
    out = write_reference_folder(_tiny_records(tmp_path), tmp_path / "out")
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    del meta["samples"][1]["ref_transcript"]
    (out / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(SampleError, match=r"sample='s1' field='ref_transcript'.*metadata\.json"):
        read_reference_folder(out)


def test_read_chatml_names_the_bad_json_field(tmp_path: Path) -> None:
    path = write_chatml_json(_tiny_records(tmp_path), tmp_path / "t.json")
    items = json.loads(path.read_text(encoding="utf-8"))
    del items[1]["messages"][2]["content"][0]["audio_url"]
    path.write_text(json.dumps(items), encoding="utf-8")
    with pytest.raises(SampleError, match=r"sample='s1' field='messages\[2\]\.content\[0\]\.audio_url'"):
        read_chatml_json(path)


def test_reference_folder_files_are_replaced_whole_never_truncated(records: list[CanonicalRecord], tmp_path: Path,
                                                                  monkeypatch) -> None:
    """A copy that dies half-way (or a second torchrun rank writing the same folder) leaves the
    previous complete file in place and no temporary behind."""
    import shutil

    import higgs_common.converters as conv

    out = write_reference_folder(records, tmp_path / "ref")
    before = {p.name: p.read_bytes() for p in out.glob("*.wav")}

    def dies_half_way(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[:100])
        raise OSError("disk full")

    monkeypatch.setattr(conv.shutil, "copyfile", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        write_reference_folder(records, out)
    monkeypatch.setattr(conv.shutil, "copyfile", shutil.copyfile)
    assert {p.name: p.read_bytes() for p in out.glob("*.wav")} == before
    assert not list(out.rglob("*.tmp"))
