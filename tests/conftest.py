"""Shared fixtures: the tiny offline assets, a StageContext over them, and the sample manifest.

Hypothesis profiles: ``ci`` (default; derandomized, 25 examples) and ``thorough`` (500 examples),
chosen with the environment variable HYPOTHESIS_PROFILE.

Every report.json the suite writes must follow the shipped schema
(`harness/schemas/report.schema.json`): see `_reports_follow_schema`.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25, print_blob=True)
settings.register_profile("thorough", max_examples=500, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def assets():
    """The default tiny checkpoint (built into <repo>/.cache/assets on first use)."""
    from higgs_common.assets import ensure_default_assets

    return ensure_default_assets()


@pytest.fixture(scope="session")
def ctx(assets):
    """A CPU StageContext over the default tiny assets and the default code cache."""
    from higgs_common.context import build_context

    return build_context(assets.model, assets.audio_tokenizer)


@pytest.fixture(scope="session")
def records():
    """The canonical sample records of data/manifest.jsonl (skipped when data/ is absent)."""
    from higgs_common import DEFAULT_MANIFEST
    from higgs_common.manifest import load_manifest

    if not DEFAULT_MANIFEST.is_file():
        pytest.skip(f"{DEFAULT_MANIFEST} is missing")
    return load_manifest(DEFAULT_MANIFEST)


@pytest.fixture(scope="session", autouse=True)
def _reports_follow_schema(tmp_path_factory):
    """Validate every report.json the test suite writes against harness/schemas/report.schema.json.

    Reports written in-process go through `harness.report.render.write_report`, which serialises with
    the module-level `report_json_text`: wrapping that name validates each report as it is written, so
    the test that wrote an invalid one fails.  Reports written by subprocesses
    (`python -m harness.compare`, `higgs-diff compare`) into pytest's temporary folders are validated
    when the session ends.
    """
    from harness.report import render
    from harness.schemas import ReportSchemaError, validate_report

    original = render.report_json_text

    def report_json_text_validated(report):
        text = original(report)
        validate_report(json.loads(text))
        return text

    render.report_json_text = report_json_text_validated
    try:
        yield
    finally:
        render.report_json_text = original
    invalid = []
    for path in sorted(tmp_path_factory.getbasetemp().rglob("report.json")):
        try:
            validate_report(json.loads(path.read_text(encoding="utf-8")))
        except ReportSchemaError as exc:
            invalid.append(f"{path}: {exc}")
    assert not invalid, "report.json files that do not follow the schema:\n" + "\n".join(invalid)


@pytest.fixture(scope="session")
def fault_report():
    """fault_report(name) -> the `harness.compare` Report of the README's fault run (2 samples; the DDP
    check on 2 ranks for the DDP faults), made once per session: the fault-table and verdict-panel tests
    read the same run."""
    cache: dict[str, object] = {}

    def get(fault: str):
        if fault not in cache:
            from harness.api import compare

            ddp = 2 if fault in ("ddp-unwrapped-forward", "inverted-no-sync") else 0
            cache[fault] = compare(fault=[fault], samples=2, ddp_world_size=ddp,
                                   run_name=f"all-isolated-{fault}-seed0")
        return cache[fault]
    return get
