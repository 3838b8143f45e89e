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


INLINE = textwrap.dedent('''
    """The custom pipeline seen through one inline training step (no backward/step functions)."""
    import torch
    from custom_impl import stages as _base
    from higgs_common.stages import REQUIRED_CONTRACT
    for _n in REQUIRED_CONTRACT + ("VERSION",):
        if _n not in ("backward", "step"):
            globals()[_n] = getattr(_base, _n)
    NAME = "custom-inline"

    def train_step(model, batch, optimizer, ctx, train):
        optimizer.zero_grad(set_to_none=True)
        lb = _base.loss(_base.forward(model, batch, ctx), batch, ctx)
        lb.total.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return lb
''')


def test_missing_contract_accepts_train_step(tmp_path):
    from harness.engine.fused import TrainStepStages
    from harness.engine.sides import load_side

    f = tmp_path / "inline_stages.py"
    f.write_text(INLINE)
    side = load_side(str(f), "custom")
    assert isinstance(side.module, TrainStepStages) and side.name == "custom-inline"


def test_train_step_derives_backward_and_step(ctx, records, tmp_path):
    """The derived backward returns the gradients before clipping (the loop clips them); the derived
    step applies the gradients it is given through the loop's own clip and optimizer step."""
    import importlib.util

    import torch

    from custom_impl import stages as base
    from harness.engine.fused import with_derived_stages

    f = tmp_path / "inline_stages.py"
    f.write_text(INLINE)
    spec = importlib.util.spec_from_file_location("inline_stages", f)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    view = with_derived_stages(mod)
    train = base.DEFAULT_TRAIN.replace(lora_dropout=0.0, max_grad_norm=1e-3, warmup_steps=0)   # clipping bites
    batch = base.collate(base.dataset(base.write_native(records[:2], tmp_path / "n"), ctx), ctx)
    model = base.build_model(ctx, train)
    with torch.no_grad():                                  # LoRA B non-zero, so every adapter gets a gradient
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.02)
    want = base.backward(base.loss(base.forward(model, batch, ctx), batch, ctx), model)
    model.zero_grad(set_to_none=True)
    got = view.backward(view.loss(view.forward(model, batch, ctx), batch, ctx), model)
    assert set(got) == set(want)
    for n in want:
        torch.testing.assert_close(got[n], want[n])
    # step: the same given gradients through the base step and through the loop
    opt_a, _ = base.make_optimizer(model, train)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = None if want.get(n) is None else want[n].clone()
    after_a = base.step(model, opt_a, ctx, train)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(before[n])
    opt_b, _ = base.make_optimizer(model, train)
    for n, p in model.named_parameters():
        p.grad = None if want.get(n) is None else want[n].clone()
    after_b = view.step(model, opt_b, ctx, train)
    assert set(after_a) == set(after_b)
    for n in after_a:
        torch.testing.assert_close(after_b[n], after_a[n])
    assert any(not torch.equal(after_b[n], before[n]) for n in after_b)


@pytest.mark.slow
def test_inline_train_step_adapter_compares_clean_through_step(tmp_path):
    from harness import compare

    f = tmp_path / "inline_stages.py"
    f.write_text(INLINE)
    for stage in ("backward", "step"):
        report = compare(reference="custom_impl.stages", custom=str(f), stage=stage, samples=2, dataset_samples=2,
                         ddp_world_size=0)
        assert report.verdict == "pass", [(f.stage, f.field, f.summary()) for s in report.stages for f in s.fields
                                          if f.unexpected]
    forgot_clip = f.with_name("inline_no_clip.py")
    forgot_clip.write_text(INLINE.replace("torch.nn.utils.clip_grad_norm_(", "(lambda *a: None)("))
    report = compare(reference="custom_impl.stages", custom=str(forgot_clip), stage="step", samples=2,
                     dataset_samples=2, ddp_world_size=0)
    assert report.first_divergence()["stage"] == "step" and "clipping" in report.first_divergence()["cause"]["mechanism"]
