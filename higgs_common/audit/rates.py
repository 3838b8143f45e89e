"""Characters per second of each (clip, transcript) pair against the data set's own distribution.

A transcript whose length does not fit its clip (a wrong file paired, a truncated transcript, a
clip cut short) trains the model on misaligned speech.  Speaking rates differ by language and
speaker, so the yardstick is the data set itself, measured robustly: the median and the median
absolute deviation (MAD) of characters per second over all pairs, and the modified z-score
0.6745 * (x - median) / MAD of each pair (Iglewicz & Hoaglin 1993, "How to Detect and Handle
Outliers"); |z| > `Z_WARNING` (3.5, their recommended cut) is a warning.  The MAD is floored at
`MIN_RELATIVE_MAD` (5 %) of the median, so a very uniform (e.g. synthesised) set does not flag
ordinary rate differences.  Fewer than `MIN_PAIRS` pairs give no verdict.

Characters are a spoken-length estimate of the stripped transcript (`spoken_chars`): its letters
(Unicode L*), `LETTERS_PER_DIGIT` per digit (a digit is read as a number word: "zero".."nine"
average 4 letters, "twenty five" is 10 letters for 2 digits) and the letters of the word a
symbol is read as (`SYMBOL_WORDS`: "25°C" is spoken "twenty five degrees C").  Punctuation and
spaces count nothing.
"""

from __future__ import annotations

import unicodedata
from typing import Iterable

import numpy as np

from higgs_common.audit.findings import WARNING, ClipStats, Finding
from higgs_common.audit.sources import AuditRecord

Z_WARNING = 3.5
MIN_PAIRS = 5
MIN_RELATIVE_MAD = 0.05
LETTERS_PER_DIGIT = 4
SYMBOL_WORDS = {"°": "degrees", "%": "percent", "&": "and", "$": "dollars", "€": "euros", "£": "pounds",
                "+": "plus", "=": "equals", "@": "at", "#": "number"}
_MAD_TO_SIGMA = 0.6745


def spoken_chars(text: str) -> int:
    """Spoken-length estimate of `text` in letters (module doc)."""
    total = 0
    for ch in text:
        cat = unicodedata.category(ch)
        if cat[0] == "L":
            total += 1
        elif cat[0] == "N":
            total += LETTERS_PER_DIGIT
        elif ch in SYMBOL_WORDS:
            total += len(SYMBOL_WORDS[ch])
    return total


def check_rates(records: Iterable[AuditRecord], clips: dict[str, ClipStats],
                summary: dict[str, float]) -> list[Finding]:
    """Warnings for pairs whose chars/s is an outlier (module doc); fills `summary` with median, mad, pairs."""
    pairs: dict[tuple[str, str], tuple[float, AuditRecord, str, str]] = {}
    for rec in records:
        for afield, tfield in rec.pairs:
            clip = clips.get(str(rec.audio[afield]))
            tf = rec.text(tfield)
            if clip is None or tf is None or clip.seconds <= 0 or spoken_chars(tf.text) == 0:
                continue     # nothing to say: the transcript check's business, not a rate
            key = (clip.path, tf.text.strip())
            pairs.setdefault(key, (spoken_chars(tf.text) / clip.seconds, rec, tfield, str(tf.path)))
    rates = np.array([p[0] for p in pairs.values()], dtype=np.float64)
    if rates.size < MIN_PAIRS:
        return []
    median = float(np.median(rates))
    mad = float(np.median(np.abs(rates - median)))
    summary.update(median=round(median, 3), mad=round(mad, 3), pairs=int(rates.size))
    mad = max(mad, MIN_RELATIVE_MAD * median)
    if mad == 0.0:
        return []
    out = []
    for (clip_path, text), (rate, rec, tfield, tpath) in pairs.items():
        z = _MAD_TO_SIGMA * (rate - median) / mad
        if abs(z) > Z_WARNING:
            how = "too many" if z > 0 else "too few"
            out.append(Finding(WARNING, "text.chars_per_second",
                               f"{rate:.1f} spoken letters per second of {clip_path} ({how} for the clip: data set "
                               f"median {median:.1f}, MAD {mad:.2f}, robust z {z:+.1f}, limit +-{Z_WARNING})",
                               tpath, rec.sample_id, tfield, value=rate, clip=clip_path))
    return out
