"""The train-higgs-audio dataset: a metadata folder -> `ChatMLDatasetSample`s.

Input: one folder with `metadata.json` (`{"samples": [{id, audio_file, transcript_file, scene,
ref_audio_file, ref_transcript, ...}]}`) and `<id>.wav`/`<id>.txt` pairs; without
`metadata.json` the folder is scanned for `*.wav` (then `*.mp3`) files with a sibling `.txt`.
The task comes from a flag, not from the data (`TASK_TYPES`).

Message layouts (built by `build_messages`; every layout ends with user(target transcript),
assistant(target audio), and no `start_index`, so *every* assistant turn is trained):

- single_speaker_smart_voice (default): system(instruction + scene).
- zero_shot_voice_cloning: system(instruction + scene), user(ref_transcript),
  assistant(reference audio).  The reference clip is an earlier *assistant* turn, i.e. an
  `<|AUDIO_OUT|>` span that is also a label.
- multi_speaker_smart_voice: with >= 2 distinct `[SPEAKERn]` tags in the transcript, the
  multi-speaker system message + scene + "SPEAKERn: feminine|masculine" lines; otherwise the
  single-speaker layout.
- multi_speaker_voice_cloning: system(instruction + scene), then per entry of `ref_speakers`
  user("<speaker_tag> <ref_transcript>"), assistant(ref audio).

Quirks kept (named, documented, pinned in tests/reference_impl/test_dataset.py):

- QUIRK default ref transcript (opt-in only): a zero-shot sample *without the key*
  `ref_transcript` silently gets "This is a voice sample for cloning." as the text of its
  reference turn (an empty string is kept as is).  Project issue 9 forbids a silent default
  sentence, so by default a missing, empty or whitespace-only `ref_transcript` is a SampleError;
  `allow_default_ref_transcript=True` (CLI `--allow-default-ref-transcript`) reproduces the
  reference exactly, with a warning per sample.
- QUIRK ref transcript not normalised: only the target transcript goes through
  `normalize_transcript`.
- QUIRK zero-shot without `ref_audio_file` (opt-in only): the sample silently degrades to a
  plain system message *without the scene* and trains as single-speaker.  By default this is a
  SampleError (field `ref_audio_file`); `allow_missing_ref_audio=True` (CLI
  `--allow-missing-ref-audio`) reproduces the reference, with a warning.
- QUIRK audio label bookkeeping: the reference's `prepare_chatml_sample` variant also returns
  `audio_label_contents` (index-aligned with `audio_contents`: the content for trainable
  assistant audio, else None) and the dataset concatenates their codes into `label_audio_ids`;
  those labels never reach the model (the collator rebuilds labels from `audio_out_ids`).  We
  keep the bookkeeping in `DatasetItem.extra`.
- QUIRK waveforms: `audio_waveforms_concat` holds only the *target* waveform with one start
  and one speaker index, whatever the number of audios (unused: Whisper is off).

Deliberate deviations (the reference hides bad input; this project must not):

- upstream `prepare_chatml_sample` swallows every exception and returns Nones; the reference's
  `__getitem__` swallows any error and silently returns the *next* sample; a failed codec
  encode silently drops that audio (misaligning placeholders and codes).  Here each of these
  raises a `SampleError` naming the file, sample id and field.
- the reference logs missing-ref warnings with `sample['id']` / `sample['audio_id']`, which
  raise KeyError for scanned / metadata samples respectively (and then recurse through the
  next-sample fallback).  We log the warning and keep the intended fallback layout, except
  that zero-shot on a scanned folder (no `ref_audio_file` possible) degrades the same way.
- scanned folders are sorted by file name (the reference uses raw `glob` order).
- an empty or whitespace-only target transcript is a SampleError (the reference trains on it), and
  so is one that normalises to nothing to say (no letter or digit: "()" -> "", "。" -> ".").
- the tokenizer's reserved special-token strings (read from the tokenizer) are a SampleError in
  the target transcript (raw and normalised), `ref_transcript`, `scene` and the multi-speaker
  reference texts: the reference tokenizes them as the special ids, so a `<|AUDIO_OUT|>` there
  made the upstream collator fail later with an IndexError naming nothing.  After tokenisation
  the number of audio placeholders must equal the number of audios.
- every clip goes through `higgs_common.audio_io.load_audio` (missing, corrupt, truncated, empty,
  NaN, silent, longer than `max_audio_seconds` (default 30 s), shorter than the codec's minimum
  input (`code_cache.min_samples`) or below the speech floor (`speech_floor_dbfs`, default -60
  dBFS; `allow_no_speech` only warns) is a SampleError; another rate or stereo is resampled /
  downmixed with a WARNING), even when its codes are cached.
- `validate=True` (the training CLI) builds every sample once in `__init__`, so a bad sample
  stops the run before training starts (the reference fails at the step that draws it).
- the text tokenizer must have the Higgs special tokens (`check_special_tokens` in __init__).
- `skip_bad_samples=True` builds every sample up front and leaves the bad ones out, each logged
  with its reason and recorded in `dataset.skip_log` (the reference silently substitutes the next
  sample instead).
- `ref_audio_in_system_message` (reference flag, default False) is not implemented.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from boson_multimodal.data_types import AudioContent, ChatMLSample, Message, TextContent
from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample, prepare_chatml_sample

from higgs_common.assets.text_tokenizer import check_special_tokens, special_token_ids
from higgs_common.audio_io import DEFAULT_MAX_AUDIO_SECONDS, DEFAULT_SPEECH_FLOOR_DBFS, load_audio
from higgs_common.skipping import SkipLog, build_or_skip
from higgs_common.stages import SampleError
from higgs_common.transcripts import check_transcript, check_user_text
from reference_impl.normalize import normalize_transcript

logger = logging.getLogger(__name__)

TASK_TYPES: tuple[str, ...] = (
    "zero_shot_voice_cloning",
    "single_speaker_smart_voice",
    "multi_speaker_smart_voice",
    "multi_speaker_voice_cloning",
)
DEFAULT_TASK_TYPE = "single_speaker_smart_voice"   # the reference CLI's default
METADATA_FILE = "metadata.json"
SAMPLE_RATE = 24000
DEFAULT_SCENE = "a quiet room"
SYSTEM_INSTRUCTION = "Generate audio following instruction."
DEFAULT_REF_TRANSCRIPT = "This is a voice sample for cloning."
DEFAULT_MULTI_REF_TRANSCRIPT = "This is a voice sample."
MULTISPEAKER_SYSTEM_MESSAGE = (
    "You are an AI assistant designed to convert text into speech.\n"
    "If the user's message includes a [SPEAKER*] tag, do not read out the tag and generate speech for "
    "the following text, using the specified voice.\n"
    "If no speaker tag is present, select a suitable voice on your own."
)
_SPEAKER_TAG = re.compile(r"\[(SPEAKER\d+)\]")


# --------------------------------------------------------------------------- entries

@dataclass
class Entry:
    """One sample description: the metadata dict (paths made absolute) plus where it came from."""

    sample_id: str
    raw: dict[str, Any]
    audio_file: Path
    transcript_file: Path
    source: Path          # metadata.json, or the wav for a scanned folder
    from_metadata: bool


def load_entries(data_dir: Path, *, use_metadata: bool = True) -> list[Entry]:
    """Entries from `metadata.json`, or from a folder scan when it is absent (or not used)."""
    data_dir = Path(data_dir)
    meta_path = data_dir / METADATA_FILE
    if use_metadata and meta_path.exists():
        entries = _entries_from_metadata(data_dir, meta_path)
    else:
        logger.warning("%s not found in %s; scanning the folder for wav/txt pairs", METADATA_FILE, data_dir)
        entries = _entries_from_scan(data_dir)
    if not entries:
        raise SampleError(f"no valid samples found in {data_dir}", sample_id=None, field="samples",
                          path=meta_path if meta_path.exists() else data_dir)
    return entries


def _entries_from_metadata(data_dir: Path, meta_path: Path) -> list[Entry]:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SampleError(f"not valid JSON ({exc.msg})", sample_id=None, field=None, path=meta_path) from exc
    samples = meta.get("samples", []) if isinstance(meta, dict) else None
    if not isinstance(samples, list):
        raise SampleError("'samples' must be a list", sample_id=None, field="samples", path=meta_path)
    entries = []
    for i, s in enumerate(samples):
        if not isinstance(s, dict):
            raise SampleError("sample must be an object", sample_id=f"<samples[{i}]>", field=f"samples[{i}]",
                              path=meta_path)
        sid = str(s.get("id", s.get("audio_id", f"<samples[{i}]>")))
        for key in ("audio_file", "transcript_file"):
            if not isinstance(s.get(key), str):
                raise SampleError(f"missing string field {key!r}", sample_id=sid, field=key, path=meta_path)
        entries.append(Entry(sid, dict(s), data_dir / s["audio_file"], data_dir / s["transcript_file"],
                             meta_path, True))
    return entries


def _entries_from_scan(data_dir: Path) -> list[Entry]:
    entries = []
    for ext in ("*.wav", "*.mp3"):
        for audio in sorted(data_dir.glob(ext)):
            txt = audio.with_suffix(".txt")
            if txt.exists():
                entries.append(Entry(audio.stem, {"audio_id": audio.stem}, audio, txt, audio, False))
    return entries


# --------------------------------------------------------------------------- messages

def scene_description(raw: dict[str, Any]) -> str:
    """'Audio is recorded from {scene}.' with underscores turned into spaces, as the reference does."""
    scene = raw.get("scene", DEFAULT_SCENE)
    return f"Audio is recorded from {scene.replace('_', ' ')}."


def system_text(scene_prompt: Optional[str], head: str = SYSTEM_INSTRUCTION) -> str:
    if scene_prompt is None:
        return head
    return f"{head}\n\n<|scene_desc_start|>\n{scene_prompt}\n<|scene_desc_end|>"


def speaker_tags(transcript: str) -> list[str]:
    return sorted(set(_SPEAKER_TAG.findall(transcript)))


@dataclass
class Layout:
    """Messages plus, for every audio in message order, the metadata field it came from."""

    messages: list[Message]
    audio_fields: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build_messages(entry: Entry, transcript: str, task_type: str, data_dir: Path, *,
                   use_metadata: bool = True, allow_default_ref_transcript: bool = False,
                   allow_missing_ref_audio: bool = False) -> Layout:
    """The reference's prompt for `task_type`, followed by the target user/assistant turns.

    The two `allow_*` flags re-enable the reference's silent zero-shot fallbacks (module doc).
    """
    if task_type not in TASK_TYPES:
        raise SampleError(f"invalid task_type {task_type!r}; expected one of {TASK_TYPES}",
                          sample_id=entry.sample_id, field="task_type", path=entry.source)
    raw = entry.raw
    scene_prompt = scene_description(raw) if use_metadata else None
    layout = Layout(messages=[])
    msgs = layout.messages

    if task_type == "zero_shot_voice_cloning":
        ref_audio = raw.get("ref_audio_file")
        if not ref_audio and not allow_missing_ref_audio:
            raise SampleError("zero-shot sample has no reference clip (pass --allow-missing-ref-audio to "
                              "reproduce the reference's silent single-speaker fallback)",
                              sample_id=entry.sample_id, field="ref_audio_file", path=entry.source)
        if not ref_audio:
            note = "QUIRK zero-shot sample without ref_audio_file: plain system message, no reference turn"
            logger.warning("sample %r (%s): %s", entry.sample_id, entry.source, note)
            layout.notes.append(note)
            msgs.append(Message(role="system", content=SYSTEM_INSTRUCTION))
        else:
            given = raw.get("ref_transcript")
            if not (isinstance(given, str) and given.strip()) and not allow_default_ref_transcript:
                what = "missing" if given is None else f"empty ({given!r})"
                raise SampleError(f"zero-shot reference transcript is {what} (pass --allow-default-ref-transcript "
                                  f"to reproduce the reference's silent default sentence)",
                                  sample_id=entry.sample_id, field="ref_transcript", path=entry.source)
            if "ref_transcript" not in raw:
                note = f"QUIRK missing ref_transcript replaced by {DEFAULT_REF_TRANSCRIPT!r}"
                logger.warning("sample %r (%s) field 'ref_transcript': %s", entry.sample_id, entry.source, note)
                layout.notes.append(note)
            ref_transcript = raw.get("ref_transcript", DEFAULT_REF_TRANSCRIPT)
            msgs.append(Message(role="system", content=system_text(scene_prompt)))
            msgs.append(Message(role="user", content=ref_transcript))
            msgs.append(Message(role="assistant", content=AudioContent(audio_url=str(data_dir / ref_audio))))
            layout.audio_fields.append("ref_audio_file")

    elif task_type == "multi_speaker_voice_cloning":
        refs = raw.get("ref_speakers")
        if not refs or not isinstance(refs, list):
            note = "multi_speaker_voice_cloning sample without a valid ref_speakers list: default system message"
            logger.warning("sample %r (%s): %s", entry.sample_id, entry.source, note)
            layout.notes.append(note)
            msgs.append(Message(role="system", content=MULTISPEAKER_SYSTEM_MESSAGE))
        else:
            msgs.append(Message(role="system", content=system_text(scene_prompt)))
            for i, ref in enumerate(refs):
                fld = f"ref_speakers[{i}].ref_audio_file"
                if not isinstance(ref, dict) or not isinstance(ref.get("ref_audio_file"), str):
                    raise SampleError("missing string field", sample_id=entry.sample_id, field=fld,
                                      path=entry.source)
                tag = ref.get("speaker_tag", f"[SPEAKER{i}]")
                text = ref.get("ref_transcript", DEFAULT_MULTI_REF_TRANSCRIPT)
                msgs.append(Message(role="user", content=f"{tag} {text}"))
                msgs.append(Message(role="assistant",
                                    content=AudioContent(audio_url=str(data_dir / ref["ref_audio_file"]))))
                layout.audio_fields.append(fld)

    elif task_type == "multi_speaker_smart_voice" and len(speaker_tags(transcript)) > 1:
        desc = "\n".join(f"{tag}: {'feminine' if i % 2 == 0 else 'masculine'}"
                         for i, tag in enumerate(speaker_tags(transcript)))
        scene_desc = f"{scene_prompt}\n\n{desc}" if scene_prompt else desc
        msgs.append(Message(role="system", content=system_text(scene_desc, head=MULTISPEAKER_SYSTEM_MESSAGE)))

    else:  # single_speaker_smart_voice, and multi_speaker_smart_voice with < 2 speaker tags
        msgs.append(Message(role="system", content=system_text(scene_prompt)))

    msgs.append(Message(role="user", content=transcript))
    msgs.append(Message(role="assistant", content=AudioContent(audio_url=str(entry.audio_file))))
    layout.audio_fields.append("audio_file")
    return layout


# --------------------------------------------------------------------------- tokens

def _is_label_turn(role: str, turn_id: int, start_index: Optional[int]) -> bool:
    """Upstream's rule for a trainable turn: assistant, at or after `start_index` (None = all)."""
    return role == "assistant" and (start_index is None or turn_id >= start_index)


