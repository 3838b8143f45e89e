"""The step stage's evidence that a side stepped its LR scheduler before its optimizer."""

from __future__ import annotations

import torch

from harness.engine.stage_step import _schedule_order


def _upd(scale: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a": scale * torch.randn(3, 4, generator=g), "b": scale * torch.randn(5, generator=g)}


def test_update_at_the_next_learning_rate_is_recognised():
    want, got = _upd(1e-3), _upd(2e-3)                      # AdamW's update is linear in the lr
    hyp = _schedule_order(got, want, ["a", "b"], lr_now=1e-4, lr_next=2e-4, k=3)
    assert hyp == {"step": 3, "lr_declared": 1e-4, "lr_next": 2e-4}


def test_a_step_during_a_zero_learning_rate_warmup_start_is_recognised():
    want = {k: torch.zeros_like(v) for k, v in _upd(1.0).items()}
    assert _schedule_order(_upd(1e-5), want, ["a", "b"], lr_now=0.0, lr_next=1e-5, k=1) is not None


def test_other_differences_are_not_called_scheduler_order():
    want = _upd(1e-3)
    assert _schedule_order(want, want, ["a", "b"], lr_now=1e-4, lr_next=2e-4, k=1) is None          # equal
    assert _schedule_order(_upd(3e-3), want, ["a", "b"], lr_now=1e-4, lr_next=2e-4, k=1) is None     # 3x, not 2x
    assert _schedule_order(_upd(2e-3), want, ["a", "b"], lr_now=1e-4, lr_next=1e-4, k=1) is None     # constant lr


def test_make_optimizer_gets_the_adapters_own_model(ctx):
    """A make_optimizer that reads model.config (a Trainer subclass does) runs in the native check:
    every model handed to it is the adapter's own build."""
    import types

    import custom_impl.stages as base
    from harness.engine.stage_step import native_run

    seen = []

    def make_optimizer(model, train):
        seen.append(model.config.audio_num_codebooks)        # a synthetic stand-in has no .config
        return base.make_optimizer(model, train)

    adapter = types.SimpleNamespace(build_model=base.build_model, step=base.step, make_optimizer=make_optimizer)
    train = base.DEFAULT_TRAIN.replace(warmup_steps=2, max_steps=6)
    decl = base.effective_config(ctx, train)
    run = native_run(adapter, ctx, train, decl, 1, train)
    assert len(seen) == 2 and len(run["lr_curve"]) == 6 and run["lr_curve"][0] == 0.0
