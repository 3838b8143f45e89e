"""Reports of a differential run: the data model (`model`), renderers (`render`: JSON, Markdown,
HTML), plots and the terminal summary.  The names most callers need are re-exported here."""

from harness.report.model import (CAUSE_KEYS, PIPELINE_ORDER, SCHEMA_VERSION, STAGE_STATUSES, VOLATILE_KEY, Diagnosis,
                                  Report, StageResult, cause_object, report_json_text, stage_status)
from harness.report.render import render_html, render_markdown, write_report

__all__ = ["CAUSE_KEYS", "PIPELINE_ORDER", "SCHEMA_VERSION", "STAGE_STATUSES", "VOLATILE_KEY", "Diagnosis", "Report",
           "StageResult", "cause_object",
           "report_json_text", "stage_status", "render_html", "render_markdown", "write_report"]
