"""Load one audio file as float32 mono at the codec's rate, or fail naming the file, sample and field.

Why strict: a pipeline that quietly encodes a truncated, silent or NaN-filled clip produces codes
that look fine and train on garbage.  Every bad input raises a :class:`AudioError` (a
`SampleError`), whose message carries the file, the sample id and the field.  Recoverable
differences (another sample rate, stereo) are fixed but logged at WARNING on
``logging.getLogger("higgs_common.audio")`` so they are never invisible.

Two checks depend on the caller's configuration:

* too short for the codec (`min_samples`, samples at `target_sr`): the caller passes the loaded
  codec's minimum (`higgs_common.codec_limits`, `CodeCache.min_samples`); shorter clips make the
  upstream codec crash with a bare "Kernel size can't be greater than actual input size".
* no speech content (`speech_floor_dbfs`): the clip's level after removing its DC offset, in dBFS
  RMS as AES17 defines it (RMS relative to the RMS of a full-scale sine, so a full-scale sine reads
  0 dBFS and a sine of peak A reads 20*log10(A)), is below the floor.  Speech is recorded some
  40 dB above that (the shipped clips read -13 to -19 dBFS); hiss, hum or an unconnected input
  at -60 dBFS or less is not a training target.  `allow_no_speech=True` turns the error into a
  WARNING.  Digital silence (every |x| < SILENCE_THRESHOLD) is always an error.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import soundfile as sf
import torch
import torchaudio

from higgs_common.input_limits import DEFAULT_MAX_AUDIO_SECONDS, DEFAULT_SPEECH_FLOOR_DBFS  # noqa: F401  (re-exported)
from higgs_common.stages import SampleError

log = logging.getLogger("higgs_common.audio")

SILENCE_THRESHOLD = 1e-4   # every |x| below this: treated as silent
# AES17: 0 dBFS is the RMS of a full-scale sine, 1/sqrt(2); so dBFS = 20*log10(sqrt(2) * RMS).
_FULL_SCALE_SINE_RMS = 1.0 / np.sqrt(2.0)


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


class AudioTooShortError(AudioError):
    """The clip is shorter than the audio codec's minimum input (its receptive field)."""


class AudioNoSpeechError(AudioError):
    """The clip's DC-free level is below the speech floor: hiss, hum or silence, no speech."""


def rms_dbfs(wav: np.ndarray) -> float:
    """Level of `wav` (float, full scale +-1, shape (T,)) after removing its mean, in dBFS RMS (AES17).

    A full-scale sine reads 0.0, a sine of peak A reads 20*log10(A); a constant reads -inf.
    Computed in float64 so that long clips do not lose precision in the sum of squares.
    """
    x = np.asarray(wav, dtype=np.float64)
    x = x - x.mean()
    rms = float(np.sqrt(np.mean(x * x)))
    if rms == 0.0:
        return float("-inf")
    return float(20.0 * np.log10(rms / _FULL_SCALE_SINE_RMS))


def audio_check_kwargs(options: Mapping[str, Any], *, min_samples: int | None) -> dict[str, Any]:
    """`load_audio` keyword arguments from a pipeline's options mapping (`StageContext.options`).

    Keys read, with their defaults: ``max_audio_seconds`` (DEFAULT_MAX_AUDIO_SECONDS),
    ``speech_floor_dbfs`` (DEFAULT_SPEECH_FLOOR_DBFS), ``allow_no_speech`` (False).  `min_samples`
    is the codec's minimum (`CodeCache.min_samples`), passed by the caller that owns the codec.
    """
    return dict(max_seconds=options.get("max_audio_seconds", DEFAULT_MAX_AUDIO_SECONDS),
                min_samples=min_samples,
                speech_floor_dbfs=options.get("speech_floor_dbfs", DEFAULT_SPEECH_FLOOR_DBFS),
                allow_no_speech=bool(options.get("allow_no_speech", False)))


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
               max_seconds: float | None = None, min_samples: int | None = None,
               speech_floor_dbfs: float | None = DEFAULT_SPEECH_FLOOR_DBFS,
               allow_no_speech: bool = False) -> np.ndarray:
    """Return the clip as float32 mono, shape (T,), at `target_sr`.

    Raises an :class:`AudioError` subclass for a missing, unreadable, truncated, empty, NaN/Inf,
    silent or too long clip, for one shorter than `min_samples` (samples at `target_sr`, None: no
    minimum) and for one whose level (`rms_dbfs`) is below `speech_floor_dbfs` (None: no floor;
    with `allow_no_speech` that is a WARNING instead).  `max_seconds` is checked on the decoded
    duration.
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
    level = rms_dbfs(wav)
    if sr != target_sr:
        log.warning("resampling %d Hz -> %d Hz: file=%s sample=%s field=%s", sr, target_sr, path, sample_id, field)
        wav = torchaudio.functional.resample(torch.from_numpy(wav), sr, target_sr).numpy()
    if min_samples is not None and wav.shape[0] < min_samples:
        raise AudioTooShortError(
            f"audio is {wav.shape[0]} samples ({wav.shape[0] / target_sr:.4f} s) at {target_sr} Hz, shorter than "
            f"the {min_samples} samples ({min_samples / target_sr:.4f} s) the audio codec needs for one frame",
            **where)
    if speech_floor_dbfs is not None and level < speech_floor_dbfs:
        msg = (f"audio has no speech content: its level after removing DC is {level:.1f} dBFS RMS (AES17), "
               f"below the speech floor of {speech_floor_dbfs:.1f} dBFS")
        if not allow_no_speech:
            raise AudioNoSpeechError(msg + " (--speech-floor-dbfs lowers the floor, --allow-no-speech only warns)",
                                     **where)
        log.warning("%s: file=%s sample=%s field=%s", msg, path, sample_id, field)
    return np.ascontiguousarray(wav, dtype=np.float32)
