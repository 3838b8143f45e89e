"""An adapter around fused training code (`forward_and_loss`, no `forward`/`loss`) compares like one
with separate stages: the forward outputs come from the model's forward hook, the loss from the call."""

from __future__ import annotations

import textwrap

import pytest

FUSED = textwrap.dedent('''
    """The reference pipeline seen through one fused call that returns only the loss."""
    from reference_impl import stages as _base
    from higgs_common.stages import REQUIRED_CONTRACT
    for _n in REQUIRED_CONTRACT + ("VERSION",):
        if _n not in ("forward", "loss"):
            globals()[_n] = getattr(_base, _n)
    NAME = "reference-fused"

    def forward_and_loss(model, batch, ctx):
        return None, _base.loss(_base.forward(model, batch, ctx), batch, ctx)
''')


def test_missing_contract_accepts_forward_and_loss(tmp_path):
    from harness.engine.fused import FusedStages
    from harness.engine.sides import load_side

    f = tmp_path / "fused_stages.py"
    f.write_text(FUSED)
    side = load_side(str(f), "reference")
    assert isinstance(side.module, FusedStages) and side.name == "reference-fused"


@pytest.mark.slow
def test_fused_adapter_compares_clean_through_backward(tmp_path):
    from harness import compare

    f = tmp_path / "fused_stages.py"
    f.write_text(FUSED)
    report = compare(reference=str(f), stage="backward", samples=2, dataset_samples=2, ddp_world_size=0)
    assert report.verdict == "pass", [(f.stage, f.field, f.summary()) for s in report.stages for f in s.fields
                                      if f.unexpected]
    forward = compare(reference=str(f), stage="forward", samples=2, dataset_samples=2, ddp_world_size=0)
    fields = {f.field: f for s in forward.stages for f in s.fields}
    assert all(fields[k].status == "equal" for k in ("logits", "audio_logits", "expanded_labels")), fields
