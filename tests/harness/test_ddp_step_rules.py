"""The DDP step-stage rules of harness.engine.runner (issue 8), on crafted rank results (no processes).

Synchronised ranks: bit-identical to rank 0 after a step; vs one process, a few elements of a
tensor may move differently (AdamW's first step amplifies near-zero gradients) and are reported as
expected with the count; anything more, or ranks that differ from each other, is a divergence.
"""

from __future__ import annotations

import torch

from custom_impl.stages import DDPRankResult
from harness.engine.runner import DDP_STEP_AMPLIFIED_FRACTION, Comparison, RunOptions

N = 10_000


def _result(params: torch.Tensor, losses=(2.0, 1.9, 1.8)) -> DDPRankResult:
    return DDPRankResult(grads={}, params={"w": params.clone()}, losses=torch.tensor(losses, dtype=torch.float64))


def _step_fields(ctx, tmp_path, single: DDPRankResult, ranks: list[DDPRankResult]):
    comparison = Comparison([], ctx, [], tmp_path, RunOptions(ddp_world_size=2))
    comparison._ddp = (single, ranks)
    fields = comparison._ddp_step_fields()
    return {f.field: f for f in fields}, comparison.evidence["ddp"]


def test_a_few_amplified_elements_are_expected_and_counted(ctx, tmp_path):
    base = torch.linspace(-1e-3, 1e-3, N)
    moved = base.clone()
    few = int(DDP_STEP_AMPLIFIED_FRACTION * N)              # at the limit
    moved[:few] = -moved[:few]                              # sign flips: differences up to 2 * lr
    fields, ev = _step_fields(ctx, tmp_path, _result(base), [_result(moved), _result(moved)])
    f = fields["ddp_rank0_param/w"]
    assert f.diverged and f.expected and not f.unexpected
    assert f"{few} of {N} elements" in f.expected_reason
    assert not fields["ddp_equal_rank1_param/w"].diverged   # ranks identical to each other
    assert ev["step_unsynced_ranks"] == [] and ev["step_amplified_elements"] == few


def test_more_than_the_amplified_share_is_a_divergence(ctx, tmp_path):
    base = torch.linspace(-1e-3, 1e-3, N)
    moved = base.clone()
    many = int(DDP_STEP_AMPLIFIED_FRACTION * N) + 1
    moved[:many] = -moved[:many]
    fields, ev = _step_fields(ctx, tmp_path, _result(base), [_result(moved), _result(moved)])
    assert fields["ddp_rank0_param/w"].unexpected
    assert ev["step_unsynced_ranks"] == [0, 1]


def test_ranks_that_differ_from_each_other_are_caught_exactly(ctx, tmp_path):
    base = torch.linspace(-1e-3, 1e-3, N)
    other = base.clone()
    other[5] += 1e-9                                        # far inside any float tolerance
    fields, ev = _step_fields(ctx, tmp_path, _result(base), [_result(base), _result(other)])
    assert not fields["ddp_rank1_param/w"].diverged
    assert fields["ddp_equal_rank1_param/w"].unexpected
    assert ev["step_unsynced_ranks"] == [1]


def test_per_step_loss_is_compared(ctx, tmp_path):
    base = torch.zeros(N)
    fields, ev = _step_fields(ctx, tmp_path, _result(base), [_result(base), _result(base, (2.0, 1.9, 2.5))])
    assert fields["ddp_rank1_loss/per_step"].unexpected and not fields["ddp_rank0_loss/per_step"].diverged
    assert ev["single_losses"] == [2.0, 1.9, 1.8]
