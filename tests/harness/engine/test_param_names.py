"""Parameter names are matched canonically across sides (a wrapper that adds `model.`), and LoRA
targets as peft matches them (`self_attn.q_proj` wraps `...layers.0.self_attn.q_proj`)."""

from __future__ import annotations

import textwrap

import pytest

WRAPPED = textwrap.dedent('''
    """The custom pipeline behind a wrapper module (parameters named `model.<...>`), with its LoRA
    targets written as dotted suffixes."""
    import torch
    from custom_impl import stages as _base
    from higgs_common.stages import REQUIRED_CONTRACT
    for _n in REQUIRED_CONTRACT + ("VERSION", "FAULTS"):
        globals()[_n] = getattr(_base, _n)
    NAME = "custom-wrapped"
    DEFAULT_TRAIN = _base.DEFAULT_TRAIN.replace(lora_target_modules=tuple(
        ("self_attn." if t.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp.") + t
        for t in _base.DEFAULT_TRAIN.lora_target_modules))


    class Holder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner


    def _trainable(model):
        return {n: p for n, p in model.named_parameters() if p.requires_grad}


    def build_model(ctx, train):
        return Holder(_base.build_model(ctx, train))


    def forward(model, batch, ctx):
        return _base.forward(model.model, batch, ctx)


    def backward(loss, model):
        loss.total.backward()
        return {n: (p.grad.detach().clone() if p.grad is not None else None) for n, p in _trainable(model).items()}


    def make_optimizer(model, train):
        return _base.make_optimizer(model.model, train)


    def step(model, optimizer, ctx, train, scheduler=None):
        _base.step(model.model, optimizer, ctx, train, scheduler=scheduler)
        return {n: p.detach().clone() for n, p in _trainable(model).items()}
''')


def test_wiring_probe_matches_targets_as_peft_does(ctx):
    import custom_impl.stages as base
    from harness.engine import wiring

    recipe = base.DEFAULT_TRAIN.replace(lora_target_modules=("self_attn.q_proj", "mlp.down_proj"))
    info = wiring.probe(base, wiring.probe_context(ctx), recipe)
    assert info["built"]["targets"] == info["requested"]["targets"] == ["mlp.down_proj", "self_attn.q_proj"]


@pytest.mark.slow
def test_wrapper_prefix_and_suffix_targets_give_no_false_divergence(tmp_path):
    from harness import compare

    f = tmp_path / "wrapped_stages.py"
    f.write_text(WRAPPED)
    report = compare(custom=str(f), stage="all", samples=2, dataset_samples=2, ddp_world_size=0, optimizer_steps=1)
    unexpected = [(f.stage, f.field, f.summary()) for s in report.stages for f in s.fields if f.unexpected]
    assert report.verdict == "pass", unexpected
    fields = {f.field for s in report.stages for f in s.fields}
    assert any(n.startswith("grad/") for n in fields) and "update/step1" in fields
    assert "lora_built.targets@custom" in fields
