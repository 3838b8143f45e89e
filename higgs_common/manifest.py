"""The canonical sample manifest: one JSON object per line, the single description of the data.

Both pipelines' native formats (the reference's metadata folder, the custom ChatML JSON) are
*generated* from this by `higgs_common.converters`, which is what lets the harness feed both
pipelines identical raw samples.

Fields of a record (all required unless noted):
    id          unique sample id
    speaker     speaker/voice name
    scene       recording scene, e.g. "a quiet room"
    text        target transcript
    audio       target audio, path relative to the manifest's folder (24 kHz mono WAV)
    ref_text    transcript of the reference clip (same speaker, another utterance)
    ref_audio   reference audio path, relative to the manifest's folder
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

from higgs_common.stages import SampleError
from higgs_common.text_encoding import decode_utf8

REQUIRED_FIELDS = ("id", "speaker", "scene", "text", "audio", "ref_text", "ref_audio")
# The manifest's file name inside a data folder: `--data data/` means `data/manifest.jsonl`.
MANIFEST_NAME = "manifest.jsonl"


class ManifestError(SampleError):
    """A manifest line that does not parse or lacks a field; names the file, line/sample and field.

    A `SampleError` (hence a `ValueError`), so callers that catch bad input catch this too.
    """


@dataclass(frozen=True)
class CanonicalRecord:
    id: str
    speaker: str
    scene: str
    text: str
    audio: Path        # absolute after loading
    ref_text: str
    ref_audio: Path    # absolute after loading

    def to_json(self, relative_to: Path | None = None) -> dict:
        d = asdict(self)
        for key in ("audio", "ref_audio"):
            p = Path(d[key])
            d[key] = str(p.relative_to(relative_to)) if relative_to is not None else str(p)
        return d


def resolve_manifest(path: Path) -> Path:
    """`--data` value -> the manifest file: a folder means its `manifest.jsonl`.

    Raises ManifestError naming the path when there is no such file (for a folder: naming the
    folder and the file name it looked for).
    """
    path = Path(path)
    if path.is_dir():
        inner = path / MANIFEST_NAME
        if not inner.is_file():
            raise ManifestError(f"data folder {str(path)!r} holds no {MANIFEST_NAME}", sample_id=None, field=None,
                                path=path)
        return inner
    if not path.is_file():
        raise ManifestError("manifest not found", sample_id=None, field=None, path=path)
    return path


def load_manifest(path: Path, *, skip_bad: bool = False,
                  skipped: Optional[list[SampleError]] = None) -> list[CanonicalRecord]:
    """Read a manifest (a folder means its `manifest.jsonl`); audio paths resolve against its folder.

    A bad line (not UTF-8, not JSON, a field missing) raises `ManifestError`; with `skip_bad=True` it is left out instead and the error
    is appended to `skipped` (so the caller can report every skipped line and the count).
    """
    path = resolve_manifest(path)
    records: list[CanonicalRecord] = []
    seen: set[str] = set()
    offset = 0
    for lineno, raw in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        start, offset = offset, offset + len(raw)
        try:
            line = _decode_line(path, lineno, raw, start)
            if line.strip():
                records.append(_parse_line(path, lineno, line, seen))
        except ManifestError as exc:
            if not skip_bad:
                raise
            if skipped is not None:
                skipped.append(exc)
    return records


def _decode_line(path: Path, lineno: int, raw: bytes, start: int) -> str:
    """One line's bytes as strict UTF-8, or ManifestError naming line, byte offset and the likely encoding."""
    try:
        return decode_utf8(raw, path=path, line_offset=lineno - 1, byte_offset=start)
    except SampleError as exc:
        raise ManifestError(str(exc).rsplit(" [sample=", 1)[0], sample_id=f"<line {lineno}>", field=None,
                            path=path) from None


def _parse_line(path: Path, lineno: int, line: str, seen: set[str]) -> CanonicalRecord:
    """One manifest line -> record (adds its id to `seen`), or ManifestError."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}:{lineno}: not valid JSON ({exc.msg})", sample_id=f"<line {lineno}>",
                            field=None, path=path) from exc
    if not isinstance(obj, dict):
        raise ManifestError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}",
                            sample_id=f"<line {lineno}>", field=None, path=path)
    sid = obj.get("id", f"<line {lineno}>")
    for key in REQUIRED_FIELDS:
        if key not in obj or not isinstance(obj[key], str):
            raise ManifestError(f"{path}:{lineno}: sample {sid!r} lacks string field {key!r}",
                                sample_id=str(sid), field=key, path=path)
    if sid in seen:
        raise ManifestError(f"{path}:{lineno}: sample {sid!r} duplicated", sample_id=str(sid),
                            field="id", path=path)
    seen.add(sid)
    return CanonicalRecord(
        id=obj["id"], speaker=obj["speaker"], scene=obj["scene"], text=obj["text"],
        audio=(path.parent / obj["audio"]).resolve(), ref_text=obj["ref_text"],
        ref_audio=(path.parent / obj["ref_audio"]).resolve(),
    )


def write_manifest(records: Iterable[CanonicalRecord], path: Path) -> Path:
    """Write records as JSONL with audio paths relative to the manifest's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r.to_json(relative_to=path.parent.resolve()), ensure_ascii=False) + "\n")
    return path
