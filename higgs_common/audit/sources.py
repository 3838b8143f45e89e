"""Read a data set in any of the project's three formats into `AuditRecord`s, without trusting it.

Formats (detected from DATA):
    canonical manifest  a ``*.jsonl`` file, or a folder holding ``manifest.jsonl`` (`higgs_common.manifest`)
    reference folder    a folder holding ``metadata.json`` (or a ``metadata.json`` path), or a folder of
                        ``<name>.wav`` + ``<name>.txt`` pairs (`higgs_common.converters.write_reference_folder`)
    ChatML JSON         a ``*.json`` file holding a list (`higgs_common.converters.write_chatml_json`)

Unlike the pipelines' loaders, reading never stops at the first problem: a line that does not
decode as UTF-8 or parse as JSON becomes an error `Finding` and the rest is still read, so one
audit names every problem.  Every string of a record is kept with its field name (`TextField`),
so the text checks cover ANY text field, not only transcripts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from higgs_common.text_encoding import decode_utf8
from higgs_common.audit.findings import ERROR, Finding
from higgs_common.manifest import MANIFEST_NAME, REQUIRED_FIELDS
from higgs_common.stages import SampleError

CANONICAL, REFERENCE, CHATML = "canonical manifest", "reference folder", "ChatML JSON"
METADATA_FILE = "metadata.json"


class DataFormatError(SampleError):
    """DATA is none of the three formats (names the path)."""


@dataclass(frozen=True)
class TextField:
    """One string of the data: its field name, its text and the file it was read from."""

    field: str
    text: str
    path: Path


@dataclass
class AuditRecord:
    """One sample as the audit sees it.

    `audio` maps field -> audio file; `pairs` lists (audio field, text field) where the text claims
    to be what the audio says; `transcripts` are the text fields the pipelines tokenize as speech
    (checked for reserved tokens and for having something to say).
    """

    sample_id: str
    path: Path
    strings: list[TextField] = field(default_factory=list)
    audio: dict[str, Path] = field(default_factory=dict)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    transcripts: tuple[str, ...] = ()
    line: Optional[int] = None

    def text(self, name: str) -> Optional[TextField]:
        return next((t for t in self.strings if t.field == name), None)


@dataclass
class LoadedData:
    data_format: str
    records: list[AuditRecord]
    findings: list[Finding]


def walk_strings(obj: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(JSON path, string) for every string inside `obj` (dict keys joined by '.', list items as [i])."""
    if isinstance(obj, str):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk_strings(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk_strings(v, f"{prefix}[{i}]")


def _error(exc: SampleError, check: str) -> Finding:
    return Finding(ERROR, check, str(exc).rsplit(" [sample=", 1)[0], exc.path, exc.sample_id, exc.field)


def detect(data: Path) -> tuple[str, Path]:
    """(format, the file or folder to read); DataFormatError when DATA is none of the formats."""
    data = Path(data)
    if data.is_dir():
        if (data / MANIFEST_NAME).is_file():
            return CANONICAL, data / MANIFEST_NAME
        if (data / METADATA_FILE).is_file() or any(data.glob("*.wav")):
            return REFERENCE, data
        raise DataFormatError(f"data folder holds neither {MANIFEST_NAME}, {METADATA_FILE} nor *.wav files",
                              sample_id=None, field=None, path=data)
    if not data.is_file():
        raise DataFormatError("data not found", sample_id=None, field=None, path=data)
    if data.suffix == ".jsonl":
        return CANONICAL, data
    if data.name == METADATA_FILE:
        return REFERENCE, data.parent
    if data.suffix == ".json":
        return CHATML, data
    raise DataFormatError("unknown data format: expected *.jsonl (canonical manifest), a reference folder or "
                          "metadata.json, or *.json (ChatML list)", sample_id=None, field=None, path=data)


def load(data: Path) -> LoadedData:
    """Read DATA (see module doc); problems of the files themselves come back as error findings."""
    fmt, where = detect(Path(data))
    reader = {CANONICAL: _read_canonical, REFERENCE: _read_reference, CHATML: _read_chatml}[fmt]
    records, findings = reader(where)
    return LoadedData(fmt, records, findings)


# ----------------------------------------------------------------------------- canonical manifest
def _read_canonical(path: Path) -> tuple[list[AuditRecord], list[Finding]]:
    records: list[AuditRecord] = []
    findings: list[Finding] = []
    raw = path.read_bytes()
    offset = 0
    for lineno, chunk in enumerate(raw.splitlines(keepends=True), start=1):
        start, offset = offset, offset + len(chunk)
        if lineno == 1 and chunk.startswith(b"\xef\xbb\xbf"):
            findings.append(Finding(ERROR, "text.bom", "the manifest starts with a UTF-8 byte-order mark (U+FEFF): "
                                    "JSON readers reject it", str(path), "<line 1>", None))
            chunk = chunk[3:]
        try:
            line = decode_utf8(chunk, path=path, line_offset=lineno - 1, byte_offset=start)
        except SampleError as exc:
            sid, fld = _locate_undecodable(chunk)
            findings.append(Finding(ERROR, "file.encoding", str(exc).rsplit(" [sample=", 1)[0], exc.path,
                                    sid or exc.sample_id, fld))
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            findings.append(Finding(ERROR, "file.json", f"line {lineno}: not valid JSON ({exc.msg})", str(path),
                                    f"<line {lineno}>", None))
            continue
        if not isinstance(obj, dict):
            findings.append(Finding(ERROR, "file.json", f"line {lineno}: expected a JSON object, got "
                                    f"{type(obj).__name__}", str(path), f"<line {lineno}>", None))
            continue
        sid = str(obj.get("id", f"<line {lineno}>"))
        missing = [k for k in REQUIRED_FIELDS if not isinstance(obj.get(k), str)]
        for k in missing:
            findings.append(Finding(ERROR, "record.field", f"line {lineno}: lacks string field {k!r}", str(path),
                                    sid, k))
        rec = AuditRecord(sid, path, line=lineno, strings=[TextField(f, t, path) for f, t in walk_strings(obj)],
                          transcripts=("text", "ref_text"))
        for k in ("audio", "ref_audio"):
            if isinstance(obj.get(k), str):
                rec.audio[k] = (path.parent / obj[k]).resolve()
        rec.pairs = [(a, t) for a, t in (("audio", "text"), ("ref_audio", "ref_text"))
                     if a in rec.audio and isinstance(obj.get(t), str)]
        records.append(rec)
    return records, findings


def _locate_undecodable(chunk: bytes) -> tuple[Optional[str], Optional[str]]:
    """(sample id, first field holding non-ASCII text) of a JSON line that is not UTF-8, read as cp1252
    (which decodes any byte but five), so the encoding finding can name the sample and field; Nones
    when even that does not parse."""
    try:
        obj = json.loads(chunk.decode("cp1252", errors="replace"))
    except json.JSONDecodeError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    fld = next((f for f, t in walk_strings(obj) if not t.isascii()), None)
    return (str(obj["id"]) if "id" in obj else None), fld


# ----------------------------------------------------------------------------- reference folder
def _read_reference(folder: Path) -> tuple[list[AuditRecord], list[Finding]]:
    meta_path = folder / METADATA_FILE
    if not meta_path.is_file():
        return _read_scanned(folder)
    findings: list[Finding] = []
    try:
        meta = json.loads(decode_utf8(meta_path.read_bytes(), path=meta_path).lstrip("\ufeff"))
    except SampleError as exc:
        return [], [_error(exc, "file.encoding")]
    except json.JSONDecodeError as exc:
        return [], [Finding(ERROR, "file.json", f"not valid JSON ({exc.msg}, line {exc.lineno})", str(meta_path),
                            None, None)]
    samples = meta.get("samples") if isinstance(meta, dict) else None
    if not isinstance(samples, list):
        return [], [Finding(ERROR, "record.field", "metadata.json has no 'samples' list", str(meta_path), None,
                            "samples")]
    records: list[AuditRecord] = []
    for i, s in enumerate(samples):
        if not isinstance(s, dict):
            findings.append(Finding(ERROR, "record.field", f"samples[{i}] is not an object", str(meta_path),
                                    f"<samples[{i}]>", None))
            continue
        sid = str(s.get("id", f"<samples[{i}]>"))
        rec = AuditRecord(sid, meta_path, strings=[TextField(f, t, meta_path) for f, t in walk_strings(s)],
                          transcripts=("transcript_file", "ref_transcript"))
        for k in ("audio_file", "transcript_file"):
            if not isinstance(s.get(k), str):
                findings.append(Finding(ERROR, "record.field", f"lacks string field {k!r}", str(meta_path), sid, k))
        if isinstance(s.get("transcript_file"), str):
            txt = folder / s["transcript_file"]
            rec.strings = [t for t in rec.strings if t.field != "transcript_file"]
            if not txt.is_file():
                findings.append(Finding(ERROR, "record.field", f"transcript file not found: {txt}", str(txt), sid,
                                        "transcript_file"))
            else:
                try:
                    rec.strings.append(TextField("transcript_file", decode_utf8(txt.read_bytes(), path=txt,
                                                 sample_id=sid, field="transcript_file"), txt))
                except SampleError as exc:
                    findings.append(_error(exc, "file.encoding"))
        for k in ("audio_file", "ref_audio_file"):
            if isinstance(s.get(k), str):
                rec.audio[k] = (folder / s[k]).resolve()
        rec.pairs = [(a, t) for a, t in (("audio_file", "transcript_file"), ("ref_audio_file", "ref_transcript"))
                     if a in rec.audio and rec.text(t) is not None]
        records.append(rec)
    return records, findings


def _read_scanned(folder: Path) -> tuple[list[AuditRecord], list[Finding]]:
    """A folder without metadata.json: every `<name>.wav` with a sibling `<name>.txt` (the reference's fallback)."""
    records, findings = [], []
    for wav in sorted(folder.glob("*.wav")):
        txt = wav.with_suffix(".txt")
        rec = AuditRecord(wav.stem, txt, audio={"audio_file": wav.resolve()}, transcripts=("transcript_file",))
        if not txt.is_file():
            findings.append(Finding(ERROR, "record.field", f"no transcript {txt.name} beside the clip", str(txt),
                                    wav.stem, "transcript_file"))
        else:
            try:
                rec.strings.append(TextField("transcript_file", decode_utf8(txt.read_bytes(), path=txt,
                                             sample_id=wav.stem, field="transcript_file"), txt))
                rec.pairs = [("audio_file", "transcript_file")]
            except SampleError as exc:
                findings.append(_error(exc, "file.encoding"))
        records.append(rec)
    return records, findings


# ----------------------------------------------------------------------------- ChatML JSON
_CHATML_PAIRS = (("messages[1].content[1].audio_url", "messages[1].content[0].text"),
                 ("messages[2].content[0].audio_url", "messages[1].content[2].text"))


def _read_chatml(path: Path) -> tuple[list[AuditRecord], list[Finding]]:
    try:
        items = json.loads(decode_utf8(path.read_bytes(), path=path).lstrip("\ufeff"))
    except SampleError as exc:
        return [], [_error(exc, "file.encoding")]
    except json.JSONDecodeError as exc:
        return [], [Finding(ERROR, "file.json", f"not valid JSON ({exc.msg}, line {exc.lineno})", str(path), None,
                            None)]
    if not isinstance(items, list):
        return [], [Finding(ERROR, "file.json", "top level must be a JSON list", str(path), None, None)]
    records: list[AuditRecord] = []
    for i, item in enumerate(items):
        misc = item.get("misc") if isinstance(item, dict) else None
        sid = str(misc.get("sample_id", f"<item {i}>")) if isinstance(misc, dict) else f"<item {i}>"
        strings = [TextField(f, t, path) for f, t in walk_strings(item)]
        rec = AuditRecord(sid, path, strings=strings)
        rec.audio = {f: (path.parent / t).resolve() for f, t in walk_strings(item) if f.endswith(".audio_url")}
        rec.transcripts = tuple(f for f, _ in walk_strings(item)
                                if f.startswith("messages[") and f.endswith("].text"))
        rec.pairs = [(a, t) for a, t in _CHATML_PAIRS if a in rec.audio and rec.text(t) is not None]
        records.append(rec)
    return records, []
