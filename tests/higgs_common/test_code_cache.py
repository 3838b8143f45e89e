"""CodeCache: encode once, key = audio bytes + codec fingerprint, atomic .npy entries."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from higgs_common.assets.codec import calibration_waveform
from higgs_common.audio_io import AudioMissingError, AudioSilentError
from higgs_common.code_cache import CodeCache


@pytest.fixture(scope="module")
def codec(ctx):
    return ctx.code_cache.audio_tokenizer


@pytest.fixture()
def wav(tmp_path) -> Path:
    path = tmp_path / "clip.wav"
    sf.write(str(path), calibration_waveform(0.4, seed=3), 24000, subtype="PCM_16")
    return path


def make(root: Path, codec, fp: str = "a" * 64) -> CodeCache:
    return CodeCache(root, codec, fp)


def test_miss_then_memory_hit_then_disk_hit(tmp_path, codec, wav):
    cache = make(tmp_path / "c", codec)
    first = cache.codes(wav, sample_id="s", field="audio")
    assert first.dtype == torch.long and first.shape == (codec.n_q, 10)   # 0.4 s at 25 frames/s
    assert (cache.stats.misses, cache.stats.hits) == (1, 0)
    again = cache.codes(wav, sample_id="s", field="audio")
    assert (cache.stats.misses, cache.stats.memory_hits) == (1, 1)
    torch.testing.assert_close(first, again, rtol=0, atol=0)

    fresh = make(tmp_path / "c", codec)              # new process, same folder: read from disk
    from_disk = fresh.codes(wav, sample_id="s", field="audio")
    assert (fresh.stats.misses, fresh.stats.disk_hits) == (0, 1)
    torch.testing.assert_close(first, from_disk, rtol=0, atol=0)


def test_cached_codes_equal_a_direct_encode(tmp_path, codec, wav):
    cache = make(tmp_path / "c", codec)
    direct = codec.encode(calibration_waveform(0.4, seed=3).astype(np.float32), 24000)
    got = cache.codes(wav, sample_id="s", field="audio")
    # the wav is PCM_16-quantised, so compare codes of what the file holds
    data, _ = sf.read(str(wav), dtype="float32")
    torch.testing.assert_close(got, codec.encode(data, 24000).long(), rtol=0, atol=0)
    assert direct.shape == got.shape


def test_entry_layout_and_dtype(tmp_path, codec, wav):
    fp = "0123456789abcdef" + "f" * 48
    cache = make(tmp_path / "c", codec, fp)
    codes = cache.codes(wav, sample_id="s", field="audio")
    sha = CodeCache.file_sha256(wav)
    entry = tmp_path / "c" / fp[:16] / sha[:2] / f"{sha}.npy"
    assert cache.entry_path(sha) == entry and entry.is_file()
    stored = np.load(entry)
    assert stored.dtype == np.int16 and stored.shape == tuple(codes.shape)
    assert not list(entry.parent.glob("*.tmp")), "temporary files must not survive"


def test_key_is_file_bytes_not_path(tmp_path, codec, wav):
    cache = make(tmp_path / "c", codec)
    cache.codes(wav, sample_id="s", field="audio")
    copy = tmp_path / "elsewhere.wav"
    copy.write_bytes(wav.read_bytes())
    cache.codes(copy, sample_id="s2", field="audio")
    assert cache.stats.misses == 1 and cache.stats.hits == 1

    data, sr = sf.read(str(wav), dtype="float32")
    data[:1200] *= -1.0                                  # same length, different bytes
    sf.write(str(copy), data, sr, subtype="PCM_16")
    assert CodeCache.file_sha256(copy) != CodeCache.file_sha256(wav)
    cache.codes(copy, sample_id="s2", field="audio")
    assert cache.stats.misses == 2


def test_key_includes_codec_fingerprint(tmp_path, codec, wav):
    a = make(tmp_path / "c", codec, "a" * 64)
    b = make(tmp_path / "c", codec, "b" * 64)
    a.codes(wav, sample_id="s", field="audio")
    b.codes(wav, sample_id="s", field="audio")
    assert a.stats.misses == 1 and b.stats.misses == 1   # another codec never reuses codes
    sha = CodeCache.file_sha256(wav)
    assert a.entry_path(sha) != b.entry_path(sha)
    assert a.entry_path(sha).is_file() and b.entry_path(sha).is_file()


def test_returned_tensor_is_a_copy(tmp_path, codec, wav):
    cache = make(tmp_path / "c", codec)
    first = cache.codes(wav, sample_id="s", field="audio")
    keep = first.clone()
    first.fill_(-100)                                    # what an in-place collator might do
    torch.testing.assert_close(cache.codes(wav, sample_id="s", field="audio"), keep, rtol=0, atol=0)


def test_corrupt_entry_is_re_encoded(tmp_path, codec, wav, caplog):
    cache = make(tmp_path / "c", codec)
    good = cache.codes(wav, sample_id="s", field="audio")
    cache.entry_path(CodeCache.file_sha256(wav)).write_bytes(b"garbage")
    fresh = make(tmp_path / "c", codec)
    with caplog.at_level(logging.WARNING, logger="higgs_common.code_cache"):
        again = fresh.codes(wav, sample_id="s", field="audio")
    assert fresh.stats.misses == 1 and any("discarding" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(good, again, rtol=0, atol=0)


def test_bad_audio_errors_name_sample_and_field(tmp_path, codec):
    cache = make(tmp_path / "c", codec)
    with pytest.raises(AudioMissingError, match="field='ref_audio'"):
        cache.codes(tmp_path / "missing.wav", sample_id="s9", field="ref_audio")
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(24000, np.float32), 24000)
    with pytest.raises(AudioSilentError, match="s9"):
        cache.codes(silent, sample_id="s9", field="audio")
    assert not any((tmp_path / "c").rglob("*.npy")), "nothing is cached for a failed encode"


def test_short_fingerprint_rejected(tmp_path, codec):
    with pytest.raises(ValueError):
        CodeCache(tmp_path, codec, "abc")
