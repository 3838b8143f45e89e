"""Optional outputs are optional: a side that leaves them None gets "not compared" (with the reason),
never a divergence; check_adapter says what each omission costs."""

from __future__ import annotations

import textwrap

import pytest

from higgs_common.stages import OPTIONAL_OUTPUTS

OMITTING = textwrap.dedent('''
    """The reference pipeline, providing only what the contract requires of forward and loss."""
    import dataclasses
    from reference_impl import stages as _base
    from higgs_common.stages import REQUIRED_CONTRACT, LossBreakdown
    for _n in REQUIRED_CONTRACT + ("VERSION",):
        globals()[_n] = getattr(_base, _n)
    NAME = "reference-minimal"

    def forward(model, batch, ctx):
        return dataclasses.replace(_base.forward(model, batch, ctx), expanded_input_ids=None)

    def loss(outputs, batch, ctx):
        full = _base.loss(outputs, batch, ctx)
        return LossBreakdown(total=full.total, text=None, audio=None, per_codebook=None, text_supervised_tokens=None,
                             audio_supervised_tokens=None, has_target_audio=full.has_target_audio)
''')


@pytest.fixture
def omitting_adapter(tmp_path):
    f = tmp_path / "minimal_stages.py"
    f.write_text(OMITTING)
    return str(f)


def test_costs_listed_for_every_omission():
    import torch

    from harness.adapters.conformance import optional_output_costs
    from higgs_common.stages import ForwardOutputs, LossBreakdown

    out = ForwardOutputs(logits=torch.zeros(1, 2, 3), audio_logits=None, expanded_labels=None, expanded_input_ids=None)
    lb = LossBreakdown(torch.tensor(0.0), None, None, None, None, None, True)
    text = optional_output_costs(out, lb)
    for stage, fields in OPTIONAL_OUTPUTS.items():
        for name, cost in fields.items():
            assert name in text and cost in text
    assert optional_output_costs(out, lb).startswith(f"{sum(len(v) for v in OPTIONAL_OUTPUTS.values())} optional")


@pytest.mark.slow
def test_omitted_outputs_are_not_compared_never_diverged(omitting_adapter):
    from harness import compare

    report = compare(reference=omitting_adapter, stage="loss", samples=2, dataset_samples=2)
    loss = next(s for s in report.stages if s.stage == "loss")
    assert report.verdict == "pass", [(f.stage, f.field, f.summary()) for s in report.stages for f in s.fields
                                      if f.unexpected]
    assert not [f for s in report.stages for f in s.fields if f.status == "missing"]
    skipped = {(r["stage"], r["field"]) for r in report.extras["not_compared"]}
    for field in ("audio_ce_common", "text_ce_common", "text", "audio", "per_codebook", "text_supervised_tokens",
                  "audio_supervised_tokens", "audio_token_ce@reference", "text_token_ce@reference",
                  "per_codebook@reference", "text@reference", "audio@reference"):
        assert ("loss", field) in skipped, field
    assert all("reference side does not provide" in r["reason"] for r in report.extras["not_compared"])
    assert "not compared" in (loss.note or "")
    compared = {f.field for f in loss.fields}
    assert "total" in compared and "total@reference" in compared and "per_codebook@custom" in compared
