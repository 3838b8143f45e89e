"""Records of one data set that contradict each other.

* the same sample id twice (error): every tool keys samples, reports and caches by id.
* one clip (the same decoded samples, `ClipStats.sha256`, whatever its file name) claimed by two
  transcripts that differ (error): at most one can be right.  Transcripts are compared after
  collapsing whitespace and dropping invisible (Cc/Cf) characters, so a trailing CR or a BOM is
  reported by the text checks, not here; a transcript with no letter or digit claims nothing (the
  transcript check rejects it).
* the same clip as the training target of two different ids (warning): a duplicated sample.
* a record whose reference (voice prompt) clip is its own target clip (warning): the model can
  learn to copy the prompt instead of speaking the text.
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict

from higgs_common.audit.findings import ERROR, WARNING, ClipStats, Finding
from higgs_common.audit.sources import AuditRecord
from higgs_common.transcripts import has_speakable_content

# Which audio field is the training target / the voice prompt, per format.
TARGET_FIELDS = ("audio", "audio_file", "messages[2].content[0].audio_url")
PROMPT_FIELDS = ("ref_audio", "ref_audio_file", "messages[1].content[1].audio_url")


def _norm(text: str) -> str:
    visible = "".join(ch if unicodedata.category(ch) not in ("Cc", "Cf") else " " for ch in text)
    return " ".join(visible.split())


def check_consistency(records: list[AuditRecord], clips: dict[str, ClipStats]) -> list[Finding]:
    out: list[Finding] = []
    first_line: dict[str, AuditRecord] = {}
    for rec in records:
        prev = first_line.setdefault(rec.sample_id, rec)
        if prev is not rec:
            where = f" (line {rec.line}; first at line {prev.line})" if rec.line else ""
            out.append(Finding(ERROR, "record.duplicate_id", f"sample id {rec.sample_id!r} occurs twice{where}",
                               str(rec.path), rec.sample_id, "id"))

    # clip sha256 -> (normalised text, record, audio field, text field) of every transcript claim
    claims: dict[str, list[tuple[str, AuditRecord, str, str]]] = defaultdict(list)
    targets: dict[str, list[AuditRecord]] = defaultdict(list)
    for rec in records:
        for afield, tfield in rec.pairs:
            clip = clips.get(str(rec.audio[afield]))
            tf = rec.text(tfield)
            if clip is not None and tf is not None and has_speakable_content(tf.text):   # else: an empty transcript
                claims[clip.sha256].append((_norm(tf.text), rec, afield, tfield))
        for afield in TARGET_FIELDS:
            clip = clips.get(str(rec.audio.get(afield)))
            if clip is not None and rec not in targets[clip.sha256]:
                targets[clip.sha256].append(rec)
        target = next((clips.get(str(rec.audio[f])) for f in TARGET_FIELDS if f in rec.audio), None)
        prompt_field = next((f for f in PROMPT_FIELDS if f in rec.audio), None)
        prompt = clips.get(str(rec.audio[prompt_field])) if prompt_field else None
        if target is not None and prompt is not None and target.sha256 == prompt.sha256:
            out.append(Finding(WARNING, "record.prompt_is_target", "the reference (voice prompt) clip holds the same "
                               "samples as the target clip: the model can copy it", prompt.path, rec.sample_id,
                               prompt_field, clip=prompt.path))

    for sha, items in claims.items():
        texts = {}
        for text, rec, afield, tfield in items:
            texts.setdefault(text, (rec, afield, tfield))
        if len(texts) > 1:
            (t0, (r0, a0, f0)), *rest = texts.items()
            for t1, (r1, a1, f1) in rest:
                tf = r1.text(f1)
                out.append(Finding(ERROR, "record.conflicting_transcripts",
                                   f"clip {r1.audio[a1]} ({a1}) is transcribed {t1!r} here but {t0!r} in sample "
                                   f"{r0.sample_id!r} field {f0!r} ({r0.audio[a0]}, same decoded samples)",
                                   str(tf.path) if tf else str(r1.path), r1.sample_id, f1, clip=str(r1.audio[a1]),
                                   related=(r0.sample_id,)))
    for sha, recs in targets.items():
        ids = list(dict.fromkeys(r.sample_id for r in recs))
        if len(ids) > 1:
            for r in recs[1:]:
                if r.sample_id == recs[0].sample_id:
                    continue
                afield = next(f for f in TARGET_FIELDS if f in r.audio)
                out.append(Finding(WARNING, "record.duplicate_clip", f"target clip {r.audio[afield]} holds the same "
                                   f"samples as the target of sample {recs[0].sample_id!r}: a duplicated sample",
                                   str(r.path), r.sample_id, afield, clip=str(r.audio[afield]),
                                   related=(recs[0].sample_id,)))
    return out
