"""Issue 15: the codec's minimum input length is derived from the loaded codec and matches real encodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from higgs_common.audio_io import AudioTooShortError
from higgs_common.code_cache import AudioEncodeError, CodeCache
from higgs_common.codec_limits import CodecGeometry, ConvSpec, chain_length, min_codec_samples, resampled_length
from tests.reliability_cases import write_short_clip


def _encode_frames(codec, n: int) -> int:
    """Frames the real codec returns for n samples of noise; 0 where it raises."""
    x = (0.1 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    try:
        return int(codec.encode(x, 24000).shape[-1])
    except RuntimeError as exc:
        assert "Kernel size" in str(exc) or "kernel size" in str(exc), exc
        return 0


def test_conv_arithmetic():
    spec = ConvSpec(kernel=16, stride=8, padding=4, dilation=1)
    assert spec.span == 16 and spec.out_length(8) == 1 and spec.out_length(7) == 0 and spec.out_length(960) == 120
    assert ConvSpec(7, 1, 27, 9).out_length(1) == 1                      # dilated "same" conv keeps any length
    assert chain_length([spec, ConvSpec(20, 10, 5, 1)], 79) == 0 and chain_length([spec, ConvSpec(20, 10, 5, 1)], 80) == 1
    assert [resampled_length(n, 24000, 16000) for n in (1, 3, 480, 481)] == [1, 2, 320, 321]


def test_tiny_codec_minimum_matches_real_encodes(ctx):
    codec = ctx.code_cache.audio_tokenizer
    geo = CodecGeometry.of(codec)
    m = geo.min_samples()
    assert m == ctx.code_cache.min_samples == min_codec_samples(codec)
    assert _encode_frames(codec, m - 1) == 0 and _encode_frames(codec, m) >= 1      # the boundary itself
    for n in (1, 100, 480, m + 1, 1919, 1920, 2881, 24001):
        assert geo.frames(n) == _encode_frames(codec, n), n


@pytest.mark.slow
def test_released_codec_geometry_differs_and_matches_its_layers():
    """The released configuration (ratios 8*5*4*2*3, HuBERT base) needs fewer samples than the tiny one."""
    from transformers import HubertConfig

    from boson_multimodal.audio_processing.higgs_audio_tokenizer import HiggsAudioTokenizer
    from higgs_common.assets.codec import FULL_CODEC_CONFIG, FULL_HUBERT_CONFIG, _local_hubert

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with _local_hubert(HubertConfig(**FULL_HUBERT_CONFIG)):
            codec = HiggsAudioTokenizer(**FULL_CODEC_CONFIG, device="cpu").eval()
    geo = CodecGeometry.of(codec)
    m = geo.min_samples()
    assert geo.hop_length == 960 and m != 960     # not "one hop": derived from the layers
    for n in (m - 1, m, m + 1, 959, 1500, 1920, 2881):
        x = 0.1 * torch.randn(1, 1, n)
        with torch.no_grad():
            try:
                a = codec.encoder(x).shape[-1]
            except RuntimeError:
                a = 0
            try:
                s = codec.encoder_semantic(codec.get_regress_target(x).transpose(1, 2)).shape[-1]
            except RuntimeError:
                s = 0
        assert (geo.acoustic_frames(n), geo.semantic_frames(n)) == (a, s), n
    assert geo.frames(m - 1) == 0 and geo.frames(m) >= 1


def test_code_cache_rejects_a_short_clip_before_the_codec(ctx, tmp_path):
    path = write_short_clip(tmp_path / "short.wav")
    cache = CodeCache(tmp_path / "cache", ctx.code_cache.audio_tokenizer, "f" * 64)
    with pytest.raises(AudioTooShortError) as err:
        cache.codes(path, sample_id="s1", field="audio")
    msg = str(err.value)
    assert "480 samples" in msg and f"{cache.min_samples} samples" in msg
    assert "s1" in msg and "'audio'" in msg and str(path) in msg
    assert cache.stats.misses == 1 and not list((tmp_path / "cache").rglob("*.npy"))


def test_any_codec_exception_is_a_sample_error_naming_the_clip(ctx, tmp_path, records):
    class Broken:
        sampling_rate = 24000

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def encode(self, wav, sr):
            raise IndexError("codebook lookup out of range")

    cache = CodeCache(tmp_path / "cache", Broken(ctx.code_cache.audio_tokenizer), "e" * 64)
    with pytest.raises(AudioEncodeError) as err:
        cache.codes(records[0].audio, sample_id=records[0].id, field="ref_audio")
    assert isinstance(err.value.__cause__, IndexError)
    msg = str(err.value)
    assert "IndexError: codebook lookup out of range" in msg
    assert records[0].id in msg and "'ref_audio'" in msg and str(records[0].audio) in msg
