"""Strict UTF-8 decoding of data files; a failure names the file, line, byte offset and the likely encoding.

Why: a manifest saved by a Windows editor in code page 1252 made every tool stop with a bare
``UnicodeDecodeError`` naming neither file nor line.  Every text file of the data (manifest,
metadata.json, transcript files, ChatML JSON) is decoded through `decode_utf8`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from higgs_common.stages import SampleError

UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class EncodingError(SampleError):
    """A data file that is not valid UTF-8 (message: line, byte offset, offending bytes, likely encoding)."""


def likely_encoding(data: bytes) -> str:
    """A best guess at the encoding of `data` (not UTF-8), for the error message.

    UTF-16 by its byte-order mark; cp1252 (Windows-1252) when a byte 0x80-0x9F occurs (printable
    in cp1252: curly quotes, dashes, the euro sign; C1 control codes in ISO-8859-1); otherwise
    "cp1252 or ISO-8859-1 (latin-1)", which agree on 0xA0-0xFF.
    """
    if data[:2] in _UTF16_BOMS:
        return "utf-16"
    if any(0x80 <= b <= 0x9F for b in data):
        try:
            data.decode("cp1252")
            return "cp1252"
        except UnicodeDecodeError:
            return "unknown (not UTF-8, not cp1252)"
    return "cp1252 or ISO-8859-1 (latin-1)"


def decode_utf8(data: bytes, *, path: str | Path, sample_id: Optional[str] = None,
                field: Optional[str] = None, line_offset: int = 0, byte_offset: int = 0) -> str:
    """`data` decoded as strict UTF-8 (a leading BOM is kept as U+FEFF for the text checks to report).

    `data` may be a slice of the file: `line_offset` lines and `byte_offset` bytes come before it.
    Raises EncodingError naming `path`, the 1-based line, the byte offset in the file and within
    the line, the offending bytes, how cp1252 would read them, and
    `likely_encoding`.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
        line = data.count(b"\n", 0, start) + 1 + line_offset
        col = start - (data.rfind(b"\n", 0, start) + 1)
        bad = data[start:exc.end]
        as_cp1252 = bad.decode("cp1252", errors="replace")
        guess = likely_encoding(data)
        raise EncodingError(
            f"not valid UTF-8: line {line}, byte {col} of the line (byte offset {start + byte_offset} in the file), "
            f"bytes {bad.hex(' ')} ({as_cp1252!r} in cp1252); likely encoding {guess}: re-save the file as UTF-8 "
            f"(e.g. iconv -f {guess.split()[0]} -t utf-8)",
            sample_id=sample_id if sample_id is not None else f"<line {line}>", field=field, path=path) from None


def read_utf8(path: str | Path, *, sample_id: Optional[str] = None, field: Optional[str] = None) -> str:
    """The whole file decoded by `decode_utf8` (OSError propagates)."""
    return decode_utf8(Path(path).read_bytes(), path=path, sample_id=sample_id, field=field)
