"""The two DDP faults break "every rank ends with the single-process full-batch gradient".

Each example spawns gloo processes (seconds), so this runs a couple of drawn batches only and is
marked distributed/slow rather than property: `pytest -m property` stays fast.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings

from custom_impl import stages as C
from tests.strategies import batches, materialised_context

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TRAIN = C.DEFAULT_TRAIN.replace(lora_dropout=0.0)      # dropout would make ranks' RNG part of the result
DDP_SETTINGS = settings(max_examples=2, deadline=None, phases=(Phase.explicit, Phase.generate),
                        suppress_health_check=list(HealthCheck))
WORLD, ACCUM = 2, 2


def _distinct_targets(samples) -> bool:
    """Identical samples on every rank would make a missing all-reduce invisible (local mean == global)."""
    return len({tuple(s.target_codes.flatten().tolist()) for s in samples}) == len(samples)


DDP_BATCHES = batches(min_size=WORLD * ACCUM, max_size=WORLD * ACCUM, max_seconds=1.0).filter(_distinct_targets)


def check_ranks_match_single_process(samples, ctx, *, faults=()) -> None:
    """Every rank's accumulated gradient equals the one-process gradient of the whole batch."""
    with materialised_context(ctx, samples) as (records, c, root):
        items = C.dataset(C.write_native(records, root / "native"), c)
    single = C.ddp_backward(c, TRAIN, items, world_size=1, grad_accum=1, faults=())[0]
    ranks = C.ddp_backward(c, TRAIN, items, world_size=WORLD, grad_accum=ACCUM, faults=faults)
    assert sum(float(g.abs().sum()) for g in single.values()) > 0, "no gradient at all"
    for r, grads in enumerate(ranks):
        for name, g in single.items():
            assert torch.allclose(grads[name], g, rtol=1e-4, atol=1e-6), f"rank {r} {name} is not the full-batch gradient"


@DDP_SETTINGS
@given(samples=DDP_BATCHES)
def test_ranks_match_single_process(ctx, samples):
    check_ranks_match_single_process(samples, ctx)


@pytest.mark.parametrize("fault", ["ddp-unwrapped-forward", "inverted-no-sync"])
@settings(DDP_SETTINGS, max_examples=1)
@given(samples=DDP_BATCHES)
def test_ddp_fault_breaks_the_property(ctx, fault, samples):
    with pytest.raises(AssertionError, match="is not the full-batch gradient"):
        check_ranks_match_single_process(samples, ctx, faults=(fault,))
