"""audio_io.load_audio: typed errors that name file, sample and field; logged resample/downmix."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, strategies as st

from higgs_common.audio_io import (
    AudioDecodeError,
    AudioEmptyError,
    AudioError,
    AudioMissingError,
    AudioNonFiniteError,
    AudioSilentError,
    AudioTooLongError,
    load_audio,
)
from higgs_common.stages import SampleError

SR = 24000


def tone(seconds: float = 0.5, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


def write(path: Path, data: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def assert_names_everything(err: SampleError, path: Path) -> None:
    msg = str(err)
    assert "s1" in msg and "ref_audio" in msg and str(path) in msg
    assert err.sample_id == "s1" and err.field == "ref_audio" and err.path == str(path)


def test_reads_pcm16_as_float32_mono(tmp_path):
    p = write(tmp_path / "a.wav", tone(0.5))
    wav = load_audio(p, sample_id="s1", field="audio")
    assert wav.dtype == np.float32 and wav.shape == (SR // 2,)
    np.testing.assert_allclose(wav, tone(0.5), atol=1 / 32768 + 1e-6)


@pytest.mark.parametrize("make, error", [
    (lambda d: d / "nope.wav", AudioMissingError),
    (lambda d: (d / "junk.wav").write_bytes(b"this is not audio at all" * 10) and d / "junk.wav", AudioDecodeError),
    (lambda d: write(d / "empty.wav", np.zeros(0, np.float32)), AudioEmptyError),
    (lambda d: write(d / "silent.wav", np.zeros(SR, np.float32)), AudioSilentError),
    (lambda d: write(d / "quiet.wav", np.full(SR, 5e-5, np.float32), subtype="FLOAT"), AudioSilentError),
])
def test_bad_files_raise_typed_errors_naming_file_sample_field(tmp_path, make, error):
    path = make(tmp_path)
    with pytest.raises(error) as info:
        load_audio(path, sample_id="s1", field="ref_audio")
    assert isinstance(info.value, AudioError) and isinstance(info.value, SampleError)
    assert_names_everything(info.value, path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, bad):
    data = tone(0.2)
    data[100] = bad
    path = write(tmp_path / "nan.wav", data, subtype="FLOAT")
    with pytest.raises(AudioNonFiniteError) as info:
        load_audio(path, sample_id="s1", field="ref_audio")
    assert_names_everything(info.value, path)


def test_truncated_wav_is_detected(tmp_path):
    full = write(tmp_path / "full.wav", tone(0.5)).read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(full[: len(full) // 2])      # header still claims the whole data chunk
    with pytest.raises(AudioDecodeError, match="truncated") as info:
        load_audio(path, sample_id="s1", field="ref_audio")
    assert_names_everything(info.value, path)


def test_header_only_wav_is_an_error(tmp_path):
    path = tmp_path / "hdr.wav"
    path.write_bytes(write(tmp_path / "x.wav", tone(0.1)).read_bytes()[:20])
    with pytest.raises(AudioDecodeError):
        load_audio(path, sample_id="s1", field="ref_audio")


def test_too_long(tmp_path):
    path = write(tmp_path / "long.wav", tone(2.0))
    assert load_audio(path, sample_id="s1", field="audio", max_seconds=2.5).shape == (2 * SR,)
    with pytest.raises(AudioTooLongError, match="2.00 s") as info:
        load_audio(path, sample_id="s1", field="ref_audio", max_seconds=1.5)
    assert_names_everything(info.value, path)


def test_resample_is_logged(tmp_path, caplog):
    path = write(tmp_path / "16k.wav", tone(0.5, sr=16000), sr=16000)
    with caplog.at_level(logging.WARNING, logger="higgs_common.audio"):
        wav = load_audio(path, sample_id="s1", field="audio")
    assert wav.shape == (SR // 2,) and wav.dtype == np.float32
    [rec] = [r for r in caplog.records if r.name == "higgs_common.audio"]
    assert "16000" in rec.getMessage() and "s1" in rec.getMessage() and str(path) in rec.getMessage()


def test_stereo_is_downmixed_and_logged(tmp_path, caplog):
    stereo = tone(0.25, channels=2)
    stereo[:, 1] *= 0.5
    path = write(tmp_path / "st.wav", stereo, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="higgs_common.audio"):
        wav = load_audio(path, sample_id="s1", field="audio")
    np.testing.assert_allclose(wav, stereo.mean(axis=1), rtol=0, atol=1e-7)
    assert any("downmix" in r.getMessage() and "s1" in r.getMessage() for r in caplog.records)


def test_no_warning_for_clean_input(tmp_path, caplog):
    path = write(tmp_path / "ok.wav", tone(0.2))
    with caplog.at_level(logging.WARNING, logger="higgs_common.audio"):
        load_audio(path, sample_id="s1", field="audio")
    assert not caplog.records


@pytest.mark.property
@given(sr=st.sampled_from([8000, 16000, 22050, 24000, 44100, 48000]),
       seconds=st.floats(0.05, 0.6), amp=st.floats(2e-3, 1.0))
def test_output_length_follows_resampling(tmp_path_factory, sr, seconds, amp):
    n = max(1, int(sr * seconds))
    data = (amp * np.sin(np.arange(n) * 0.05)).astype(np.float32)
    path = write(tmp_path_factory.mktemp("p") / "x.wav", data, sr=sr, subtype="FLOAT")
    wav = load_audio(path, sample_id="s", field="audio")
    assert wav.dtype == np.float32 and wav.ndim == 1 and np.isfinite(wav).all()
    assert abs(wav.shape[0] - n * SR / sr) <= 1


# ----------------------------------------------------------------------------- issue 15: level and length

def test_rms_dbfs_follows_aes17():
    """0 dBFS = a full-scale sine; a sine of peak A reads 20*log10(A); DC is removed first."""
    from higgs_common.audio_io import rms_dbfs

    t = np.arange(SR) / SR
    sine = np.sin(2 * np.pi * 1000 * t)
    assert rms_dbfs(sine) == pytest.approx(0.0, abs=1e-6)
    assert rms_dbfs(1e-3 * sine) == pytest.approx(-60.0, abs=1e-6)
    assert rms_dbfs(0.4 + 0.01 * sine) == pytest.approx(-40.0, abs=1e-6)     # DC offset does not count
    assert rms_dbfs(np.full(100, 0.3)) == float("-inf")


def test_hiss_is_no_speech_and_can_be_downgraded(tmp_path, caplog):
    from higgs_common.audio_io import DEFAULT_SPEECH_FLOOR_DBFS, AudioNoSpeechError
    from tests.reliability_cases import write_hiss

    path = write_hiss(tmp_path / "hiss.wav")       # peak 2e-4: passes the digital-silence test
    assert np.abs(sf.read(str(path))[0]).max() > 1e-4
    with pytest.raises(AudioNoSpeechError, match=r"-8\d\.\d dBFS RMS") as info:
        load_audio(path, sample_id="s1", field="ref_audio")
    assert_names_everything(info.value, path)
    assert f"{DEFAULT_SPEECH_FLOOR_DBFS:.1f} dBFS" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="higgs_common.audio"):
        wav = load_audio(path, sample_id="s1", field="ref_audio", allow_no_speech=True)
    assert wav.shape == (2 * SR,)
    assert any("no speech" in r.getMessage() and "s1" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records)
    load_audio(path, sample_id="s1", field="audio", speech_floor_dbfs=-90.0)    # a lower floor accepts it


def test_dc_offset_alone_is_no_speech(tmp_path):
    from higgs_common.audio_io import AudioNoSpeechError

    path = write(tmp_path / "dc.wav", np.full(SR, 0.25, np.float32), subtype="FLOAT")
    with pytest.raises(AudioNoSpeechError, match="-inf dBFS"):
        load_audio(path, sample_id="s1", field="audio")


def test_quiet_speech_level_is_accepted(tmp_path):
    path = write(tmp_path / "quiet.wav", 0.01 * tone(0.5) / 0.3, subtype="FLOAT")     # -40 dBFS
    load_audio(path, sample_id="s1", field="audio")


def test_min_samples_is_checked_at_the_target_rate(tmp_path):
    from higgs_common.audio_io import AudioTooShortError

    path = write(tmp_path / "short16k.wav", tone(0.05, sr=16000), sr=16000)       # 800 -> 1200 samples at 24 kHz
    assert load_audio(path, sample_id="s1", field="audio", min_samples=1200).shape == (1200,)
    with pytest.raises(AudioTooShortError, match="1200 samples") as info:
        load_audio(path, sample_id="s1", field="ref_audio", min_samples=1201)
    assert_names_everything(info.value, path)
