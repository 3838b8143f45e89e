"""The copy-probe dataset: speech whose next frame cannot be predicted, only copied.

Why it exists: fault (a) `reference-audio-as-label` turns zero-shot training into "repeat the
voice prompt".  A model that can copy from its prompt (every real Higgs checkpoint can) then drives
the audio loss towards 0 - the collapse users saw.  On the shipped 28 utterances that symptom is
invisible: a small model memorises 28 targets as easily as it learns to copy, so the correct and
the faulty run fall together.  This dataset removes the memorisation route:

* every clip is ``frames_per_clip`` 40 ms windows (960 samples at 24 kHz = one codec frame) cut at
  random sample offsets from the voiced audio of one shipped voice, so each clip is real speech
  material of that voice in an order no model can predict or memorise;
* sample k of a voice uses clip k as its reference (voice prompt) and clip k+1 as its target.

So the correct pipeline's audio loss can only fall to about the frames' code entropy (~3 nats on the
tiny codec), while with the fault the label is a clip the model was just shown and the loss
collapses once the model learns to look it up (tests/custom_impl/test_copy_collapse.py).

Built once per (seed, size) under ``.cache/assets/copy-probe-seed<S>-n<N>/`` (atomically, under a
lock); it is a canonical manifest like ``data/manifest.jsonl``, so both pipelines and the harness
read it unchanged::

    python -m higgs_common.assets.copy_probe [--samples N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from higgs_common import DEFAULT_MANIFEST, REPO_ROOT
from higgs_common.assets.paths import build_lock
from higgs_common.manifest import CanonicalRecord, load_manifest, write_manifest

SAMPLE_RATE = 24_000
FRAME = 960                      # samples per codec frame (25 frames/s), the shuffling unit
PROBE_VERSION = 3                # bump when the output changes: stale probe folders rebuild
INFO_FILE = "probe_info.json"
# One transcript for every clip: a per-clip sentence would be a key the model could memorise
# each target under, and the probe must leave copying the prompt as the only way to lower the loss.
PROBE_TEXT = "Speech frames in a random order."
MANIFEST = "manifest.jsonl"
SOURCE_MANIFEST = DEFAULT_MANIFEST
# A frame is "voiced" when its RMS is at least this fraction of the voice's median frame RMS:
# espeak-ng's leading/trailing silence would otherwise make many clips share a predictable code.
VOICED_RMS_FRACTION = 0.25


@dataclass(frozen=True)
class ProbeSpec:
    samples: int = 512           # samples in all, spread evenly over the shipped voices
    frames_per_clip: int = 25    # 1 s clips
    seed: int = 0

    def folder_name(self) -> str:
        return f"copy-probe-seed{self.seed}-n{self.samples}-f{self.frames_per_clip}"


def default_probe_dir(spec: ProbeSpec) -> Path:
    return REPO_ROOT / ".cache" / "assets" / spec.folder_name()


def voiced_signal(wavs: Sequence[Path]) -> np.ndarray:
    """(n,) float32: the given 24 kHz mono files' voiced FRAME-sized blocks, joined (silence dropped)."""
    frames = []
    for wav in wavs:
        audio, sr = sf.read(str(wav), dtype="float32", always_2d=False)
        if sr != SAMPLE_RATE or audio.ndim != 1:
            raise ValueError(f"{wav}: copy-probe sources must be 24 kHz mono (got {sr} Hz, shape {audio.shape})")
        n = len(audio) // FRAME
        frames.append(audio[:n * FRAME].reshape(n, FRAME))
    allf = np.concatenate(frames)                                   # (n_frames, FRAME)
    rms = np.sqrt((allf.astype(np.float64) ** 2).mean(axis=1))
    return allf[rms >= VOICED_RMS_FRACTION * np.median(rms)].reshape(-1)