def prepare_chatml_sample_with_audio_labels(
    chatml: ChatMLSample, tokenizer: Any, *, sample_id: str, path: Path,
) -> tuple[list[int], list[int], list[AudioContent], list[Optional[AudioContent]]]:
    """Upstream `prepare_chatml_sample` plus the reference variant's `audio_label_contents`.

    The reference patched boson_multimodal to also return, index-aligned with `audio_contents`,
    the AudioContent of each trainable assistant audio (None otherwise); we derive the same
    list from the same rule instead of patching.  Upstream returns four Nones on any error
    (after printing); that becomes a SampleError here.
    """
    try:
        result = prepare_chatml_sample(chatml, tokenizer)
    except TypeError as exc:
        # Upstream's error handler json.dumps()es the dataclass, which itself raises TypeError.
        raise SampleError(f"prepare_chatml_sample failed: {exc}", sample_id=sample_id, field="messages",
                          path=path) from exc
    input_tokens, label_tokens, audio_contents, _speaker = result
    if input_tokens is None or label_tokens is None or audio_contents is None:
        raise SampleError("prepare_chatml_sample returned None (it swallows the real error; see stdout)",
                          sample_id=sample_id, field="messages", path=path)
    audio_label_contents: list[Optional[AudioContent]] = []
    for turn_id, msg in enumerate(chatml.messages):
        contents = msg.content if isinstance(msg.content, list) else [msg.content]
        for c in contents:
            if isinstance(c, AudioContent):
                audio_label_contents.append(c if _is_label_turn(msg.role, turn_id, chatml.start_index) else None)
    if len(audio_label_contents) != len(audio_contents):
        raise SampleError(f"{len(audio_contents)} audios but {len(audio_label_contents)} label slots",
                          sample_id=sample_id, field="messages", path=path)
    return input_tokens, label_tokens, audio_contents, audio_label_contents


