"""Encode each audio file once: a content-addressed cache of audio-codec codes.

Why: both pipelines need the codes of the same wavs, and the codec is the slow part on CPU.
Going through one cache also guarantees that both sides see *identical* codes for a file.

Cache key (what makes an entry valid):

    key = (sha256 of the audio file's bytes, codec fingerprint)

* the file's bytes, not its path or mtime: a copied or touched file hits, an edited one misses;
* the codec fingerprint (`higgs_common.assets.codec.codec_fingerprint`: sha256 of the codec's
  config.json + model.pth): another codec, or the same folder rebuilt, never reuses old codes.

Layout: ``<root>/<fingerprint[:16]>/<sha[:2]>/<sha>.npy`` holding the codes as int16 (int32 when
a codebook has more than 32767 entries), shape (num_codebooks, T).  Files are written to a
temporary name and renamed, so a crash never leaves a half-written entry.  Not part of the key:
the audio decoding in `higgs_common.audio_io` (resampling, downmix); if that code changes, delete
the cache folder.  An in-memory memo sits in front of the disk; `stats` counts hits and misses.

Encoding never fails anonymously: a clip shorter than the codec's minimum input
(`min_samples`, derived from the loaded codec by `higgs_common.codec_limits`) is an
`AudioTooShortError` before the codec runs, and any exception the codec itself raises is re-raised
as an `AudioEncodeError` naming the file, the sample and the field (the original chained as its
cause).  The speech-floor check is not applied here: it depends on the caller's options
(`--speech-floor-dbfs`, `--allow-no-speech`), so the datasets apply it with `load_audio` on every
load, cache hit or not.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from higgs_common.atomic import atomic_path
from higgs_common.audio_io import AudioError, load_audio
from higgs_common.codec_limits import min_codec_samples
from higgs_common.stages import SampleError

log = logging.getLogger("higgs_common.code_cache")


class AudioEncodeError(AudioError):
    """The audio codec raised while encoding a clip (the codec's exception is the `__cause__`)."""


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0      # encoded with the codec

    @property
    def hits(self) -> int:
        return self.memory_hits + self.disk_hits


class CodeCache:
    """`codes(path, sample_id=..., field=...)` -> LongTensor (num_codebooks, T), encoded at most once."""

    def __init__(self, root: Path, audio_tokenizer: Any, fingerprint: str) -> None:
        if len(fingerprint) < 16:
            raise ValueError(f"codec fingerprint {fingerprint!r} is too short to key a cache")
        self.root = Path(root)
        self.audio_tokenizer = audio_tokenizer
        self.fingerprint = fingerprint
        self.stats = CacheStats()
        self._memo: dict[str, torch.Tensor] = {}
        self._min_samples: int | None = None

    @property
    def sample_rate(self) -> int:
        return int(self.audio_tokenizer.sampling_rate)

    @property
    def min_samples(self) -> int:
        """Shortest clip (samples at `sample_rate`) the codec encodes into >= 1 frame (computed once)."""
        if self._min_samples is None:
            self._min_samples = min_codec_samples(self.audio_tokenizer)
        return self._min_samples

    @staticmethod
    def file_sha256(path: Path) -> str:
        h = hashlib.sha256()
        with Path(path).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def entry_path(self, sha: str) -> Path:
        return self.root / self.fingerprint[:16] / sha[:2] / f"{sha}.npy"

    def codes(self, path: str | Path, *, sample_id: str, field: str) -> torch.LongTensor:
        """Codes of the audio at `path`; errors name the file, `sample_id` and `field`."""
        path = Path(path)
        if not path.is_file():
            # load_audio would say the same, but hashing comes first and must not raise a bare OSError
            load_audio(path, sample_id=sample_id, field=field, target_sr=self.sample_rate)
        sha = self.file_sha256(path)
        if sha in self._memo:
            self.stats.memory_hits += 1
            return self._memo[sha].clone()   # clone: callers (collators) mutate tensors in place
        entry = self.entry_path(sha)
        codes = self._read_entry(entry)
        if codes is not None:
            self.stats.disk_hits += 1
        else:
            self.stats.misses += 1
            if self.stats.misses == 1:   # first-use notice: encoding takes ~1 s per clip on a CPU
                log.warning("encoding audio into the code cache %s (once per clip and codec; later runs read "
                            "it from there)", self.root)
            codes = self._encode(path, sample_id=sample_id, field=field)
            self._write_entry(entry, codes)
        self._memo[sha] = codes
        return codes.clone()

    def _encode(self, path: Path, *, sample_id: str, field: str) -> torch.LongTensor:
        wav = load_audio(path, sample_id=sample_id, field=field, target_sr=self.sample_rate,
                         min_samples=self.min_samples, speech_floor_dbfs=None)  # (T,) float32
        try:
            with torch.no_grad():
                codes = self.audio_tokenizer.encode(wav, self.sample_rate)   # (num_codebooks, frames)
        except Exception as exc:   # any codec failure is this clip's: name it, keep the cause
            raise AudioEncodeError(f"the audio codec failed on this clip ({wav.shape[0]} samples at "
                                   f"{self.sample_rate} Hz): {type(exc).__name__}: {exc}",
                                   sample_id=sample_id, field=field, path=path) from exc
        codes = torch.as_tensor(codes).detach().cpu().long()
        if codes.dim() != 2 or codes.shape[1] == 0:
            raise SampleError(f"codec returned codes of shape {tuple(codes.shape)}, expected (num_codebooks, T>0)",
                              sample_id=sample_id, field=field, path=path)
        return codes

    def _read_entry(self, entry: Path) -> torch.LongTensor | None:
        if not entry.is_file():
            return None
        try:
            arr = np.load(entry, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            log.warning("discarding unreadable code cache entry %s: %s", entry, exc)
            return None
        if arr.ndim != 2 or arr.dtype.kind != "i":
            log.warning("discarding code cache entry %s with shape %s dtype %s", entry, arr.shape, arr.dtype)
            return None
        return torch.from_numpy(arr.astype(np.int64))

    def _write_entry(self, entry: Path, codes: torch.LongTensor) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        arr = codes.numpy()
        dtype = np.int16 if arr.max(initial=0) <= np.iinfo(np.int16).max and arr.min(initial=0) >= 0 else np.int32
        with atomic_path(entry) as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr.astype(dtype), allow_pickle=False)
