"""The shipped sample dataset under data/: shape, sizes, reference pairing, and regenerability."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
import soundfile as sf

from higgs_common.manifest import CanonicalRecord, load_manifest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"
MANIFEST = DATA / "manifest.jsonl"
SCRIPT = REPO / "scripts" / "make_sample_data.py"


@pytest.fixture(scope="module")
def records() -> list[CanonicalRecord]:
    return load_manifest(MANIFEST)


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_sample_data", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod        # dataclasses look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_enough_speakers_and_utterances(records: list[CanonicalRecord]) -> None:
    per_speaker = Counter(r.speaker for r in records)
    assert len(records) >= 24
    assert len(per_speaker) >= 4
    assert min(per_speaker.values()) >= 6, per_speaker


def test_reference_is_another_utterance_of_the_same_speaker(records: list[CanonicalRecord]) -> None:
    by_audio = {r.audio: r for r in records}
    for r in records:
        assert r.ref_audio != r.audio, r.id
        ref = by_audio.get(r.ref_audio)
        assert ref is not None, f"{r.id}: reference {r.ref_audio} is not an utterance of the manifest"
        assert ref.speaker == r.speaker, r.id
        assert ref.text == r.ref_text, r.id          # ref_text transcribes exactly that clip
        assert ref.text != r.text, r.id


def test_scenes_are_a_small_set(records: list[CanonicalRecord]) -> None:
    assert {r.scene for r in records} == {"a quiet room", "a small studio"}


def test_wavs_are_24khz_mono_pcm16_between_1_and_6_s(records: list[CanonicalRecord]) -> None:
    for r in records:
        info = sf.info(str(r.audio))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (24000, 1, "PCM_16", "WAV"), r.id
        assert 1.0 <= info.frames / info.samplerate <= 6.0, (r.id, info.frames / info.samplerate)


def test_audio_is_speech_not_silence_or_clipping(records: list[CanonicalRecord]) -> None:
    for r in records:
        x, _ = sf.read(str(r.audio), dtype="int16")   # (T,)
        peak = int(abs(x.astype("int32")).max())
        assert 8000 < peak < 32767, (r.id, peak)      # normalised to about -1 dBFS, never clipped


def test_total_size_under_8_mb_and_no_stray_files(records: list[CanonicalRecord]) -> None:
    wavs = sorted((DATA / "wavs").glob("*"))
    assert {p.resolve() for p in wavs} == {r.audio for r in records}
    assert sum(p.stat().st_size for p in wavs) < 8 * 1024 * 1024


def test_transcripts_exercise_the_reference_normaliser(records: list[CanonicalRecord]) -> None:
    texts = " ".join(r.text for r in records)
    for needle in ("(", ")", "°C", "°F", "[laugh]", "[cough]", "  "):
        assert needle in texts, needle
    assert any(not r.text.rstrip().endswith((".", "!", "?")) for r in records)   # final period added


def test_spoken_form_drops_tags_and_spells_units() -> None:
    mod = _load_script()
    assert mod.spoken_form("It was 25°C (warm)  [laugh]") == "It was 25 degrees Celsius (warm)"
    assert mod.spoken_form("Cold: 14°F [cough].") == "Cold: 14 degrees Fahrenheit ."


def test_readme_documents_provenance() -> None:
    text = (DATA / "README.md").read_text(encoding="utf-8")
    for needle in ("espeak", "eSpeak NG", "SoX", "make_sample_data.py", "en-us", "en-gb-scotland"):
        assert needle in text, needle


def test_script_help_runs() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    assert "--out" in out.stdout


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                    reason="espeak-ng / sox not installed")
def test_regeneration_reproduces_the_shipped_data(tmp_path: Path) -> None:
    """Same manifest always; byte-identical audio when the espeak-ng version matches the README's."""
    mod = _load_script()
    mod.make_dataset(tmp_path)
    assert (tmp_path / "manifest.jsonl").read_bytes() == MANIFEST.read_bytes()
    same_engine = mod.espeak_version() in (DATA / "README.md").read_text(encoding="utf-8")
    for new in sorted((tmp_path / "wavs").glob("*.wav")):
        old = DATA / "wavs" / new.name
        if same_engine:
            assert hashlib.sha256(new.read_bytes()).digest() == hashlib.sha256(old.read_bytes()).digest(), new.name
        else:
            assert abs(sf.info(str(new)).duration - sf.info(str(old)).duration) < 0.5, new.name