# --------------------------------------------------------------------------- dataset

@dataclass
class BuiltSample:
    """A dataset sample plus the bookkeeping the harness and tests look at."""

    sample_id: str
    sample: ChatMLDatasetSample
    messages: list[Message]
    audio_fields: list[str]                          # metadata field of each audio, in order
    audio_label_contents: list[Optional[AudioContent]]
    label_audio_ids: Optional[torch.Tensor]          # (num_codebooks, T_labels); never reaches the model
    notes: list[str]

    @property
    def label_audio_indices(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.audio_label_contents) if c is not None)


class ReferenceDataset(torch.utils.data.Dataset):
    """train-higgs-audio's `HiggsAudioDataset`, with codes from the shared code cache.

    `code_cache.codes(path, sample_id=, field=)` returns (num_codebooks, T) codes, the same codec
    the other pipeline uses (the reference calls `audio_tokenizer.encode(path)` per access).
    """

    def __init__(self, data_dir: Path, tokenizer: Any, code_cache: Any, *,
                 task_type: str = DEFAULT_TASK_TYPE, use_metadata: bool = True,
                 sample_rate: int = SAMPLE_RATE, load_waveforms: bool = True,
                 max_audio_seconds: Optional[float] = DEFAULT_MAX_AUDIO_SECONDS,
                 speech_floor_dbfs: Optional[float] = DEFAULT_SPEECH_FLOOR_DBFS, allow_no_speech: bool = False,
                 allow_default_ref_transcript: bool = False, allow_missing_ref_audio: bool = False,
                 skip_bad_samples: bool = False, validate: bool = False) -> None:
        if task_type not in TASK_TYPES:
            raise ValueError(f"invalid task_type {task_type!r}; expected one of {TASK_TYPES}")
        check_special_tokens(tokenizer, getattr(tokenizer, "name_or_path", "") or "<text tokenizer>")
        self.max_audio_seconds = max_audio_seconds
        self.speech_floor_dbfs = speech_floor_dbfs
        self.allow_no_speech = allow_no_speech
        self.allow_default_ref_transcript = allow_default_ref_transcript
        self.allow_missing_ref_audio = allow_missing_ref_audio
        self.skip_log = SkipLog(where=f"reference dataset {data_dir}")
        self.data_dir = Path(data_dir)
        self.tokenizer = tokenizer
        self.code_cache = code_cache
        self.task_type = task_type
        self.use_metadata = use_metadata
        self.sample_rate = sample_rate
        self.load_waveforms = load_waveforms
        self.entries = load_entries(self.data_dir, use_metadata=use_metadata)
        if skip_bad_samples or validate:
            # Build each sample once now (codes come from the cache later): the first bad one raises,
            # or with skipping every bad one is left out; either way before any training step.
            good = build_or_skip(range(len(self.entries)), lambda i: (self.build(i), self.entries[i])[1],
                                 skip=skip_bad_samples, skip_log=self.skip_log)
            if not good:
                raise SampleError(f"all {len(self.entries)} samples are bad (see the skipped-sample warnings)",
                                  sample_id=None, field="samples", path=self.data_dir)
            self.entries = good
            logger.warning("%s", self.skip_log.summary())
        logger.info("loaded %d samples from %s for task %s", len(self.entries), self.data_dir, task_type)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, idx: int) -> ChatMLDatasetSample:
        built = self.build(idx)
        # Extra attribute (upstream's collator ignores it): lets the training guards name samples.
        built.sample.sample_id = built.sample_id
        return built.sample

    def read_transcript(self, entry: Entry) -> str:
        where = dict(sample_id=entry.sample_id, field="transcript_file", path=entry.transcript_file)
        if not entry.transcript_file.is_file():
            raise SampleError(f"transcript not found: {entry.transcript_file}", **where)
        try:
            text = entry.transcript_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SampleError(f"transcript unreadable: {exc}", **where) from exc
        if not text:
            raise SampleError("transcript is empty or whitespace-only", **where)
        normalised = normalize_transcript(text)
        check_transcript(text, tokenizer=self.tokenizer, normalised=normalised, **where)
        return normalised

    def check_metadata_texts(self, entry: Entry) -> None:
        """Reserved special tokens in the metadata texts the prompt builder inserts (and ref text content).

        The reference does not normalise `ref_transcript` (QUIRK), so it is checked as it is; an
        empty one is `build_messages`' business (error, or the opt-in default sentence).
        """
        raw = entry.raw
        where = dict(sample_id=entry.sample_id, path=entry.source)
        if self.use_metadata and isinstance(raw.get("scene"), str):
            check_user_text(raw["scene"], tokenizer=self.tokenizer, field="scene", **where)
        given = raw.get("ref_transcript")
        if self.task_type == "zero_shot_voice_cloning" and isinstance(given, str) and given.strip():
            check_transcript(given, tokenizer=self.tokenizer, field="ref_transcript", **where)
        refs = raw.get("ref_speakers")
        if self.task_type == "multi_speaker_voice_cloning" and isinstance(refs, list):
            for i, ref in enumerate(refs):
                for key in ("ref_transcript", "speaker_tag"):
                    value = ref.get(key) if isinstance(ref, dict) else None
                    if isinstance(value, str):
                        check_user_text(value, tokenizer=self.tokenizer, field=f"ref_speakers[{i}].{key}", **where)

    def build(self, idx: int) -> BuiltSample:
        entry = self.entries[idx]
        transcript = self.read_transcript(entry)
        self.check_metadata_texts(entry)
        layout = build_messages(entry, transcript, self.task_type, self.data_dir, use_metadata=self.use_metadata,
                                allow_default_ref_transcript=self.allow_default_ref_transcript,
                                allow_missing_ref_audio=self.allow_missing_ref_audio)
        chatml = ChatMLSample(messages=layout.messages)
        input_tokens, label_tokens, audio_contents, audio_label_contents = prepare_chatml_sample_with_audio_labels(
            chatml, self.tokenizer, sample_id=entry.sample_id, path=entry.source)
        if len(audio_contents) != len(layout.audio_fields):
            raise SampleError(f"{len(audio_contents)} audios in the prompt, {len(layout.audio_fields)} expected",
                              sample_id=entry.sample_id, field="messages", path=entry.source)
        ids = special_token_ids(self.tokenizer)
        n_placeholders = sum(1 for t in input_tokens if t in (ids["<|AUDIO|>"], ids["<|AUDIO_OUT|>"]))
        if n_placeholders != len(audio_contents):
            raise SampleError(f"the tokenised prompt has {n_placeholders} audio placeholder(s) for "
                              f"{len(audio_contents)} audio(s); the collator would fail (IndexError in "
                              f"get_audio_codes)", sample_id=entry.sample_id, field="messages", path=entry.source)

        codes_by_url: dict[str, torch.Tensor] = {}
        context_codes: list[torch.Tensor] = []
        for content, fld in zip(audio_contents, layout.audio_fields):
            codes = self._codes(content.audio_url, entry, fld)   # (num_codebooks, T_i)
            codes_by_url[content.audio_url] = codes
            context_codes.append(codes)
        label_codes = [codes_by_url[c.audio_url] for c in audio_label_contents if c is not None]

        audio_ids_concat = torch.cat(context_codes, dim=1)                       # (num_codebooks, sum T_i)
        lengths = torch.tensor([c.shape[1] for c in context_codes[:-1]], dtype=torch.long)
        audio_ids_start = torch.cat([torch.zeros(1, dtype=torch.long), lengths]).cumsum(0)   # (num_audios,)
        label_audio_ids = torch.cat(label_codes, dim=1) if label_codes else None

        waveform = self._waveform(entry) if self.load_waveforms else torch.zeros(0)
        sample = ChatMLDatasetSample(
            input_ids=torch.tensor(input_tokens, dtype=torch.long),
            label_ids=torch.tensor(label_tokens, dtype=torch.long),
            audio_ids_concat=audio_ids_concat,
            audio_ids_start=audio_ids_start,
            audio_waveforms_concat=waveform,                          # target only (QUIRK waveforms)
            audio_waveforms_start=torch.tensor([0], dtype=torch.long),
            audio_sample_rate=torch.tensor([self.sample_rate], dtype=torch.float32),
            audio_speaker_indices=torch.tensor([0], dtype=torch.long),
        )
        return BuiltSample(entry.sample_id, sample, layout.messages, layout.audio_fields,
                           audio_label_contents, label_audio_ids, layout.notes)

    def _codes(self, url: str, entry: Entry, fld: str) -> torch.Tensor:
        path = Path(url)
        if not path.is_file():
            raise SampleError(f"audio not found: {path}", sample_id=entry.sample_id, field=fld, path=path)
        # Validate (and log any resample/downmix) on every load, not only on a code-cache miss.
        load_audio(path, sample_id=entry.sample_id, field=fld, target_sr=self.sample_rate, **self._audio_checks())
        codes = self.code_cache.codes(path, sample_id=entry.sample_id, field=fld)
        if codes.dim() != 2 or codes.shape[1] == 0:
            raise SampleError(f"codec returned codes of shape {tuple(codes.shape)}", sample_id=entry.sample_id,
                              field=fld, path=path)
        return codes.long()

    def _audio_checks(self) -> dict[str, Any]:
        """`load_audio` keywords: this dataset's limits plus the codec's minimum input length."""
        return dict(max_seconds=self.max_audio_seconds, min_samples=self.code_cache.min_samples,
                    speech_floor_dbfs=self.speech_floor_dbfs, allow_no_speech=self.allow_no_speech)

    def _waveform(self, entry: Entry) -> torch.Tensor:
        wav = load_audio(entry.audio_file, sample_id=entry.sample_id, field="audio_file", target_sr=self.sample_rate,
                         **self._audio_checks())
        if isinstance(wav, tuple):   # tolerate (waveform, sr)
            wav = wav[0]
        return torch.as_tensor(wav, dtype=torch.float32).reshape(-1)        # (num_samples,)


def sample_ids(dataset: ReferenceDataset) -> list[str]:
    return [e.sample_id for e in dataset.entries]


def describe_layout(messages: Sequence[Message]) -> list[str]:
    """Compact layout like ["system:text", "user:text", "assistant:audio", ...] (for configs/tests)."""
    out = []
    for m in messages:
        contents = m.content if isinstance(m.content, list) else [m.content]
        kinds = ["audio" if isinstance(c, AudioContent) else "text" for c in contents
                 if isinstance(c, (AudioContent, TextContent, str))]
        out.append(f"{m.role}:{'+'.join(kinds)}")
    return out
