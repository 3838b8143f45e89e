"""Audio that is not what it claims: range, clipping, loudness, speech presence; plus `load_audio`'s checks.

Every clip named by a record is decoded once (`measure_clip`, soundfile, mono mix at the file's own
rate) and measured; the checks then compare the numbers with these limits:

* sample range (error): a float file with a sample beyond +-1.  The codec expects full scale +-1;
  one huge sample or a whole clip scaled up makes its output collapse to a handful of codes.
  PCM files cannot exceed full scale, and 1.0 itself is exact in float32, so the limit is 1.0.
* full-scale share (warning): more than `CLIPPED_SHARE_WARNING` (0.1 %) of the samples at
  |x| >= `FULL_SCALE_LEVEL` (within 1 LSB of 16-bit full scale).  A peak-normalised recording has a
  handful of samples there (a few per clip: share ~1e-5 for 3 s at 24 kHz); hard clipping holds
  the signal there for runs of samples, i.e. many per second (0.1 % = 24 per second at 24 kHz).
* loudness (warning): level (`audio_io.rms_dbfs`, AES17 dBFS RMS after removing DC) below
  `QUIET_DBFS_WARNING` (-40 dBFS): speech is recorded around -25..-10 dBFS (the shipped clips read
  -13..-19); the hard floor (`--speech-floor-dbfs`, -60) stays an error through `load_audio`.
* speech presence (warning): the spread between loud and quiet 20 ms frames (p95 - p10 of frame
  levels in dB) below `SPEECH_RANGE_DB_WARNING` (10 dB).  Speech has pauses between words and
  syllables (the shipped clips: 33-106 dB); stationary noise does not: for Gaussian noise a
  480-sample frame's level has a standard deviation of 4.34 * sqrt(2/480) = 0.28 dB, so its p95 - p10
  is about (1.645 + 1.28) * 0.28 = 0.8 dB.  A clip with a transcript but no such spread is noise
  (or music) labelled as speech.
* `higgs_common.audio_io.load_audio` (errors, as in both pipelines): missing, undecodable, truncated,
  empty, NaN/Inf, silent, longer than max seconds, shorter than the codec minimum, below the speech floor.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import soundfile as sf

from higgs_common.audio_io import AudioError, audio_check_kwargs, load_audio, rms_dbfs
from higgs_common.audit.findings import ERROR, WARNING, ClipStats, Finding
from higgs_common.audit.sources import AuditRecord

FULL_SCALE_LEVEL = 32767.0 / 32768.0 - 1.0 / 32768.0   # within one 16-bit LSB of full scale
CLIPPED_SHARE_WARNING = 1e-3
QUIET_DBFS_WARNING = -40.0
SPEECH_RANGE_DB_WARNING = 10.0
FRAME_SECONDS = 0.02
_FLOOR_POWER = 1e-12          # -120 dB: frames of digital silence do not make the range infinite


def frame_range_db(wav: np.ndarray, sr: int) -> float:
    """p95 - p10 of the DC-free level of consecutive `FRAME_SECONDS` frames, in dB; wav shape (T,).

    0.0 for clips shorter than two frames.
    """
    n = max(1, int(round(sr * FRAME_SECONDS)))
    frames = wav[: len(wav) // n * n].astype(np.float64).reshape(-1, n)   # (F, n)
    if frames.shape[0] < 2:
        return 0.0
    frames = frames - frames.mean(axis=1, keepdims=True)
    level = 10.0 * np.log10(np.maximum((frames * frames).mean(axis=1), _FLOOR_POWER))
    return float(np.percentile(level, 95) - np.percentile(level, 10))


def measure_clip(path: Path) -> ClipStats:
    """Decode `path` (soundfile; errors propagate) and measure it (see `ClipStats`)."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)   # (T, channels)
    wav = data.mean(axis=1, dtype=np.float32)                          # (T,)
    finite = wav[np.isfinite(wav)]
    peak = float(np.abs(finite).max()) if finite.size else float("nan")
    return ClipStats(
        path=str(path), sample_rate=int(sr), seconds=wav.shape[0] / sr, peak=peak,
        beyond_full_scale=int((np.abs(finite) > 1.0).sum()),
        full_scale_share=float(((np.abs(finite) >= FULL_SCALE_LEVEL) & (np.abs(finite) <= 1.0)).mean())
        if finite.size else 0.0,
        rms_dbfs=rms_dbfs(finite) if finite.size else float("-inf"),
        frame_range_db=frame_range_db(finite, sr),
        sha256=hashlib.sha256(np.ascontiguousarray(wav).tobytes()).hexdigest())


