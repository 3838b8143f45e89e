"""Hypothesis strategies for canonical records and batches, plus the glue that makes them real.

Why codes are drawn directly: the audio codec is the slow part of every pipeline (seconds per
clip on 2 cores) and its output is not what the properties are about.  So a drawn sample carries
its codes - LongTensor (num_codebooks, T) in [0, codebook_size) - and `materialise` writes tiny,
unique placeholder wav files (the loaders and converters insist that a file exists and decodes)
plus a `FakeCodeCache` that returns the drawn codes for them.  The fake keys codes by the file's
sha256, exactly like `higgs_common.code_cache.CodeCache`, so the byte copies the converters make
(the reference folder copies every wav) still find their codes.

Frames: the codec runs at 25 frames/s, so a duration of d seconds is `frames_for(d)` =
ceil(d * 25) frames, at least 1 (a clip under one frame, < 40 ms, still yields one frame).
Long clips use seeded random codes so a 30 s clip costs one `torch.randint`, and shrinking goes
to short clips first (the frame count shrinks, then the seed).

Public API:
    transcripts(), blank_transcripts(), speakers(), scenes(), durations(), frame_counts(...)
    codes(num_codebooks, codebook_size, frames=...)         -> LongTensor (C, T)
    drawn_samples(...), batches(...)                        -> DrawnSample / list[DrawnSample]
    collator_options()                                      -> CollatorOptions
    FakeCodeCache, materialise(samples, root), materialised_context(ctx, samples, root)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
from hypothesis import strategies as st

from higgs_common.manifest import CanonicalRecord
from higgs_common.stages import SampleError, StageContext

FRAMES_PER_SECOND = 25          # codec hop 960 at 24 kHz
SAMPLE_RATE = 24000
TASK_TYPES = ("zero_shot_voice_cloning", "single_speaker_smart_voice", "multi_speaker_smart_voice",
              "multi_speaker_voice_cloning")

# ----------------------------------------------------------------------------- transcripts

CJK_PUNCT = "，。：；？！（）【】《》“”‘’、…·「」『』"
_WORDS = ("the", "quick", "fox", "lighthouse", "train", "umbrella", "Please", "I", "noon", "again",
          "paragraph", "minutes", "e", "SE", "one")


@st.composite
def _temperature(draw: st.DrawFn) -> str:
    value = draw(st.integers(-40, 120))
    unit = draw(st.sampled_from(["°C", "°F"]))
    return f"{value}{unit}"


def transcript_pieces() -> st.SearchStrategy[str]:
    """One token of a transcript: words, CJK punctuation, (parentheses), 25°C, [laugh]/[cough], noise."""
    return st.one_of(
        st.sampled_from(_WORDS),
        st.sampled_from(list(CJK_PUNCT) + ["——"]),
        st.sampled_from(["(", ")", ",", ".", "!", "?", ";", "'", '"', "<", ">", "/", "-", "_"]),
        st.builds(lambda w: f"({w})", st.sampled_from(_WORDS)),
        _temperature(),
        st.sampled_from(["[laugh]", "[cough]", "[SPEAKER0]", "[SPEAKER1]"]),
        st.text(alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "Zs")), min_size=1, max_size=6),
    )


@st.composite
def transcripts(draw: st.DrawFn, *, max_pieces: int = 8) -> str:
    """A transcript with something to say (a letter or digit), mixing ASCII, CJK punctuation,
    parentheses, temperatures and tags.  Punctuation-only text is bad input since issue 15
    (`higgs_common.transcripts`), so a word is prepended to such a draw."""
    from higgs_common.transcripts import has_speakable_content

    pieces = draw(st.lists(transcript_pieces(), min_size=1, max_size=max_pieces))
    seps = draw(st.lists(st.sampled_from([" ", "", "  ", "\n", "\t"]), min_size=len(pieces), max_size=len(pieces)))
    text = "".join(p + s for p, s in zip(pieces, seps))
    if not has_speakable_content(text):
        text = "word" + text
    return text


def blank_transcripts() -> st.SearchStrategy[str]:
    """Empty or whitespace-only text (ASCII and ideographic spaces): the error path."""
    return st.text(alphabet=" \t\n\r\u3000", max_size=4)


def speakers() -> st.SearchStrategy[str]:
    return st.sampled_from(["us_male", "us_female", "gb_female", "gb_male", "speaker_5"])


def scenes() -> st.SearchStrategy[str]:
    return st.one_of(st.just("a quiet room"), st.sampled_from(["a small studio", "a_busy_street", "the car"]))


# ----------------------------------------------------------------------------- durations and codes

def frames_for(seconds: float) -> int:
    """Codec frames for a clip of `seconds` (at least one, even under 40 ms)."""
    return max(1, math.ceil(seconds * FRAMES_PER_SECOND - 1e-9))


def durations(max_seconds: float = 30.0) -> st.SearchStrategy[float]:
    """Clip durations from under one frame (< 40 ms) up to `max_seconds`; short ones favoured."""
    short = st.floats(0.001, 0.039)
    medium = st.floats(0.04, min(3.0, max_seconds))
    long = st.floats(min(3.0, max_seconds), max_seconds)
    return st.one_of(short, medium, long)


def frame_counts(max_seconds: float = 30.0) -> st.SearchStrategy[int]:
    """Frame counts of `durations(max_seconds)`; shrinks towards 1 frame."""
    return st.one_of(st.integers(1, 3), durations(max_seconds).map(frames_for))


@st.composite
def codes(draw: st.DrawFn, num_codebooks: int, codebook_size: int, *,
          frames: st.SearchStrategy[int] | None = None) -> torch.Tensor:
    """LongTensor (num_codebooks, T) in [0, codebook_size): seeded random, or constant 0 / K-1 edges."""
    t = draw(frames if frames is not None else frame_counts())
    kind = draw(st.sampled_from(["random", "zeros", "max"]))
    if kind == "zeros":
        return torch.zeros((num_codebooks, t), dtype=torch.long)
    if kind == "max":
        return torch.full((num_codebooks, t), codebook_size - 1, dtype=torch.long)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, codebook_size, (num_codebooks, t), generator=g, dtype=torch.long)


# ----------------------------------------------------------------------------- samples

@dataclass(eq=False)
class DrawnSample:
    """A canonical record before it exists on disk: its text and the codes of its two clips."""

    id: str
    speaker: str
    scene: str
    text: str
    ref_text: str
    target_codes: torch.Tensor       # (C, T_target)
    ref_codes: torch.Tensor          # (C, T_ref)

    @property
    def target_frames(self) -> int:
        return int(self.target_codes.shape[1])

    def __repr__(self) -> str:   # short, so falsifying examples stay readable
        return (f"DrawnSample(id={self.id!r}, text={self.text!r}, ref_text={self.ref_text!r}, "
                f"target={tuple(self.target_codes.shape)}, ref={tuple(self.ref_codes.shape)})")


def _distinct(ref: torch.Tensor, target: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """The reference clip must differ from the target (the custom loader rejects identical codes)."""
    if ref.shape == target.shape and torch.equal(ref, target):
        ref = ref.clone()
        ref[0, 0] = (ref[0, 0] + 1) % codebook_size
    return ref


@st.composite
def drawn_samples(draw: st.DrawFn, *, num_codebooks: int = 8, codebook_size: int = 1024, index: int = 0,
                  max_seconds: float = 30.0, text: st.SearchStrategy[str] | None = None) -> DrawnSample:
    """One sample: transcripts, speaker, scene and the codes of its target and reference clips."""
    frames = frame_counts(max_seconds)
    target = draw(codes(num_codebooks, codebook_size, frames=frames))
    ref = draw(codes(num_codebooks, codebook_size, frames=frames))
    return DrawnSample(
        id=f"s{index:03d}",
        speaker=draw(speakers()),
        scene=draw(scenes()),
        text=draw(text if text is not None else transcripts()),
        ref_text=draw(transcripts()),
        target_codes=target,
        ref_codes=_distinct(ref, target, codebook_size),
    )


@st.composite
def batches(draw: st.DrawFn, *, min_size: int = 1, max_size: int = 4, num_codebooks: int = 8,
            codebook_size: int = 1024, max_seconds: float = 30.0) -> list[DrawnSample]:
    """A batch of 1..max_size samples with unique ids (shrinks to one short utterance)."""
    n = draw(st.integers(min_size, max_size))
    return [draw(drawn_samples(num_codebooks=num_codebooks, codebook_size=codebook_size, index=i,
                               max_seconds=max_seconds)) for i in range(n)]


def batch_frames(samples: Sequence[DrawnSample]) -> int:
    """Total target + reference frames: the size measure shrinking minimises."""
    return sum(s.target_frames + int(s.ref_codes.shape[1]) for s in samples)


@dataclass(frozen=True)
class CollatorOptions:
    """Upstream collator knobs the pipelines fix but the projections must handle."""

    num_codebooks: int
    codebook_size: int
    use_delay_pattern: bool
    pad_left: bool
    round_to: int


def collator_options() -> st.SearchStrategy[CollatorOptions]:
    return st.builds(CollatorOptions, num_codebooks=st.integers(1, 8), codebook_size=st.sampled_from([2, 32, 1024]),
                     use_delay_pattern=st.booleans(), pad_left=st.booleans(), round_to=st.sampled_from([1, 8]))


# ----------------------------------------------------------------------------- materialisation

class FakeCodeCache:
    """`CodeCache` stand-in: the drawn codes of each placeholder wav, keyed by the file's sha256."""

    # No codec runs here, so no receptive field to fill: every placeholder wav (8 samples) is long enough.
    min_samples = 1

    def __init__(self) -> None:
        self._by_sha: dict[str, torch.Tensor] = {}
        self.calls: list[tuple[str, str]] = []     # (sample_id, field) of every lookup

    @staticmethod
    def _sha(path: Path) -> str:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def register(self, path: Path, codes: torch.Tensor) -> None:
        self._by_sha[self._sha(path)] = codes.clone()

    def codes(self, path: str | Path, *, sample_id: str, field: str) -> torch.Tensor:
        path = Path(path)
        self.calls.append((sample_id, field))
        if not path.is_file():
            raise SampleError("audio file not found", sample_id=sample_id, field=field, path=path)
        sha = self._sha(path)
        if sha not in self._by_sha:
            raise SampleError("no drawn codes for this file", sample_id=sample_id, field=field, path=path)
        return self._by_sha[sha].clone()


