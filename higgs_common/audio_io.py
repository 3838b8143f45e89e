"""Load one audio file as float32 mono at the codec's rate, or fail naming the file, sample and field.

Why strict: a pipeline that quietly encodes a truncated, silent or NaN-filled clip produces codes
that look fine and train on garbage.  Every bad input raises a :class:`AudioError` (a
`SampleError`), whose message carries the file, the sample id and the field.  Recoverable
differences (another sample rate, stereo) are fixed but logged at WARNING on
``logging.getLogger("higgs_common.audio")`` so they are never invisible.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from higgs_common.stages import SampleError

log = logging.getLogger("higgs_common.audio")

SILENCE_THRESHOLD = 1e-4   # every |x| below this: treated as silent
# Both pipelines' default `max_audio_seconds`: longer clips are an AudioTooLongError, not a silent
# memory blow-up (the released codec runs at 25 frames/s, so 30 s = 750 frames per codebook).
DEFAULT_MAX_AUDIO_SECONDS = 30.0


class AudioError(SampleError):
    """Base class of every audio input error."""


class AudioMissingError(AudioError, FileNotFoundError):
    """The audio file does not exist."""


class AudioDecodeError(AudioError):
    """The file is not readable audio: corrupt, truncated or an unsupported format."""


class AudioEmptyError(AudioError):
    """The file holds no samples."""


class AudioNonFiniteError(AudioError):
    """The file holds NaN or Inf samples."""


class AudioSilentError(AudioError):
    """Every sample is (almost) zero."""


class AudioTooLongError(AudioError):
    """The clip is longer than the caller's `max_seconds`."""


def _check_wav_container(path: Path, sample_id: str, field: str) -> None:
    """Reject a RIFF/WAVE file whose chunks run past the end of the file.

    libsndfile reads a truncated WAV without complaint (it returns the frames that are there), so
    truncation has to be detected from the header: the `data` chunk must fit in the file.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return  # not a WAV container: leave it to the decoder
        endian = "<" if head[:4] == b"RIFF" else ">"
        offset = 12
        while offset + 8 <= size:
            fh.seek(offset)
            chunk_id, chunk_size = struct.unpack(endian + "4sI", fh.read(8))
            if chunk_id == b"data":
                if chunk_size not in (0, 0xFFFFFFFF) and offset + 8 + chunk_size > size:
                    raise AudioDecodeError(
                        f"truncated WAV: data chunk declares {chunk_size} bytes but only "
                        f"{size - offset - 8} are present", sample_id=sample_id, field=field, path=path)
                return
            offset += 8 + chunk_size + (chunk_size & 1)
        raise AudioDecodeError("WAV file has no data chunk (truncated header?)",
                               sample_id=sample_id, field=field, path=path)


def load_audio(path: str | Path, *, sample_id: str, field: str, target_sr: int = 24000,
               max_seconds: float | None = None) -> np.ndarray:
    """Return the clip as float32 mono, shape (T,), at `target_sr`.

    Raises an :class:`AudioError` subclass for a missing, unreadable, truncated, empty, NaN/Inf,
    silent or too long clip.  `max_seconds` is checked on the decoded duration.
    """
    path = Path(path)
    where = dict(sample_id=sample_id, field=field, path=path)
    if not path.is_file():
        raise AudioMissingError("audio file not found", **where)
    _check_wav_container(path, sample_id, field)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)   # (T, channels)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioDecodeError(f"cannot decode audio: {exc}", **where) from exc
    if data.shape[0] == 0:
        raise AudioEmptyError("audio file holds no samples", **where)
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioNonFiniteError(f"audio holds {bad} NaN/Inf samples", **where)
    duration = data.shape[0] / sr
    if max_seconds is not None and duration > max_seconds:
        raise AudioTooLongError(f"audio is {duration:.2f} s long, more than max_seconds={max_seconds}", **where)
    if data.shape[1] > 1:
        log.warning("downmixing %d channels to mono: file=%s sample=%s field=%s",
                    data.shape[1], path, sample_id, field)
    wav = data.mean(axis=1, dtype=np.float32)   # (T,)
    if np.abs(wav).max() < SILENCE_THRESHOLD:
        raise AudioSilentError(f"audio is silent (all |x| < {SILENCE_THRESHOLD})", **where)
    if sr != target_sr:
        log.warning("resampling %d Hz -> %d Hz: file=%s sample=%s field=%s", sr, target_sr, path, sample_id, field)
        wav = torchaudio.functional.resample(torch.from_numpy(wav), sr, target_sr).numpy()
    return np.ascontiguousarray(wav, dtype=np.float32)
