"""JSON Schemas of the files higgs-diff writes, shipped inside the package.

`report.schema.json` (JSON Schema draft 2020-12) describes `report.json` of every
`schema_version` 2.x.y: it requires the stable core (schema_version, verdict, verdict_reason, first_divergence,
stages with their fields, config, volatile) and allows additional properties everywhere, so a
report that gained keys still validates.  See docs/report-schema.md for the
compatibility rule.

Validating needs the `jsonschema` package (a dev dependency, not a run-time one); loading the
schema does not::

    from harness.schemas import load_report_schema, validate_report
    validate_report(json.loads(Path("reports/x/report.json").read_text()))
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

REPORT_SCHEMA_FILE = "report.schema.json"


class ReportSchemaError(ValueError):
    """A report does not follow the report schema; the message names the key path and the rule."""


@lru_cache(maxsize=None)
def _schema_text(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def load_report_schema() -> dict[str, Any]:
    """The JSON Schema of report.json, as a fresh dict."""
    return json.loads(_schema_text(REPORT_SCHEMA_FILE))


@lru_cache(maxsize=1)
def _report_validator() -> Any:
    """A draft 2020-12 validator of the report schema (the schema itself checked once)."""
    try:
        import jsonschema
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("validating a report needs the jsonschema package "
                                  "(pip install jsonschema, or install higgs-diff[dev])") from exc
    schema = load_report_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    return validator_cls(schema)


def validate_report(obj: Any) -> None:
    """Raise `ReportSchemaError` if `obj`, a parsed report.json, does not follow the schema.

    The message names the offending key path (e.g. ``$.stages[0].status``) and what is wrong; the
    `jsonschema.ValidationError` is chained as its cause.  Needs `jsonschema` (a dev dependency).
    """
    validator = _report_validator()
    import jsonschema

    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is not None:
        raise ReportSchemaError(f"report does not follow {REPORT_SCHEMA_FILE} (schema_version "
                                f"{_version_of(obj)!r}) at {error.json_path}: {error.message}") from error


def _version_of(obj: Any) -> Any:
    return obj.get("schema_version") if isinstance(obj, dict) else None
