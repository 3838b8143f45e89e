"""The audit as a gate before training: warnings printed once, errors stop the run as bad input.

Used by both training CLIs and `harness.compare` (pipelines never import the harness, so the gate
lives here).  Output on stderr: one summary line, then one line per finding (`Finding.line`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Optional, TextIO

from higgs_common.audit.findings import AuditReport
from higgs_common.audit.runner import is_dataset_check, run_audit
from higgs_common.audit.sources import DataFormatError
from higgs_common.stages import SampleError


class DataAuditError(SampleError):
    """The data audit found errors; the message counts them and names the first one's check and message."""


def audit_before_training(data: str | Path, *, prog: str, tokenizer: Optional[Any] = None,
                          options: Mapping[str, Any] | None = None, min_samples: Optional[int] = None,
                          stream: TextIO | None = None, quiet: bool = False) -> Optional[AuditReport]:
    """Run the audit on `data`; print the summary line and every finding to `stream` (stderr)
    unless `quiet` (other ranks of a torchrun job) or there is none; raise DataAuditError on errors
    (sample, field and file of the first error, so `train_cli.bad_input_line` names them).

    What the caller's loader and dataset reject themselves (`runner.is_dataset_check`) is left to
    them, so they report it in their own words (their field names, their native file), and so is
    every other finding about the samples they reject.  Returns None, running nothing, when
    `data` is in none of the audit's formats (the caller's loader then reports the path).
    """
    try:
        report = run_audit(data, tokenizer=tokenizer, options=options, min_samples=min_samples)
    except DataFormatError:
        return None
    rejected = {f.sample_id for f in report.findings if is_dataset_check(f.check) and f.level == "error"}
    report.findings = [f for f in report.findings if not is_dataset_check(f.check)
                       and f.sample_id not in rejected and not rejected.intersection(f.related)]
    stream = stream if stream is not None else sys.stderr
    if report.findings and not quiet:
        print(f"{prog}: {report.summary()}", file=stream)
        for f in report.findings:
            print(f"  {f.line()}", file=stream)
        stream.flush()
    errors = report.errors()
    if errors:
        first = errors[0]
        more = f" (+{len(errors) - 1} more error(s) listed above)" if len(errors) > 1 else ""
        raise DataAuditError(f"data audit: {first.check}: {first.message}{more}", sample_id=first.sample_id,
                             field=first.field, path=first.path)
    return report
