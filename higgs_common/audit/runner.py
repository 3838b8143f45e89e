"""`run_audit`: read DATA in any format and run every check on it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Optional

from higgs_common.audit import audio_checks, consistency, rates, sources, text_checks
from higgs_common.audit.findings import ERROR, AuditReport, Finding
from higgs_common.stages import SampleError

# Findings the pipelines' loaders and datasets raise themselves: these loader checks, and every check
# named "dataset.<error class>" (`load_audio`, the transcript checks).
LOADER_CHECKS = frozenset({"record.field", "file.json", "record.duplicate_id"})


def is_dataset_check(check: str) -> bool:
    """True for a check the pipelines' own loaders and datasets run (they report it in their own words)."""
    return check in LOADER_CHECKS or check.startswith("dataset.")


def run_audit(data: str | Path, *, tokenizer: Optional[Any] = None, options: Mapping[str, Any] | None = None,
              min_samples: Optional[int] = None, model_config: Any = None,
              model_path: str | Path | None = None) -> AuditReport:
    """Every check on DATA (a canonical manifest, a reference folder or a ChatML JSON; `sources`).

    `tokenizer` (optional) enables the reserved-token / empty-transcript checks; with `model_config`
    and `model_path` too, the tokenizer-vs-embedding check (`higgs_common.vocab`).  `options` as for
    `higgs_common.audio_io.audio_check_kwargs`; `min_samples` the codec's minimum clip length.
    Raises `sources.DataFormatError` when
    DATA is none of the formats; everything else becomes a finding.
    """
    started = time.perf_counter()
    loaded = sources.load(Path(data))
    report = AuditReport(data=str(data), data_format=loaded.data_format, records=len(loaded.records))
    report.findings.extend(loaded.findings)
    if tokenizer is not None and model_config is not None:
        from higgs_common.vocab import check_vocabulary_fits

        try:
            where = model_path or "?"
            check_vocabulary_fits(tokenizer, model_config, tokenizer_path=where, model_path=where)
        except SampleError as exc:
            report.add(Finding(ERROR, "model.vocabulary", str(exc).rsplit(" [sample=", 1)[0], exc.path,
                               exc.sample_id, exc.field))
    records = loaded.records
    report.findings.extend(text_checks.check_text_fields(records))
    report.findings.extend(text_checks.check_transcripts(records, tokenizer))
    report.findings.extend(audio_checks.check_audio(records, options=options or {}, min_samples=min_samples,
                                                    clips=report.clips))
    report.findings.extend(rates.check_rates(records, report.clips, report.chars_per_second))
    report.findings.extend(consistency.check_consistency(records, report.clips))
    report.seconds = time.perf_counter() - started
    return report
