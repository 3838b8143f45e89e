"""Transcript checks both pipelines and the harness apply: reserved tokens and empty text.

Why: the prompt builders (upstream `prepare_chatml_sample`, the reference's system message) write
the tokenizer's special tokens as literal text, and the tokenizer turns that text back into the
special ids.  A transcript that itself contains e.g. ``<|AUDIO_OUT|>`` therefore adds an audio
placeholder without an audio: the dataset stage passes and the upstream collator dies later with
an ``IndexError`` in `get_audio_codes`, naming nothing.  Other reserved tokens (``<|eot_id|>``,
``<|begin_of_text|>``, ...) silently end turns or restart the prompt.  The reserved strings are
read from the tokenizer itself (`reserved_token_strings`), so a real Llama-3 tokenizer's 256
reserved slots count as much as the Higgs tokens.

A transcript with nothing to say after the pipeline's own normalisation (the reference's
`normalize_transcript` turns "()" into "" and "。" into ".") is rejected as well: "nothing to say"
means no letter and no digit (Unicode categories L* and N*) is left.  Normalisation never removes
letters or digits (it maps punctuation, drops parentheses and adds words such as "degrees
Celsius"), so the raw and the normalised text agree on this test, and both pipelines reject the
same transcripts.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any, Optional

from higgs_common.stages import SampleError


class ReservedTokenError(SampleError):
    """A transcript (or other user text) contains one of the tokenizer's reserved special-token strings."""


class TranscriptEmptyError(SampleError):
    """A transcript that holds no letter or digit after the pipeline's normalisation."""


def reserved_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """Every special-token string of `tokenizer`, longest first.

    The union of `all_special_tokens` (bos/eos/pad/... and `additional_special_tokens`) and every
    added token flagged ``special`` (`added_tokens_decoder`, where the Higgs and Llama-3 reserved
    tokens live).  Added tokens *not* flagged special are ordinary vocabulary and may appear in text.
    """
    found = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found.update(tok.content for tok in decoder.values() if getattr(tok, "special", False))
    return tuple(sorted((t for t in found if t), key=lambda t: (-len(t), t)))


def find_reserved_tokens(text: str, tokenizer: Any) -> list[str]:
    """The reserved token strings that occur in `text`, in the order of `reserved_token_strings`."""
    return [t for t in reserved_token_strings(tokenizer) if t in text]


def has_speakable_content(text: str) -> bool:
    """True when `text` holds at least one letter or digit (Unicode categories L* / N*)."""
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


def check_user_text(text: str, *, tokenizer: Any, sample_id: Optional[str], field: str,
                    path: str | Path | None, normalised: Optional[str] = None) -> None:
    """Raise ReservedTokenError if `text` (or its normalised form) holds a reserved token string."""
    for candidate in (text, normalised):
        if candidate is None:
            continue
        bad = find_reserved_tokens(candidate, tokenizer)
        if bad:
            shown = ", ".join(repr(t) for t in bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
            which = "text" if candidate is text else f"normalised text {normalised!r}"
            raise ReservedTokenError(
                f"{which} contains the tokenizer's reserved special token(s) {shown}; the prompt builder "
                f"writes these itself (an audio placeholder here would have no audio)",
                sample_id=sample_id, field=field, path=path)


def check_transcript(text: str, *, tokenizer: Any, sample_id: Optional[str], field: str,
                     path: str | Path | None, normalised: Optional[str] = None) -> None:
    """Reserved tokens (`check_user_text`), then: the text the model reads must have something to say.

    `normalised` is the pipeline's own normal form of `text` (None: the pipeline reads `text` as
    is).  Raises ReservedTokenError or TranscriptEmptyError, naming `field`, `sample_id` and `path`.
    """
    check_user_text(text, tokenizer=tokenizer, sample_id=sample_id, field=field, path=path, normalised=normalised)
    read = text if normalised is None else normalised
    if not has_speakable_content(read):
        how = f"normalises to {read!r}" if normalised is not None else "is"
        raise TranscriptEmptyError(f"transcript {text!r} {how}: nothing to say (no letter or digit)",
                                   sample_id=sample_id, field=field, path=path)
