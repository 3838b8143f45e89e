"""Shared bad-input fixtures for the `test_reliability_*` tests of both pipelines and the harness.

Everything writes into a test's tmp folder: copies of two shipped wavs per record, canonical
records pointing at the copies, and the functions that break one clip in a named way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from higgs_common.manifest import CanonicalRecord

# name -> (how to break a wav, audio_io error class name expected)
WAV_BREAKS = ("missing", "garbage", "truncated", "empty", "silent", "nan")
WAV_ERRORS = {"missing": "SampleError", "garbage": "AudioDecodeError", "truncated": "AudioDecodeError",
              "empty": "AudioError", "silent": "AudioSilentError", "nan": "AudioNonFiniteError"}


def copy_records(records: list[CanonicalRecord], tmp: Path, n: int = 2) -> list[CanonicalRecord]:
    """The first n records (one speaker), with audio and ref_audio copied into tmp/src."""
    src = tmp / "src"
    src.mkdir(parents=True, exist_ok=True)
    out = []
    for r in records[:n]:
        a, ra = src / f"{r.id}.wav", src / f"ref_{r.id}.wav"
        shutil.copyfile(r.audio, a)
        shutil.copyfile(r.ref_audio, ra)
        out.append(CanonicalRecord(r.id, r.speaker, r.scene, r.text, a, r.ref_text, ra))
    return out


def break_wav(path: Path, how: str) -> None:
    """Make `path` a bad clip of kind `how` (see WAV_BREAKS)."""
    path = Path(path)
    if how == "missing":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(b"this is not audio\n" * 64)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:2000])
    elif how == "empty":
        sf.write(str(path), np.zeros(0, dtype=np.float32), 24000, subtype="FLOAT")
    elif how == "silent":
        sf.write(str(path), np.zeros(24000, dtype=np.float32), 24000, subtype="FLOAT")
    elif how == "nan":
        wav = np.full(24000, 0.1, dtype=np.float32)
        wav[100:200] = np.nan
        sf.write(str(path), wav, 24000, subtype="FLOAT")
    else:
        raise ValueError(how)


def make_16k_stereo(path: Path) -> None:
    """Rewrite a clip as 16 kHz stereo (still valid: must be resampled + downmixed, with a warning)."""
    wav, sr = sf.read(str(path), dtype="float32")
    n = int(len(wav) * 16000 / sr)
    mono = np.interp(np.linspace(0, len(wav) - 1, n), np.arange(len(wav)), wav).astype(np.float32)
    sf.write(str(path), np.stack([mono, mono * 0.5], axis=1), 16000)


def assert_names(exc: BaseException, *, sample_id: str, field: str, file: str | None = None) -> None:
    """The message names the sample, the field and (when given) the file."""
    msg = str(exc)
    assert sample_id in msg, msg
    assert field in msg, msg
    if file is not None:
        assert file in msg, msg


def tokenizer_without_specials():
    """A byte-level BPE tokenizer with none of the Higgs special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["hello world"] * 4, trainer=trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="hello", pad_token="hello")


# ----------------------------------------------------------------------------- issue 15 inputs
# Built from public bug reports of TTS fine-tuning projects: a clip shorter than one codec hop,
# a transcript holding a special token, a target of hiss only.

SHORT_CLIP_SAMPLES = 480          # 0.02 s at 24 kHz: less than one 960-sample codec hop
HISS_PEAK = 2e-4                  # about -84 dBFS RMS (AES17) for Gaussian hiss: no speech


def write_short_clip(path: Path, n: int = SHORT_CLIP_SAMPLES, sr: int = 24000) -> Path:
    """A speech-level (0.3 peak) 220 Hz tone of `n` samples: loud enough, too short for the codec."""
    t = np.arange(n) / sr
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, subtype="FLOAT")
    return path


def write_hiss(path: Path, seconds: float = 2.0, peak: float = HISS_PEAK, seed: int = 0, sr: int = 24000) -> Path:
    """Gaussian hiss scaled to `peak` (above the digital-silence threshold, far below speech)."""
    x = np.random.default_rng(seed).standard_normal(int(seconds * sr))
    sf.write(str(path), (x / np.abs(x).max() * peak).astype(np.float32), sr, subtype="FLOAT")
    return path


def issue15_manifest(records: list[CanonicalRecord], tmp: Path, case: str, *, n: int = 3
                     ) -> tuple[Path, CanonicalRecord]:
    """tmp/data/manifest.jsonl over copies of n shipped records, record 1 broken as `case`.

    Cases: "short" (target clip of SHORT_CLIP_SAMPLES), "short_ref" (reference clip), "hiss"
    (target is 2 s of hiss), "token" (target transcript holds "<|AUDIO_OUT|>"), "token_ref"
    (reference transcript holds "<|eot_id|>"), "empty_norm" (target transcript "()", which the
    reference normalises to "").  Returns (the data folder, the broken record).
    """
    import dataclasses

    from higgs_common.manifest import write_manifest

    recs = copy_records(records, tmp / "data", n=n)
    bad = recs[1]
    if case == "short":
        write_short_clip(bad.audio)
    elif case == "short_ref":
        write_short_clip(bad.ref_audio)
    elif case == "hiss":
        write_hiss(bad.audio)
    elif case == "token":
        bad = dataclasses.replace(bad, text="Please say <|AUDIO_OUT|> twice.")
    elif case == "token_ref":
        bad = dataclasses.replace(bad, ref_text="I am done<|eot_id|> talking.")
    elif case == "empty_norm":
        bad = dataclasses.replace(bad, text="()")
    else:
        raise ValueError(case)
    recs[1] = bad
    write_manifest(recs, tmp / "data" / "manifest.jsonl")
    return tmp / "data", bad
