"""The text of `report.json` (a leaf module: the data model and the renderers both use it)."""

from __future__ import annotations

import json
from typing import Any


def report_json_text(report: Any) -> str:
    """`report.to_json()` as indented JSON with sorted keys and a final newline (byte-stable across runs
    apart from the report's `volatile` object).  `report`: a `harness.report.model.Report`."""
    return json.dumps(report.to_json(), sort_keys=True, indent=2) + "\n"
