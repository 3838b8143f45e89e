"""The copy-probe dataset builder (higgs_common.assets.copy_probe): layout, pairing, determinism."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from higgs_common.assets import copy_probe as cp
from higgs_common.manifest import load_manifest

SMALL = cp.ProbeSpec(samples=8, frames_per_clip=5, seed=3)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != cp.INFO_FILE}


@pytest.fixture(scope="module")
def small_probe(tmp_path_factory) -> Path:
    return cp.ensure_copy_probe(SMALL, tmp_path_factory.mktemp("probe") / "p")


def test_every_voice_gets_a_ring_of_distinct_reference_target_pairs(small_probe: Path) -> None:
    records = load_manifest(small_probe)
    assert len(records) == 8
    voices = Counter(r.speaker for r in records)
    assert len(voices) == 4 and set(voices.values()) == {2}       # 4 shipped voices, 2 samples each
    for r in records:
        assert r.audio != r.ref_audio
        assert r.text == r.ref_text == cp.PROBE_TEXT               # no per-clip key to memorise under
    # ring: every reference clip is the target of another sample of the same voice
    targets = {(r.speaker, r.audio) for r in records}
    assert {(r.speaker, r.ref_audio) for r in records} == targets


def test_clips_are_whole_codec_frames_of_voiced_24khz_audio(small_probe: Path) -> None:
    for r in load_manifest(small_probe):
        audio, sr = sf.read(str(r.audio), dtype="float32")
        assert sr == cp.SAMPLE_RATE and audio.ndim == 1
        assert len(audio) == SMALL.frames_per_clip * cp.FRAME
        assert np.sqrt((audio ** 2).mean()) > 1e-3


def test_same_seed_same_bytes_other_seed_other_audio(tmp_path: Path, small_probe: Path) -> None:
    again = cp.build_copy_probe(tmp_path / "again", SMALL)
    assert _digest(again.parent) == _digest(small_probe.parent)
    other = cp.build_copy_probe(tmp_path / "other", cp.ProbeSpec(8, 5, seed=4))
    assert _digest(other.parent) != _digest(small_probe.parent)


def test_ensure_reuses_a_complete_build_and_rebuilds_a_stale_one(tmp_path: Path) -> None:
    manifest = cp.ensure_copy_probe(SMALL, tmp_path / "p")
    stamp = manifest.stat().st_mtime_ns
    assert cp.ensure_copy_probe(SMALL, tmp_path / "p").stat().st_mtime_ns == stamp
    info = tmp_path / "p" / cp.INFO_FILE
    info.write_text(json.dumps({**json.loads(info.read_text()), "probe_version": -1}))
    manifest.write_text("stale\n")
    rebuilt = cp.ensure_copy_probe(SMALL, tmp_path / "p")
    assert len(load_manifest(rebuilt)) == 8


def test_random_windows_are_cut_from_the_signal_at_any_sample_offset() -> None:
    signal = np.arange(10 * cp.FRAME, dtype=np.float32)
    out = cp.random_windows(signal, 50, np.random.default_rng(0))
    windows = out.reshape(50, cp.FRAME)
    starts = windows[:, 0].astype(int)
    assert all(np.array_equal(w, signal[s:s + cp.FRAME]) for w, s in zip(windows, starts))
    assert (starts % cp.FRAME != 0).any()                          # not only frame-aligned cuts


def test_too_few_samples_for_the_voices_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fewer than 2 samples"):
        cp.build_copy_probe(tmp_path / "p", cp.ProbeSpec(samples=5, frames_per_clip=5))
