"""Check canonical records before a comparison, and with `--skip-bad-samples` leave bad ones out.

Why here and not only inside the pipelines: both pipelines see *copies* of the manifest's files
in their native formats (a temporary folder), so an error raised inside them names the copy.
Checking each record first, with the same `higgs_common.audio_io.load_audio` both pipelines use,
names the file the user actually has to fix: the manifest's path, the sample id and the manifest
field (`audio`, `ref_audio`, `text`, `ref_text`, `scene`).  Checked: transcripts (blank,
reserved special tokens, nothing to say in the reference's normal form), audio (`load_audio` with
the codec's minimum length and the speech floor of `ctx.options`) and the codec itself (each clip
is encoded through the shared code cache, so a codec failure names the manifest's file; the
pipelines then hit the cache).  With skipping on, each record is then also run through both
pipelines' own `dataset` stage alone, so a sample only one side rejects is skipped too (the
comparison needs the same samples on both sides).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Sequence

from higgs_common.audio_io import DEFAULT_MAX_AUDIO_SECONDS, audio_check_kwargs, load_audio
from higgs_common.manifest import CanonicalRecord
from higgs_common.skipping import SkipLog
from higgs_common.stages import SampleError, StageContext
from higgs_common.transcripts import check_transcript, check_user_text


def check_record(record: CanonicalRecord, ctx: StageContext, *, manifest: Path | None = None,
                 max_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS, sides: dict | None = None) -> None:
    """Raise a SampleError (naming manifest file or wav, sample id, field) for a bad record.

    Transcripts are checked in every side's own normal form (its declared `normalize_transcript` /
    `normalize_reference_transcript`): empty after either side's normalisation is bad input.
    """
    from harness.engine.sides import load_sides

    sides = sides or load_sides()
    for fld in ("text", "ref_text"):
        text = getattr(record, fld)
        if not text.strip():
            raise SampleError(f"{'reference ' if fld == 'ref_text' else ''}transcript is empty or whitespace-only",
                              sample_id=record.id, field=fld, path=manifest)
        for side in sides.values():
            conv = side.conventions
            norm = conv.normalize_transcript if fld == "text" else conv.normalize_reference_transcript
            check_transcript(text, tokenizer=ctx.text_tokenizer, normalised=norm(text),
                             sample_id=record.id, field=fld, path=manifest)
    check_user_text(record.scene, tokenizer=ctx.text_tokenizer, sample_id=record.id, field="scene", path=manifest)
    checks = audio_check_kwargs({**ctx.options, "max_audio_seconds": max_seconds},
                                min_samples=ctx.code_cache.min_samples)
    for fld in ("audio", "ref_audio"):
        path = getattr(record, fld)
        load_audio(path, sample_id=record.id, field=fld, target_sr=ctx.code_cache.sample_rate, **checks)
        ctx.code_cache.codes(path, sample_id=record.id, field=fld)   # a codec failure names this file


def screen_records(records: Sequence[CanonicalRecord], ctx: StageContext, *, skip: bool, skip_log: SkipLog,
                   manifest: Path | None = None, max_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS,
                   sides: dict | None = None) -> list[CanonicalRecord]:
    """The records that pass `check_record` (and, when skipping, both pipelines' dataset stage).

    Without `skip` the first bad record raises; with it, bad records are recorded in `skip_log`.
    """
    from harness.engine.sides import load_sides

    sides = sides or load_sides()

    good: list[CanonicalRecord] = []
    with tempfile.TemporaryDirectory(prefix="higgs-diff-screen-") as work:
        for rec in records:
            try:
                check_record(rec, ctx, manifest=manifest, max_seconds=max_seconds, sides=sides)
                if skip:
                    for name in ("reference", "custom"):
                        mod = sides[name].module
                        side_ctx = dataclasses.replace(ctx, faults=frozenset())
                        native = mod.write_native([rec], Path(work) / rec.id / name)
                        mod.dataset(native, side_ctx)
            except SampleError as exc:
                if not skip:
                    raise
                skip_log.add(exc)
                continue
            good.append(rec)
    return good
