"""A pytest helper: assert that two pipelines agree at a stage.

    from harness.testing import assert_pipelines_agree

    def test_my_pipeline_matches_the_reference():
        assert_pipelines_agree("reference_impl.stages", "mypkg/higgs_stages.py", stage="loss")

Expected (declared) differences do not fail it; the assertion message is the report's first
divergence: stage, field, sample, index, both values, the relation between them and the cause.
"""

from __future__ import annotations

from typing import Any

from harness.report.model import Report


class PipelinesDiverged(AssertionError):
    """Raised by `assert_pipelines_agree`; `.report` holds the full report."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


def describe_first_divergence(report: Report) -> str:
    fd = report.first_divergence()
    if fd is None:
        errored = next((s for s in report.ordered_stages() if s.status == "error"), None)
        return f"stage {errored.stage} failed: {errored.error}" if errored else "no unexpected divergence"
    lines = [f"first divergence at {fd['stage']}/{fd['field']}" + (f" (sample {fd['sample']})" if fd["sample"] else ""),
             f"  index {fd['index']}: reference {fd['reference']!r}, custom {fd['custom']!r}"]
    if fd.get("decoded"):
        lines.append(f"  where: {fd['decoded']}")
    if fd.get("relation"):
        lines.append(f"  relation: {fd['relation']}")
    if fd.get("cause"):
        lines.append(f"  cause: {fd['cause']['mechanism']}")
        if fd["cause"].get("location"):
            lines.append(f"  at: {fd['cause']['location']}")
    return "\n".join(lines)


def assert_pipelines_agree(reference: str | None = None, custom: str | None = None, *, stage: str = "all",
                           **compare_kwargs: Any) -> Report:
    """Run `harness.compare(reference, custom, stage=stage, **compare_kwargs)`; raise `PipelinesDiverged`
    (an AssertionError) unless the verdict is "pass".  Returns the report."""
    from harness.api import compare

    compare_kwargs.setdefault("ddp_world_size", 0)
    report = compare(reference, custom, stage=stage, **compare_kwargs)
    if report.verdict != "pass":
        raise PipelinesDiverged(f"pipelines diverge (verdict {report.verdict}):\n{describe_first_divergence(report)}",
                                report)
    return report
