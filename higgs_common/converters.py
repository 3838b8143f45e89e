"""Canonical manifest -> each pipeline's native data format (and back, for round-trip tests).

Why this exists: the harness must feed both pipelines *identical raw samples*, yet each pipeline
reads its own on-disk format through its own loader.  Generating both formats from the one
canonical manifest (`higgs_common.manifest`) is what makes "same input" true by construction;
the readers here exist only to prove the writers lose nothing (the pipelines bring their own
loaders, implemented from the format descriptions below).

Two formats:

* `write_reference_folder` — the train-higgs-audio metadata folder (JimmyMa99/train-higgs-audio,
  `HiggsAudioDataset` in `trainer/trainer.py` with `use_metadata=True`).
* `write_chatml_json` — the custom zero-shot pipeline's ChatML JSON list (codeman911/higgs-audio,
  `scripts/data_processing/zero_shot_processor.py`), loadable by upstream
  `prepare_chatml_sample` (dacite, strict) as a `boson_multimodal.data_types.ChatMLSample`.

Both writers fail before writing anything if a wav is missing or unreadable, with a
`SampleError` naming the sample id, the field (`audio` / `ref_audio`) and the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

import soundfile as sf

from higgs_common.atomic import atomic_path
from higgs_common.manifest import CanonicalRecord
from higgs_common.stages import SampleError

METADATA_FILE = "metadata.json"
REF_SUBDIR = "ref"
LANGUAGE = "en"
# The custom repo's zero-shot processor uses exactly this system message.
CHATML_SYSTEM_PROMPT = (
    "You are a helpful assistant capable of generating speech in the voice of the provided reference audio."
)


# --------------------------------------------------------------------------- shared helpers

def _check_records(records: Iterable[CanonicalRecord]) -> list[CanonicalRecord]:
    """Materialise, reject empty input, duplicate ids, ids unusable as file names, missing wavs."""
    recs = list(records)
    if not recs:
        raise SampleError("no records to convert", sample_id=None, field=None)
    seen: set[str] = set()
    for r in recs:
        if not r.id or "/" in r.id or "\\" in r.id or r.id in (".", ".."):
            raise SampleError(f"sample id {r.id!r} cannot be used as a file name", sample_id=r.id, field="id")
        if r.id in seen:
            raise SampleError(f"duplicate sample id {r.id!r}", sample_id=r.id, field="id")
        seen.add(r.id)
        for fld in ("audio", "ref_audio"):
            p = Path(getattr(r, fld))
            if not p.is_file():
                raise SampleError(f"{fld} wav not found: {p}", sample_id=r.id, field=fld, path=p)
    return recs


def wav_duration(path: Path, *, sample_id: str, field: str) -> float:
    """Duration in seconds from the wav header; an unreadable file is a SampleError, not a crash."""
    try:
        info = sf.info(str(path))
    except sf.SoundFileError as exc:
        raise SampleError(f"cannot read wav {path}: {exc}", sample_id=sample_id, field=field, path=path) from exc
    return info.frames / info.samplerate


def _require(obj: Any, key: str, kind: type, *, sample_id: str | None, field: str, path: Path) -> Any:
    """obj[key] with type `kind`, or a SampleError naming `field` (a JSON path like messages[1].content)."""
    if not isinstance(obj, dict) or key not in obj:
        raise SampleError(f"missing field {field!r}", sample_id=sample_id, field=field, path=path)
    value = obj[key]
    if not isinstance(value, kind):
        raise SampleError(f"field {field!r} should be {kind.__name__}, got {type(value).__name__}",
                          sample_id=sample_id, field=field, path=path)
    return value


# --------------------------------------------------------------------------- reference folder

def write_reference_folder(records: Iterable[CanonicalRecord], out_dir: Path, *,
                           created_from: Sequence[str] = ("higgs-diff canonical manifest",)) -> Path:
    """Write the train-higgs-audio metadata folder; returns `out_dir`.

    Layout (every path inside metadata.json is relative to `out_dir`, as the reference joins
    them with its `data_dir`):

        out_dir/metadata.json
        out_dir/<id>.wav              byte copy of the record's `audio`
        out_dir/<id>.txt              the record's `text`, verbatim (UTF-8, no trailing newline;
                                      the reference strips and normalises it when reading)
        out_dir/ref/<name>.wav        byte copy of each distinct `ref_audio`, <name> = its file name

    metadata.json:

        {"dataset_info": {"total_samples": int, "speakers": [str, ...] (first-appearance order),
                          "languages": ["en"], "total_duration": float s, "avg_duration": float s,
                          "created_from": [str, ...]},
         "samples": [ {                       # one per record, in record order
             "id": str,                        # record id
             "audio_file": "<id>.wav",
             "transcript_file": "<id>.txt",
             "duration": float,                # seconds of audio_file, rounded to 3 decimals
             "speaker_id": str,                # record speaker
             "speaker_name": str,              # = speaker_id (the manifest has no display name)
             "scene": str,                     # record scene, e.g. "a quiet room"
             "ref_audio_file": "ref/<name>.wav",
             "ref_transcript": str,            # record ref_text, verbatim
             "language": "en"}, ...]}

    The task (`zero_shot_voice_cloning` etc.) is not stored: the reference takes it from a flag.
    Files already in `out_dir` are overwritten or left alone, never deleted; every file is written
    atomically (`higgs_common.atomic`), so the ranks of a torchrun job may all write the
    same folder while others read it (the training CLIs do: each rank converts the manifest).  The
    reference loads only what metadata.json lists, and its no-metadata fallback globs only top-level wavs, so
    clips under ref/ are never mistaken for samples.
    Two records whose reference clips share a file name but differ in content raise a SampleError
    (field `ref_audio`) rather than silently overwrite one another.
    """
    recs = _check_records(records)
    out_dir = Path(out_dir)
    ref_dir = out_dir / REF_SUBDIR
    ref_dir.mkdir(parents=True, exist_ok=True)

    ref_sources: dict[str, Path] = {}   # ref file name -> canonical source
    samples: list[dict[str, Any]] = []
    for r in recs:
        duration = wav_duration(r.audio, sample_id=r.id, field="audio")
        wav_duration(r.ref_audio, sample_id=r.id, field="ref_audio")   # readable, not just present
        name = Path(r.ref_audio).name
        prev = ref_sources.get(name)
        if prev is None:
            ref_sources[name] = Path(r.ref_audio)
        elif prev.resolve() != Path(r.ref_audio).resolve() and prev.read_bytes() != Path(r.ref_audio).read_bytes():
            raise SampleError(f"reference file name {name!r} also used by a different clip {prev}",
                              sample_id=r.id, field="ref_audio", path=r.ref_audio)
        samples.append({
            "id": r.id,
            "audio_file": f"{r.id}.wav",
            "transcript_file": f"{r.id}.txt",
            "duration": round(duration, 3),
            "speaker_id": r.speaker,
            "speaker_name": r.speaker,
            "scene": r.scene,
            "ref_audio_file": f"{REF_SUBDIR}/{name}",
            "ref_transcript": r.ref_text,
            "language": LANGUAGE,
        })

    for r in recs:
        with atomic_path(out_dir / f"{r.id}.wav") as tmp:
            shutil.copyfile(r.audio, tmp)
        with atomic_path(out_dir / f"{r.id}.txt") as tmp:
            tmp.write_text(r.text, encoding="utf-8")
    for name, src in ref_sources.items():
        with atomic_path(ref_dir / name) as tmp:
            shutil.copyfile(src, tmp)

    speakers = list(dict.fromkeys(r.speaker for r in recs))
    total = sum(s["duration"] for s in samples)
    metadata = {
        "dataset_info": {
            "total_samples": len(samples),
            "speakers": speakers,
            "languages": [LANGUAGE],
            "total_duration": round(total, 3),
            "avg_duration": round(total / len(samples), 3),
            "created_from": list(created_from),
        },
        "samples": samples,
    }
    with atomic_path(out_dir / METADATA_FILE) as tmp:
        tmp.write_text(json.dumps(metadata, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return out_dir


def read_reference_folder(out_dir: Path) -> list[CanonicalRecord]:
    """Canonical records back from a folder written by `write_reference_folder` (tests only).

    Paths point at the folder's copies (`<id>.wav`, `ref/<name>.wav`), so compare audio by
    content, not by path.
    """
    out_dir = Path(out_dir)
    meta_path = out_dir / METADATA_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SampleError(f"not valid JSON ({exc.msg})", sample_id=None, field=None, path=meta_path) from exc
    samples = _require(meta, "samples", list, sample_id=None, field="samples", path=meta_path)
    records: list[CanonicalRecord] = []
    for i, s in enumerate(samples):
        sid = s.get("id", f"<samples[{i}]>") if isinstance(s, dict) else f"<samples[{i}]>"
        get = {k: _require(s, k, str, sample_id=sid, field=k, path=meta_path)
               for k in ("id", "audio_file", "transcript_file", "speaker_id", "scene",
                         "ref_audio_file", "ref_transcript")}
        txt = out_dir / get["transcript_file"]
        if not txt.is_file():
            raise SampleError(f"transcript not found: {txt}", sample_id=sid, field="transcript_file", path=txt)
        records.append(CanonicalRecord(
            id=get["id"], speaker=get["speaker_id"], scene=get["scene"],
            text=txt.read_text(encoding="utf-8"),
            audio=(out_dir / get["audio_file"]).resolve(),
            ref_text=get["ref_transcript"],
            ref_audio=(out_dir / get["ref_audio_file"]).resolve(),
        ))
    return records


# --------------------------------------------------------------------------- ChatML JSON

def write_chatml_json(records: Iterable[CanonicalRecord], out_path: Path) -> Path:
    """Write the custom pipeline's ChatML JSON list; returns `out_path`.

    The file is one JSON list (UTF-8, indent 2) with one item per record, in record order.
    Audio is not copied: `audio_url` is the ABSOLUTE path of the canonical wav.

        {"messages": [
            {"role": "system", "content": CHATML_SYSTEM_PROMPT},            # a plain string
            {"role": "user", "content": [
                {"type": "text", "text": <ref_text>},                      # what the reference says
                {"type": "audio", "audio_url": "<abs ref_audio>"},          # the voice prompt
                {"type": "text", "text": <text>}]},                         # what to say
            {"role": "assistant", "content": [
                {"type": "audio", "audio_url": "<abs audio>"}]}],           # the training target
         "start_index": 0,
         "speaker": <speaker>,
         "misc": {"sample_id": <id>, "ref_transcript": <ref_text>, "target_transcript": <text>,
                  "duration": <seconds of audio, float>, "scene": <scene>}}

    Message and content dicts carry only field names of `boson_multimodal.data_types`
    (`Message`, `TextContent`, `AudioContent`), so upstream `prepare_chatml_sample` accepts an
    item directly (it parses with dacite in strict mode, which rejects unknown keys).  Audio
    items deliberately omit `duration`/`offset`: a loader passing them to librosa would crop.
    """
    recs = _check_records(records)
    items: list[dict[str, Any]] = []
    for r in recs:
        duration = wav_duration(r.audio, sample_id=r.id, field="audio")
        wav_duration(r.ref_audio, sample_id=r.id, field="ref_audio")
        items.append({
            "messages": [
                {"role": "system", "content": CHATML_SYSTEM_PROMPT},
                {"role": "user", "content": [
                    {"type": "text", "text": r.ref_text},
                    {"type": "audio", "audio_url": str(Path(r.ref_audio).resolve())},
                    {"type": "text", "text": r.text},
                ]},
                {"role": "assistant", "content": [
                    {"type": "audio", "audio_url": str(Path(r.audio).resolve())},
                ]},
            ],
            "start_index": 0,
            "speaker": r.speaker,
            "misc": {
                "sample_id": r.id,
                "ref_transcript": r.ref_text,
                "target_transcript": r.text,
                "duration": duration,
                "scene": r.scene,
            },
        })
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(items, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return out_path


def read_chatml_json(path: Path) -> list[CanonicalRecord]:
    """Canonical records back from a file written by `write_chatml_json` (tests only).

    Checks the exact message layout documented there and names the offending JSON field.
    """
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SampleError(f"not valid JSON ({exc.msg})", sample_id=None, field=None, path=path) from exc
    if not isinstance(items, list):
        raise SampleError("top level must be a JSON list", sample_id=None, field=None, path=path)
    records: list[CanonicalRecord] = []
    for i, item in enumerate(items):
        misc = _require(item, "misc", dict, sample_id=f"<item {i}>", field="misc", path=path)
        sid = _require(misc, "sample_id", str, sample_id=f"<item {i}>", field="misc.sample_id", path=path)
        speaker = _require(item, "speaker", str, sample_id=sid, field="speaker", path=path)
        scene = _require(misc, "scene", str, sample_id=sid, field="misc.scene", path=path)
        msgs = _require(item, "messages", list, sample_id=sid, field="messages", path=path)
        roles = [m.get("role") if isinstance(m, dict) else None for m in msgs]
        if roles != ["system", "user", "assistant"]:
            raise SampleError(f"expected roles [system, user, assistant], got {roles}",
                              sample_id=sid, field="messages[*].role", path=path)
        user = _require(msgs[1], "content", list, sample_id=sid, field="messages[1].content", path=path)
        assistant = _require(msgs[2], "content", list, sample_id=sid, field="messages[2].content", path=path)
        if [c.get("type") if isinstance(c, dict) else None for c in user] != ["text", "audio", "text"]:
            raise SampleError("user content must be [text, audio, text]",
                              sample_id=sid, field="messages[1].content", path=path)
        if [c.get("type") if isinstance(c, dict) else None for c in assistant] != ["audio"]:
            raise SampleError("assistant content must be [audio]",
                              sample_id=sid, field="messages[2].content", path=path)
        records.append(CanonicalRecord(
            id=sid, speaker=speaker, scene=scene,
            text=_require(user[2], "text", str, sample_id=sid, field="messages[1].content[2].text", path=path),
            audio=Path(_require(assistant[0], "audio_url", str, sample_id=sid,
                                field="messages[2].content[0].audio_url", path=path)),
            ref_text=_require(user[0], "text", str, sample_id=sid, field="messages[1].content[0].text", path=path),
            ref_audio=Path(_require(user[1], "audio_url", str, sample_id=sid,
                                    field="messages[1].content[1].audio_url", path=path)),
        ))
    return records
