"""Offline stand-ins for the three downloads a public Higgs Audio training script makes, and a guard
for scripts that log errors and carry on.  Each replaces one call and nothing the loss sees.

* `soundfile_load` for ``torchaudio.load`` (torchaudio >= 2.9 needs torchcodec; without it the
  public datasets log an error and train on ``zeros(1)``);
* `whisper_processor` for ``WhisperProcessor.from_pretrained("openai/whisper-large-v3")``: upstream
  `HiggsAudioSampleCollator` only reads its ``feature_extractor``;
* `CachedCodec` for ``load_higgs_audio_tokenizer(...)`` (downloads HuBERT): ``encode(path)`` returns
  the harness's cached codes (`higgs_common.code_cache`), so both sides see identical codes;
* `logged_errors_raise`: a dataset that logs a per-sample error and returns the next sample (or
  silence, or drops an audio) becomes a `SampleError` naming the file, sample and message.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Iterator

import soundfile as sf
import torch

from higgs_common.stages import SampleError


def soundfile_load(path: str | Path) -> tuple[torch.Tensor, int]:
    """``torchaudio.load`` through soundfile: (channels, samples) float32 in [-1, 1], sample rate in Hz."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)     # (samples, channels)
    return torch.from_numpy(data.T.copy()), int(sr)


def torchaudio_offline(torchaudio: ModuleType) -> SimpleNamespace:
    """A stand-in for a script's ``torchaudio`` global: `soundfile_load` plus the real functional/transforms."""
    return SimpleNamespace(load=soundfile_load, functional=torchaudio.functional, transforms=torchaudio.transforms)


def whisper_processor() -> SimpleNamespace:
    """What the collator reads of ``WhisperProcessor("openai/whisper-large-v3")``: its feature extractor
    (128 mel bins, large-v3's)."""
    from transformers import WhisperFeatureExtractor
    return SimpleNamespace(feature_extractor=WhisperFeatureExtractor(feature_size=128))


class CachedCodec:
    """Stands in for a loaded audio tokenizer: ``encode(path)`` -> cached codes (num_codebooks, T) int64."""

    def __init__(self, code_cache: Any, num_codebooks: int) -> None:
        self.code_cache = code_cache
        self.codebook_size = num_codebooks      # what the public scripts read when they cannot detect codebooks

    def encode(self, path: str) -> torch.Tensor:
        return self.code_cache.codes(path, sample_id=Path(path).stem, field="audio_file")


class _Recorder(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level=level)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname}: {record.getMessage()}")


@contextmanager
def logged_errors_raise(logger: logging.Logger, *, path: Path, sample_id: str, field: str,
                        level: int = logging.ERROR) -> Iterator[None]:
    """Raise SampleError after the block if `logger` recorded anything at `level` or above in it."""
    rec = _Recorder(level)
    logger.addHandler(rec)
    try:
        yield
    finally:
        logger.removeHandler(rec)
    if rec.messages:
        raise SampleError("the pipeline's dataset logged and carried on: " + " | ".join(rec.messages),
                          sample_id=sample_id, field=field, path=path)


@contextmanager
def recording(owner: Any, name: str) -> Iterator[list]:
    """Record the return values of ``owner.<name>`` (a module global or a method) while the block runs."""
    original, calls = getattr(owner, name), []
    own = name in vars(owner)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        calls.append(out)
        return out
    setattr(owner, name, recorded)
    try:
        yield calls
    finally:
        if own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)
