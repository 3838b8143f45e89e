"""Degenerate pipeline output is a finding, never a harness traceback (hypothesis).

The custom side's output of one stage is replaced by a degenerate one: a field None (a model called
without labels), an empty tensor (no audio logits), NaN, a loss without a graph, gradients that are
None or empty.  Whatever the pipeline's own code then does with it is that side's finding; the
harness's own code (comparisons, oracles, relations, causes, symptoms, the report) must not raise:
a stage error whose innermost project frame is in `harness/` fails this test.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.compare import select_records
from harness.explain.causes import explain_fields
from harness.engine.runner import STAGES, Comparison, RunOptions
from harness.engine.symptoms import comparison_symptoms
from harness.report import Report

pytestmark = pytest.mark.property

FIELDS = {
    "forward": ("logits", "audio_logits", "expanded_labels", "expanded_input_ids"),
    "loss": ("total", "text", "audio", "per_codebook", "audio_token_ce", "text_token_ce"),
    "backward": ("grad",),
}
KINDS = ("none", "empty", "nan", "detached", "zeros")


def degenerate(t: Any, kind: str) -> Any:
    if kind == "none":
        return None
    if not isinstance(t, torch.Tensor):
        return t
    if kind == "empty":
        return t.new_zeros((0, *t.shape[1:])) if t.dim() else t.new_zeros((0,))
    if kind == "nan" and t.is_floating_point():
        return torch.full_like(t, float("nan"))
    if kind == "detached":
        return t.detach().clone()
    return torch.zeros_like(t)


@dataclasses.dataclass
class Degenerate:
    stage: str
    field: str
    kind: str
    calls: int = 0

    def __call__(self, stage: str, side: str, out: Any) -> Any:
        if stage != self.stage or side != "custom":
            return out
        self.calls += 1
        if stage == "backward":
            return {k: degenerate(v, self.kind) for k, v in out.items()}
        if self.field == "total" and self.kind == "none":
            return dataclasses.replace(out, total=torch.zeros(()))       # LossBreakdown.total is required
        return dataclasses.replace(out, **{self.field: degenerate(getattr(out, self.field), self.kind)})


@st.composite
def degenerations(draw):
    stage = draw(st.sampled_from(sorted(FIELDS)))
    return Degenerate(stage, draw(st.sampled_from(FIELDS[stage])), draw(st.sampled_from(KINDS)))


@pytest.fixture(scope="module")
def one_record(records):
    return select_records(records, 1)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(d=degenerations())
def test_degenerate_stage_output_never_raises_in_the_harness(ctx, one_record, tmp_path_factory, d):
    upto = STAGES[: STAGES.index(d.stage) + 2]          # the degenerate stage and the one that consumes it
    comparison = Comparison(one_record, ctx, [], tmp_path_factory.mktemp("degenerate"),
                            RunOptions(stages=upto, ddp_world_size=0, perturb=d))
    results = comparison.run()
    explain_fields(results, comparison.evidence, comparison.extras)
    report = Report(run_name="prop-degenerate", mode="isolated", stages_requested=list(upto), stages=results)
    report.symptoms = comparison_symptoms(comparison)
    assert d.calls >= 1
    ours = [r for r in results if r.status == "error" and r.note and "harness's own code" in r.note]
    assert not ours, f"{d}: {ours[0].stage}: {ours[0].error} ({ours[0].note})"
    report.to_json()
    report.to_markdown()
    report.to_html()