def write_placeholder_wav(path: Path) -> Path:
    """A 8-sample, 24 kHz, non-silent wav with unique bytes (so sha256 keys never collide)."""
    data = np.frombuffer(uuid.uuid4().bytes, dtype=np.int16).copy()   # 8 random int16 samples
    data[0] = 20000                                                      # never "silent"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, SAMPLE_RATE, subtype="PCM_16")
    return path


def materialise(samples: Sequence[DrawnSample], root: Path) -> tuple[list[CanonicalRecord], FakeCodeCache]:
    """Placeholder wavs under `root` + canonical records pointing at them + the cache serving their codes."""
    root = Path(root)
    cache = FakeCodeCache()
    records = []
    for s in samples:
        target = write_placeholder_wav(root / "wavs" / f"{s.id}.wav")
        ref = write_placeholder_wav(root / "wavs" / f"{s.id}_ref.wav")
        cache.register(target, s.target_codes)
        cache.register(ref, s.ref_codes)
        records.append(CanonicalRecord(id=s.id, speaker=s.speaker, scene=s.scene, text=s.text,
                                       audio=target.resolve(), ref_text=s.ref_text, ref_audio=ref.resolve()))
    return records, cache


def context_with(ctx: StageContext, cache: FakeCodeCache | None = None, *, faults: Sequence[str] | None = None,
                 options: dict | None = None, model_config=None) -> StageContext:
    """A copy of `ctx` with another code cache, faults, options or model config."""
    changes: dict = {}
    if cache is not None:
        changes["code_cache"] = cache
    if faults is not None:
        changes["faults"] = frozenset(faults)
    if options is not None:
        changes["options"] = {**ctx.options, **options}
    if model_config is not None:
        changes["model_config"] = model_config
    return dataclasses.replace(ctx, **changes)


@contextlib.contextmanager
def materialised_context(ctx: StageContext, samples: Sequence[DrawnSample], *, faults: Sequence[str] | None = None,
                         options: dict | None = None) -> Iterator[tuple[list[CanonicalRecord], StageContext, Path]]:
    """(records, ctx serving the drawn codes, a scratch dir) for one example; the dir is removed after."""
    root = Path(tempfile.mkdtemp(prefix="higgs-prop-"))
    try:
        records, cache = materialise(samples, root / "data")
        yield records, context_with(ctx, cache, faults=faults, options=options), root
    finally:
        shutil.rmtree(root, ignore_errors=True)