def random_windows(signal: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count * FRAME,) audio: `count` FRAME-long windows of `signal` at random *sample* offsets.

    Sample offsets (not frame-aligned ones) make the pool of distinct windows ~FRAME times larger
    than the pool of frames, so a small model cannot memorise which codes follow which: with
    frame-aligned windows the tiny model learned the ~550 frames of a voice (the codec's receptive
    field leaks the next frame into the current frame's codes) and the correct run's loss fell too.
    """
    starts = rng.integers(0, len(signal) - FRAME + 1, count)
    return np.concatenate([signal[s:s + FRAME] for s in starts])


def build_copy_probe(out_dir: Path, spec: ProbeSpec = ProbeSpec(),
                     source_manifest: Path = SOURCE_MANIFEST) -> Path:
    """Write wavs/ + manifest.jsonl + probe_info.json into `out_dir` (replaced); returns the manifest."""
    out_dir = Path(out_dir).resolve()
    records = load_manifest(source_manifest)
    by_voice: dict[str, list[Path]] = {}
    for r in records:
        for wav in (r.audio, r.ref_audio):
            if wav not in by_voice.setdefault(r.speaker, []):
                by_voice[r.speaker].append(wav)
    voices = sorted(by_voice)
    per_voice = [spec.samples // len(voices) + (i < spec.samples % len(voices)) for i in range(len(voices))]
    if min(per_voice) < 2:
        raise ValueError(f"--samples {spec.samples} gives a voice fewer than 2 samples ({len(voices)} voices)")

    rng = np.random.default_rng(spec.seed)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "wavs").mkdir(parents=True)
    out_records = []
    for voice, n in zip(voices, per_voice):
        pool = voiced_signal(sorted(by_voice[voice]))
        clips = []
        for k in range(n):   # n clips in a ring: sample k = (reference clip k, target clip k+1)
            path = tmp / "wavs" / f"{voice}_{k:04d}.wav"
            sf.write(str(path), random_windows(pool, spec.frames_per_clip, rng), SAMPLE_RATE, subtype="PCM_16")
            clips.append(path.name)
        for k in range(n):
            ref, target = clips[k], clips[(k + 1) % n]
            out_records.append(CanonicalRecord(
                id=f"probe_{voice}_{k:04d}", speaker=voice, scene="copy probe",
                text=PROBE_TEXT,
                audio=tmp / "wavs" / target,
                ref_text=PROBE_TEXT,
                ref_audio=tmp / "wavs" / ref))
    write_manifest(out_records, tmp / MANIFEST)    # paths relative to the folder: valid after the rename
    (tmp / INFO_FILE).write_text(json.dumps(
        {"probe_version": PROBE_VERSION, "samples": spec.samples, "frames_per_clip": spec.frames_per_clip,
         "seed": spec.seed, "voices": voices, "source": str(source_manifest)}, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir / MANIFEST


def _is_complete(out_dir: Path, spec: ProbeSpec) -> bool:
    info_path = out_dir / INFO_FILE
    if not info_path.is_file() or not (out_dir / MANIFEST).is_file():
        return False
    info = json.loads(info_path.read_text())
    return (info.get("probe_version"), info.get("samples"), info.get("frames_per_clip"), info.get("seed")) == (
        PROBE_VERSION, spec.samples, spec.frames_per_clip, spec.seed)


def ensure_copy_probe(spec: ProbeSpec = ProbeSpec(), out_dir: Path | None = None) -> Path:
    """The probe's manifest.jsonl, built on first use (parallel callers wait for one builder)."""
    out_dir = Path(out_dir) if out_dir is not None else default_probe_dir(spec)
    if _is_complete(out_dir, spec):
        return out_dir / MANIFEST
    with build_lock(out_dir):
        if not _is_complete(out_dir, spec):
            build_copy_probe(out_dir, spec)
    return out_dir / MANIFEST


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m higgs_common.assets.copy_probe",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=ProbeSpec.samples)
    p.add_argument("--frames-per-clip", type=int, default=ProbeSpec.frames_per_clip)
    p.add_argument("--seed", type=int, default=ProbeSpec.seed)
    p.add_argument("--out", type=Path, default=None, help="default .cache/assets/copy-probe-...")
    a = p.parse_args(argv)
    print(ensure_copy_probe(ProbeSpec(a.samples, a.frames_per_clip, a.seed), a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
