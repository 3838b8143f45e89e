#!/usr/bin/env python3
"""Synthesise the shipped sample dataset: real (synthetic) English speech from espeak-ng.

Why espeak-ng: the harness needs speech-like audio with several distinct voices that is small,
licence-free and regenerable offline on any Debian machine; a formant synthesiser gives exactly
that without downloading a corpus.  The dataset is deterministic: a fixed sentence list, fixed
voices, fixed synthesis flags, and `sox -R -D` (repeatable, no dither) for the resampling.

Output (default `data/`):
    wavs/<id>.wav      24 kHz mono 16-bit PCM, 1-6 s each
    manifest.jsonl     canonical manifest (`higgs_common.manifest`), one record per utterance,
                       whose reference is the NEXT utterance of the same voice (cyclically)
    README.md          provenance and the command to regenerate

Usage:
    python scripts/make_sample_data.py [--out data/]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from higgs_common.manifest import CanonicalRecord, write_manifest

SAMPLE_RATE = 24_000
MIN_SECONDS = 1.0
MAX_SECONDS = 6.0
MAX_TOTAL_BYTES = 8 * 1024 * 1024
ESPEAK = "espeak-ng"
SOX = "sox"


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: the espeak-ng voice spec plus pitch/speed to keep voices apart."""

    speaker: str        # speaker id used in the manifest
    espeak_voice: str   # `espeak-ng -v` argument (language[+variant])
    pitch: int          # `espeak-ng -p`, 0-99
    speed: int          # `espeak-ng -s`, words per minute
    scene: str          # recording scene written into the manifest


VOICES: tuple[Voice, ...] = (
    Voice("us_male", "en-us", 45, 160, "a quiet room"),
    Voice("us_female", "en-us+f3", 60, 165, "a small studio"),
    Voice("scot_male", "en-gb-scotland+m3", 35, 150, "a quiet room"),
    Voice("gb_female", "en-gb-x-rp+f4", 70, 170, "a small studio"),
)

# Transcripts as they appear in the manifest.  A few carry what the reference's transcript
# normaliser rewrites (parentheses, °C/°F, [laugh]/[cough], missing final period, doubled
# whitespace) so the harness sees that normalisation in action.  Voice i speaks lines
# [i*PER_VOICE, (i+1)*PER_VOICE).
SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Please leave the parcel (the small one) by the front door.",
    "It was 25°C in the shade by noon.",
    "That was the funniest thing I have heard all week [laugh]",
    "Could you read the second paragraph again, slowly?",
    "Trains to the city leave every twenty minutes.",
    "She planted tomatoes,  beans and a row of sunflowers.",
    "Good morning, and welcome to the evening news.",
    "My sister bakes bread every Sunday before sunrise.",
    "The museum closes early on public holidays (check the website).",
    "Last winter it dropped to 14°F overnight.",
    "Honestly, I did not expect that ending [laugh].",
    "We should water the garden before the heat arrives!",
    "The library has a new collection of old maps.",
    "Turn left at the bakery and walk two blocks north.",
    "A gentle breeze carried the smell of rain.",
    "He fixed the bicycle with nothing but a spoon [cough].",
    "The recipe (from my grandmother) needs three eggs.",
    "Water boils at 100°C at sea level.",
    "Is the meeting on Tuesday or Thursday?",
    "The orchestra tuned their instruments in silence",
    "Every evening the lighthouse blinks twice.",
    "I left my umbrella on the train again [laugh].",
    "Bright stars filled the sky above the quiet valley.",
    "The kettle whistled while we talked about the weather.",
    "Keep your ticket until the end of the journey.",
    "The oven should be set to 180°C (fan assisted).",
    "Thank you for listening, and see you next time!",
)
PER_VOICE = len(SENTENCES) // len(VOICES)


def spoken_form(transcript: str) -> str:
    """What espeak-ng is asked to say: the transcript minus event tags, units spelled out.

    The transcript keeps `[laugh]` etc. because the pipelines' text processing is under test;
    the synthesiser cannot laugh, so the audio is simply the plain sentence.
    """
    text = transcript
    for tag in ("[laugh]", "[cough]"):
        text = text.replace(tag, "")
    text = text.replace("°C", " degrees Celsius").replace("°F", " degrees Fahrenheit")
    return " ".join(text.split())


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"error: `{name}` not found on PATH (Debian: apt-get install {name})")
    return path


def espeak_version() -> str:
    """e.g. "eSpeak NG text-to-speech: 1.51" (the data-path suffix is machine-specific, so dropped)."""
    out = subprocess.run([_require_tool(ESPEAK), "--version"], check=True, capture_output=True, text=True)
    return out.stdout.split("Data at:")[0].strip()


def sox_version() -> str:
    out = subprocess.run([_require_tool(SOX), "--version"], check=True, capture_output=True, text=True)
    return out.stdout.strip().rsplit(":", 1)[-1].strip()  # "SoX v14.4.2"


