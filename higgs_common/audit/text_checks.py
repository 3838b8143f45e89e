"""Invisible characters in ANY text field, and the transcript checks the pipelines run.

Levels (why): a character the tokenizer turns into tokens nobody can see is an error, because the
model learns to say it: Unicode category Cc (control) except TAB/LF/CR, and Cf (format: the
byte-order mark U+FEFF, zero-width spaces/joiners, direction marks).  CR, LF and TAB inside a text are
warnings: whitespace that the reference's normalisation partly strips (leading/trailing) and the
custom pipeline does not, so the two pipelines read different text; inside a single-line
transcript they usually come from a file saved with Windows line ends or a pasted line break.
The transcript checks (`higgs_common.transcripts.check_transcript`: reserved special-token
strings, nothing to say) are errors, as in both pipelines.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Iterable, Optional

from higgs_common.audit.findings import ERROR, WARNING, Finding
from higgs_common.audit.sources import AuditRecord
from higgs_common.stages import SampleError
from higgs_common.transcripts import check_transcript, check_user_text

WHITESPACE_CONTROLS = {"\t": "TAB", "\n": "LF (line break)", "\r": "CR (carriage return)"}


def _describe(ch: str) -> str:
    name = "BYTE ORDER MARK" if ch == "\ufeff" else unicodedata.name(ch, WHITESPACE_CONTROLS.get(ch, "control"))
    return f"U+{ord(ch):04X} {name}"


def invisible_characters(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(errors, warnings): (index, char) of Cc/Cf characters in `text`, split as the module doc says."""
    errors, warnings = [], []
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if ch in WHITESPACE_CONTROLS:
            warnings.append((i, ch))
        elif cat in ("Cc", "Cf"):
            errors.append((i, ch))
    return errors, warnings


def _positions(hits: list[tuple[int, str]], text: str) -> str:
    shown = ", ".join(f"{_describe(ch)} at index {i}" for i, ch in hits[:4])
    more = f" (+{len(hits) - 4} more)" if len(hits) > 4 else ""
    return f"{shown}{more} in {text[:60]!r}{'...' if len(text) > 60 else ''}"


def check_text_fields(records: Iterable[AuditRecord]) -> list[Finding]:
    """Cc/Cf characters in every string of every record (see module doc for the levels)."""
    out: list[Finding] = []
    for rec in records:
        for tf in rec.strings:
            errors, warnings = invisible_characters(tf.text)
            if errors:
                check = "text.bom" if errors[0] == (0, "\ufeff") and len(errors) == 1 else "text.control"
                out.append(Finding(ERROR, check, "invisible character(s) the tokenizer would read: "
                                   + _positions(errors, tf.text), str(tf.path), rec.sample_id, tf.field))
            if warnings:
                out.append(Finding(WARNING, "text.whitespace", "line break / carriage return / tab inside the text: "
                                   + _positions(warnings, tf.text), str(tf.path), rec.sample_id, tf.field))
    return out


def check_transcripts(records: Iterable[AuditRecord], tokenizer: Optional[Any]) -> list[Finding]:
    """`check_transcript` on every transcript field and `check_user_text` on the other strings (needs a tokenizer).

    Strings are stripped first, as both pipelines strip them.  Findings are named
    ``dataset.<error class>`` (the pipelines' datasets raise the same errors).
    """
    if tokenizer is None:
        return []
    out: list[Finding] = []
    for rec in records:
        for tf in rec.strings:
            if tf.field.endswith(("audio", "audio_url", "audio_file", "path")):
                continue
            try:
                if tf.field in rec.transcripts:
                    check_transcript(tf.text.strip(), tokenizer=tokenizer, sample_id=rec.sample_id, field=tf.field,
                                     path=tf.path)
                else:
                    check_user_text(tf.text, tokenizer=tokenizer, sample_id=rec.sample_id, field=tf.field,
                                    path=tf.path)
            except SampleError as exc:
                out.append(Finding(ERROR, f"dataset.{type(exc).__name__}", str(exc).rsplit(" [sample=", 1)[0],
                                   exc.path, exc.sample_id, exc.field))
    return out
