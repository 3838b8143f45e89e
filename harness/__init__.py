"""higgs-diff: differential testing of Higgs Audio v2 training pipelines.

Public API (everything else is internal and may move):

    from harness import compare                  # compare(reference=SPEC, custom=SPEC, stage=...) -> Report
    from harness.testing import assert_pipelines_agree
    from harness.report import Report

`harness.compare` is both the CLI module (`python -m harness.compare`, `compare.main(argv)`) and
callable (`compare(...)` is `harness.api.compare`).

Layout: `engine` (adapters, the stage runner, diffs, tolerances), `semantics` (declared conventions
-> expected differences, projections, the loss and schedule oracles), `explain` (relations and
causes), `report` (data model, JSON/Markdown/HTML, terminal), `bench` (benchmarks); the command-line
entry points are `harness.compare`, `harness.check_adapter` and `harness.bench`.
"""