def synthesise(voice: Voice, text: str, out_wav: Path, tmp_dir: Path) -> float:
    """espeak-ng (22.05 kHz) -> sox resample to 24 kHz mono s16; returns the duration in seconds."""
    raw = tmp_dir / (out_wav.stem + ".raw.wav")
    subprocess.run(
        [_require_tool(ESPEAK), "-v", voice.espeak_voice, "-p", str(voice.pitch), "-s", str(voice.speed),
         "-w", str(raw), text],
        check=True, capture_output=True,
    )
    # -R: repeatable (fixed seeds/timestamps); -D: no dither, so output bytes are deterministic.
    # `gain -n -1` normalises each clip to -1 dBFS: espeak's louder voices clip otherwise.
    subprocess.run(
        [_require_tool(SOX), "-R", "-D", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
         "-e", "signed-integer", str(out_wav), "gain", "-n", "-1"],
        check=True, capture_output=True,
    )
    info = sf.info(str(out_wav))
    if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.subtype != "PCM_16":
        raise RuntimeError(f"{out_wav}: expected 24 kHz mono PCM_16, got {info.samplerate} Hz "
                           f"{info.channels} ch {info.subtype}")
    duration = info.frames / info.samplerate
    if not MIN_SECONDS <= duration <= MAX_SECONDS:
        raise RuntimeError(f"{out_wav}: duration {duration:.2f} s outside [{MIN_SECONDS}, {MAX_SECONDS}] "
                           f"for text {text!r}; shorten or lengthen the sentence")
    return duration


def build_records(wav_dir: Path) -> list[CanonicalRecord]:
    """Canonical records; each one's reference is the next utterance of the same voice."""
    records: list[CanonicalRecord] = []
    for v_idx, voice in enumerate(VOICES):
        lines = SENTENCES[v_idx * PER_VOICE:(v_idx + 1) * PER_VOICE]
        ids = [f"{voice.speaker}_{k:03d}" for k in range(len(lines))]
        for k, (uid, text) in enumerate(zip(ids, lines)):
            ref = (k + 1) % len(lines)
            records.append(CanonicalRecord(
                id=uid, speaker=voice.speaker, scene=voice.scene, text=text,
                audio=(wav_dir / f"{uid}.wav").resolve(),
                ref_text=lines[ref], ref_audio=(wav_dir / f"{ids[ref]}.wav").resolve(),
            ))
    return records


def write_readme(out_dir: Path, version: str, sox: str, n_utts: int, total_s: float, total_bytes: int) -> None:
    voices = "\n".join(
        f"| `{v.speaker}` | `{v.espeak_voice}` | {v.pitch} | {v.speed} | {v.scene} |" for v in VOICES
    )
    (out_dir / "README.md").write_text(f"""# Sample data

Synthetic English speech used by the tests and the harness: {n_utts} utterances from
{len(VOICES)} voices, {total_s:.1f} s in all, {total_bytes / 1e6:.2f} MB of WAV.

## Provenance

- Synthesised with `{version}` (Debian package `espeak-ng`), resampled with `{sox}` to
  24 kHz mono 16-bit PCM, peak-normalised to -1 dBFS (`sox -R -D ... gain -n -1`,
  i.e. repeatable and without dither).
- Text: the fixed sentence list in `scripts/make_sample_data.py` (written for this project).
  Transcripts keep tags and symbols the reference pipeline normalises (`[laugh]`, `[cough]`,
  parentheses, `25°C`); the audio speaks the plain sentence with units spelled out.
- No recorded human speech; free of third-party rights.

| speaker | espeak-ng voice | pitch | speed (wpm) | scene |
|---|---|---|---|---|
{voices}

## Files

- `wavs/<id>.wav`: one utterance each, 1-6 s.
- `manifest.jsonl`: the canonical manifest (see `higgs_common/manifest.py`). Each record's
  reference clip (`ref_audio`, `ref_text`) is the next utterance of the same voice, cyclically.

## Regenerate

```sh
.venv/bin/python scripts/make_sample_data.py --out data/
```
""", encoding="utf-8")


def make_dataset(out_dir: Path) -> tuple[list[CanonicalRecord], float, int]:
    """Generate everything under `out_dir`; returns (records, total seconds, total wav bytes)."""
    out_dir = Path(out_dir)
    wav_dir = out_dir / "wavs"
    if wav_dir.exists():
        shutil.rmtree(wav_dir)   # stale clips from an older sentence list must not linger
    wav_dir.mkdir(parents=True)
    records = build_records(wav_dir)
    speak_of = {r.id: r.text for r in records}
    voice_of = {v.speaker: v for v in VOICES}
    total_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for rec in records:
            total_s += synthesise(voice_of[rec.speaker], spoken_form(speak_of[rec.id]), rec.audio, Path(tmp))
    total_bytes = sum(p.stat().st_size for p in wav_dir.glob("*.wav"))
    if total_bytes > MAX_TOTAL_BYTES:
        raise RuntimeError(f"{wav_dir}: {total_bytes} bytes of audio exceeds {MAX_TOTAL_BYTES}")
    write_manifest(records, out_dir / "manifest.jsonl")
    write_readme(out_dir, espeak_version(), sox_version(), len(records), total_s, total_bytes)
    return records, total_s, total_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data"),
                        help="output folder (default: data/); wavs/ inside it is replaced")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    records, total_s, total_bytes = make_dataset(args.out)
    print(f"wrote {len(records)} utterances ({len(VOICES)} voices, {total_s:.1f} s audio, "
          f"{total_bytes / 1e6:.2f} MB) to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