def check_audio(records: Iterable[AuditRecord], *, options: Mapping[str, Any], min_samples: Optional[int],
                clips: dict[str, ClipStats]) -> list[Finding]:
    """Every check of the module doc on every clip of `records`; fills `clips` (path -> stats).

    A clip named by several records is decoded once and its findings name the first record and
    field that use it.  `options` as for `audio_io.audio_check_kwargs` (max_audio_seconds,
    speech_floor_dbfs, allow_no_speech).  `load_audio`'s errors are named ``dataset.<error class>``.
    """
    out: list[Finding] = []
    kwargs = audio_check_kwargs(options, min_samples=min_samples)
    for rec in records:
        has_text = {a for a, _ in rec.pairs}
        for fld, path in rec.audio.items():
            key = str(path)
            if key in clips or key in _failed(out):
                continue
            where = dict(path=key, sample_id=rec.sample_id, field=fld, clip=key)
            try:
                load_audio(path, sample_id=rec.sample_id, field=fld, **kwargs)
            except AudioError as exc:
                out.append(Finding(ERROR, f"dataset.{type(exc).__name__}", str(exc).rsplit(" [sample=", 1)[0],
                                   path=key, sample_id=rec.sample_id, field=fld))
            if not path.is_file():
                continue
            try:
                stats = measure_clip(path)
            except (sf.LibsndfileError, RuntimeError, ValueError):
                continue            # undecodable: load_audio reports it (here or in the dataset)
            clips[key] = stats
            out.extend(_judge(stats, fld in has_text, where))
    return out


def _failed(findings: list[Finding]) -> set[str]:
    return {f.path for f in findings if f.check.startswith("dataset.Audio") and f.path}


def _judge(s: ClipStats, has_text: bool, where: dict[str, Any]) -> list[Finding]:
    out: list[Finding] = []
    if s.peak > 1.0:
        share = s.beyond_full_scale / max(1.0, s.seconds * s.sample_rate)
        over = (f"{s.beyond_full_scale} isolated sample(s)" if share < CLIPPED_SHARE_WARNING
                else f"{100 * share:.1f} % of the samples: the clip as a whole is scaled up")
        out.append(Finding(ERROR, "audio.range", f"sample range exceeds +-1: peak {s.peak:.3g}, {over}; the codec "
                           "expects full scale +-1 (rescale or re-export the file)", value=s.peak, **where))
    if s.full_scale_share > CLIPPED_SHARE_WARNING:
        out.append(Finding(WARNING, "audio.clipped", f"{100 * s.full_scale_share:.2f} % of the samples are at full "
                           f"scale (limit {100 * CLIPPED_SHARE_WARNING:.1f} %): hard-clipped audio",
                           value=s.full_scale_share, **where))
    if np.isfinite(s.rms_dbfs) and s.rms_dbfs < QUIET_DBFS_WARNING:
        out.append(Finding(WARNING, "audio.quiet", f"level {s.rms_dbfs:.1f} dBFS RMS is below {QUIET_DBFS_WARNING:.0f} "
                           "dBFS: very quiet for speech", value=s.rms_dbfs, **where))
    if has_text and s.frame_range_db < SPEECH_RANGE_DB_WARNING:
        out.append(Finding(WARNING, "audio.no_speech_pattern", f"level range between loud and quiet 20 ms frames is "
                           f"{s.frame_range_db:.1f} dB (speech: pauses make it > {SPEECH_RANGE_DB_WARNING:.0f} dB): "
                           "stationary noise or music with a transcript", value=s.frame_range_db, **where))
    return out
