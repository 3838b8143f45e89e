"""Data audit: every check the datasets run plus data-quality checks, each finding naming file, sample and field.

One module per check kind (strict UTF-8 decoding is `higgs_common.text_encoding`): `sources` (read any of the three data
formats without stopping at the first problem), `text_checks` (invisible characters in any text
field, transcript checks), `audio_checks` (range, clipping, loudness, speech presence, `load_audio`),
`rates` (characters per second, median/MAD), `consistency` (records that contradict each other).
`runner.run_audit` runs them all; `gate.audit_before_training` is what the training CLIs and the
harness call.  The command line is ``higgs-diff audit`` (`harness.audit`).
"""

from higgs_common.audit.findings import ERROR, WARNING, AuditReport, ClipStats, Finding
from higgs_common.audit.gate import DataAuditError, audit_before_training
from higgs_common.audit.runner import run_audit

__all__ = ["ERROR", "WARNING", "AuditReport", "ClipStats", "Finding", "DataAuditError", "audit_before_training",
           "run_audit"]
