"""The shortest clip the loaded audio codec can encode, derived from its layers (not a constant).

Why: upstream `HiggsAudioTokenizer.encode` on a clip shorter than its convolutions can cover stops
deep inside PyTorch with ``RuntimeError: ... Kernel size can't be greater than actual input
size``, naming no sample, field or file.  Knowing the minimum up front lets the pipelines reject
such a clip as a `SampleError` before the codec runs.  The tiny and the released codec have
different down-sampling stages, so the minimum is read from the loaded codec object.

What `encode` computes (boson_multimodal 0.1.1, ``audio_processing/higgs_audio_tokenizer.py``,
`HiggsAudioTokenizer._xcodec_encode`), for a mono clip of ``n`` samples at ``sample_rate``:

* acoustic path: ``encoder(x)``, the DAC encoder: a chain of `Conv1d`s (a 7-tap input conv, per
  ratio r three dilated residual units whose convs keep the length, then a strided conv with
  kernel 2r, stride r, padding ceil(r/2), and a 3-tap output conv).  A = its output length.
* semantic path (`get_regress_target`): resample to ``semantic_sample_rate`` (torchaudio:
  ``ceil(n * new / old)`` samples), pad 160 samples on each side (``F.pad(x, (160, 160))``), run
  the HuBERT feature encoder (unpadded strided `Conv1d`s; the transformer after it keeps the
  length), keep every ``semantic_downsample_factor``-th frame (``step_down``: ceil(H / f)) or
  average-pool them (``avg``: floor(H / f)), then ``encoder_semantic`` (length-keeping convs).
  S = its output length.
* if A != S the acoustic path is run again on the clip padded by ``160 * semantic_downsample_factor``
  samples per side, and both are cut to the shorter one.

A `Conv1d` with kernel k, dilation d, stride s and padding p maps L samples to
``floor((L + 2p - d(k-1) - 1) / s) + 1`` and raises when ``L + 2p < d(k-1) + 1`` (its receptive
field does not fit).  Walking the codec's `Conv1d` modules in registration order gives A and S
exactly for these architectures because every residual branch keeps the length (checked against
real encodes of the tiny and the released configuration in tests/higgs_common/test_codec_limits.py).
The minimum is the smallest n for which both paths fit, found by search (both lengths grow
monotonically with n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from higgs_common.stages import HiggsDiffError

# Literals of upstream HiggsAudioTokenizer (see the module docstring): the semantic input is
# padded by SEMANTIC_PAD samples per side, the acoustic re-encode by SEMANTIC_PAD * factor.
SEMANTIC_PAD = 160
# Search bound: a codec that cannot encode this many seconds is broken, not just demanding.
_SEARCH_LIMIT_SECONDS = 60


class CodecLimitsError(HiggsDiffError, ValueError):
    """The codec's structure is not one this module knows how to measure."""


@dataclass(frozen=True)
class ConvSpec:
    """One `Conv1d`'s length arithmetic (all in samples / frames of its input)."""

    kernel: int
    stride: int
    padding: int
    dilation: int

    @property
    def span(self) -> int:
        """Receptive field of one output frame in input samples: d(k-1) + 1."""
        return self.dilation * (self.kernel - 1) + 1

    def out_length(self, length: int) -> int:
        """Output length for `length` input frames, 0 when the input is shorter than `span`."""
        padded = length + 2 * self.padding
        if length <= 0 or padded < self.span:
            return 0
        return (padded - self.span) // self.stride + 1


def conv_specs(module: torch.nn.Module) -> list[ConvSpec]:
    """Every `torch.nn.Conv1d` inside `module`, in registration (= forward) order."""
    specs = []
    for m in module.modules():
        if not isinstance(m, torch.nn.Conv1d):
            continue
        if isinstance(m.padding, str):
            if m.padding != "same":
                specs.append(ConvSpec(m.kernel_size[0], m.stride[0], 0, m.dilation[0]))   # 'valid'
            continue   # 'same' (stride 1 only in torch) keeps the length
        specs.append(ConvSpec(m.kernel_size[0], m.stride[0], m.padding[0], m.dilation[0]))
    if not specs:
        raise CodecLimitsError(f"{type(module).__name__} has no Conv1d layers to measure")
    return specs


