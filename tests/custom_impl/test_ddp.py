"""Real gloo DDP (2 spawned processes) through the training loop's own micro-step code."""

import pytest
import torch

from custom_impl import stages as S
from custom_impl.distributed import accumulate

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TRAIN = S.DEFAULT_TRAIN.replace(lora_dropout=0.0)   # dropout would make ranks' RNG part of the result


def single_process_full_batch(ctx, items):
    model = S.build_model(ctx, TRAIN)
    accumulate(model, [S.collate(items, ctx)], ctx)
    return S.grads_of(model)


@pytest.fixture(scope="module")
def eight(items):
    return items[:8]


def test_two_ranks_match_one_process_full_batch(ctx, eight):
    ranks = S.ddp_backward(ctx, TRAIN, eight, world_size=2, grad_accum=2)
    full = single_process_full_batch(ctx, eight)
    assert set(ranks[0]) == set(full)
    for name in full:
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0][name], full[name], rtol=1e-4, atol=1e-6)
    assert sum(float(g.abs().sum()) for g in full.values()) > 0


@pytest.mark.parametrize("fault", ["ddp-unwrapped-forward", "inverted-no-sync"])
def test_ddp_faults_desynchronise_ranks(ctx, eight, fault):
    ranks = S.ddp_backward(ctx, TRAIN, eight, world_size=2, grad_accum=2, faults=[fault])
    diff = max(float((ranks[0][n] - ranks[1][n]).abs().max()) for n in ranks[0])
    assert diff > 1e-6, f"{fault} left the ranks' gradients equal"
