"""Transcript normalisation exactly as train-higgs-audio's dataset applies it to target transcripts.

Why a module of its own: the harness diffs the *text* each pipeline tokenises, and the reference's
rules contain surprises worth pinning one by one.  The rules, applied in this order (the order
matters, e.g. "（" first becomes "(" and is then dropped):

1. CJK (full-width) punctuation -> ASCII, by sequential `str.replace` over `CJK_PUNCTUATION`
   (note "，" -> ", " with a trailing space, "——" -> "-", "…" -> "...").
2. Parentheses are replaced by spaces: the brackets go, their content stays.
3. "°F" -> " degrees Fahrenheit", "°C" -> " degrees Celsius".
4. "[laugh]" -> "<SE>[Laughter]</SE>", "[cough]" -> "<SE>[Cough]</SE>".
5. Per line, runs of whitespace collapse to one space; blank lines are dropped; lines are
   re-joined with "\\n".
6. A final "." is added unless the text ends with one of `NO_PERIOD_AFTER`.
7. Leading/trailing whitespace is stripped.

Quirks kept on purpose (each pinned in tests/reference_impl/test_normalize.py):

- QUIRK end-character set: the reference tests `any(text.endswith(c) for c in
  ".!?,\\";'</SE_e></SE>")`, i.e. it iterates over the *characters* of that string.  So a
  transcript ending in any of `. ! ? , " ; ' < / S E _ e >` gets no final period: "I like the
  one I chose" stays without a period because it ends in "e".
- QUIRK table source: the DDP script's table (used here) maps curly quotes “ ” ‘ ’ to ASCII and
  "——" to "-".  The single-process `trainer/trainer.py` has the same table mangled by lost
  curly quotes: it maps the literal text `: '"', ` to `"`, maps "'" to itself, and "--" (ASCII)
  to "-".  `SINGLE_SCRIPT_CJK_PUNCTUATION` records that variant for reference.
- QUIRK reference transcript: only the *target* transcript is normalised; the reference
  pipeline passes `ref_transcript` through untouched (see reference_impl.dataset).
"""

from __future__ import annotations

# Ordered: str.replace is applied entry by entry, exactly as the reference's dict iteration does.
CJK_PUNCTUATION: tuple[tuple[str, str], ...] = (
    ("，", ", "), ("。", "."), ("：", ":"), ("；", ";"), ("？", "?"), ("！", "!"),
    ("（", "("), ("）", ")"), ("【", "["), ("】", "]"), ("《", "<"), ("》", ">"),
    ("“", '"'), ("”", '"'), ("‘", "'"), ("’", "'"), ("、", ","), ("——", "-"),
    ("…", "..."), ("·", "."), ("「", '"'), ("」", '"'), ("『", '"'), ("』", '"'),
)

# What trainer/trainer.py's table actually contains after Python parses it (documentation only).
SINGLE_SCRIPT_CJK_PUNCTUATION: tuple[tuple[str, str], ...] = (
    CJK_PUNCTUATION[:12]
    + ((": '\"', ", '"'), ("'", "'"), ("'", "'"), ("、", ","), ("--", "-"))
    + CJK_PUNCTUATION[18:]
)

TEMPERATURE_UNITS: tuple[tuple[str, str], ...] = (
    ("°F", " degrees Fahrenheit"),
    ("°C", " degrees Celsius"),
)

SOUND_EVENT_TAGS: tuple[tuple[str, str], ...] = (
    ("[laugh]", "<SE>[Laughter]</SE>"),
    ("[cough]", "<SE>[Cough]</SE>"),
)

# The reference iterates over the characters of this string (QUIRK end-character set).
NO_PERIOD_AFTER = ".!?,\";'</SE_e></SE>"


def normalize_cjk_punctuation(text: str, table: tuple[tuple[str, str], ...] = CJK_PUNCTUATION) -> str:
    """Replace full-width punctuation by ASCII, entry by entry in table order."""
    for src, dst in table:
        text = text.replace(src, dst)
    return text


def normalize_transcript(text: str) -> str:
    """Normalise a target transcript the way train-higgs-audio does (rules in the module docstring)."""
    text = normalize_cjk_punctuation(text)
    text = text.replace("(", " ").replace(")", " ")
    for src, dst in TEMPERATURE_UNITS:
        text = text.replace(src, dst)
    for src, dst in SOUND_EVENT_TAGS:
        text = text.replace(src, dst)
    lines = [" ".join(line.split()) for line in text.split("\n") if line.strip()]
    text = "\n".join(lines)
    if text and not any(text.endswith(ch) for ch in NO_PERIOD_AFTER):
        text += "."
    return text.strip()