def chain_length(specs: Iterable[ConvSpec], length: int) -> int:
    """Length after the convs in order; 0 as soon as one of them cannot cover its input."""
    for spec in specs:
        length = spec.out_length(length)
        if length == 0:
            return 0
    return length


def resampled_length(n: int, orig_sr: int, new_sr: int) -> int:
    """Samples `torchaudio.functional.resample` returns for n input samples: ceil(n * new / orig)."""
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    return -(-n * new // orig)


@dataclass(frozen=True)
class CodecGeometry:
    """What decides the codec's output length, read once from a loaded `HiggsAudioTokenizer`."""

    sample_rate: int                 # Hz of the codec's input
    hop_length: int                  # input samples per code frame (product of the ratios)
    semantic_sample_rate: int        # Hz of the semantic model's input
    semantic_factor: int             # semantic_downsample_factor
    semantic_downsample: str         # "step_down" | "avg"
    acoustic: tuple[ConvSpec, ...]
    semantic_features: tuple[ConvSpec, ...]
    semantic_encoder: tuple[ConvSpec, ...]

    @classmethod
    def of(cls, codec: Any) -> "CodecGeometry":
        """Read the geometry of an upstream `HiggsAudioTokenizer` (raises CodecLimitsError if unknown)."""
        teacher = getattr(codec, "semantic_techer", None)
        extractor = getattr(getattr(codec, "semantic_model", None), "feature_extractor", None)
        if teacher not in ("hubert_base", "hubert_base_general", "wavlm_base_plus") or extractor is None:
            raise CodecLimitsError(f"cannot derive the minimum input length of a codec with semantic model "
                                   f"{teacher!r} (only HuBERT/WavLM feature encoders are measured)")
        mode = getattr(codec, "downsample_mode", "step_down")
        if mode not in ("step_down", "avg"):
            raise CodecLimitsError(f"unknown semantic downsample_mode {mode!r}")
        return cls(sample_rate=int(codec.sample_rate), hop_length=int(codec.hop_length),
                   semantic_sample_rate=int(codec.semantic_sample_rate),
                   semantic_factor=int(codec.semantic_downsample_factor), semantic_downsample=mode,
                   acoustic=tuple(conv_specs(codec.encoder)),
                   semantic_features=tuple(conv_specs(extractor)),
                   semantic_encoder=tuple(conv_specs(codec.encoder_semantic)))

    def acoustic_frames(self, n: int) -> int:
        """Frames of `encoder(x)` for n samples (0: it raises)."""
        return chain_length(self.acoustic, n)

    def semantic_frames(self, n: int) -> int:
        """Frames of `encoder_semantic(get_regress_target(x))` for n samples (0: it raises)."""
        m = resampled_length(n, self.sample_rate, self.semantic_sample_rate) + 2 * SEMANTIC_PAD
        h = chain_length(self.semantic_features, m)
        if h == 0:
            return 0
        f = self.semantic_factor
        if self.semantic_downsample == "step_down":
            h = -(-h // f) if f > 1 else h
        else:
            h = h // f
        return chain_length(self.semantic_encoder, h)

    def frames(self, n: int) -> int:
        """Code frames `encode` returns for a clip of n samples; 0 where `encode` raises."""
        a, s = self.acoustic_frames(n), self.semantic_frames(n)
        if a == 0 or s == 0:
            return 0
        if a != s:
            a = self.acoustic_frames(n + 2 * SEMANTIC_PAD * self.semantic_factor)
        return min(a, s)

    def min_samples(self) -> int:
        """Smallest clip length (samples at `sample_rate`) that `encode` turns into >= 1 frame."""
        limit = _SEARCH_LIMIT_SECONDS * self.sample_rate
        hi = 1
        while self.frames(hi) == 0:
            hi *= 2
            if hi > limit:
                raise CodecLimitsError(f"the codec encodes no clip of up to {_SEARCH_LIMIT_SECONDS} s")
        lo = hi // 2          # frames(lo) == 0 or lo == 0
        while hi - lo > 1:    # invariant: frames(lo) == 0 (or lo == 0), frames(hi) >= 1
            mid = (lo + hi) // 2
            if self.frames(mid) >= 1:
                hi = mid
            else:
                lo = mid
        return hi


def min_codec_samples(codec: Any) -> int:
    """The shortest clip, in samples at the codec's own rate, that `codec.encode` can encode."""
    return CodecGeometry.of(codec).min_samples()
