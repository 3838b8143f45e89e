"""Each custom-pipeline fault breaks at least one property, and hypothesis shrinks it to one short clip.

`hypothesis.find` searches the batch strategy for an example on which the property body (run
with the fault switched on) fails, then shrinks it; the test asserts that the minimal failing
example is a single utterance of at most `MAX_SHRUNK_FRAMES` target frames, and that the same
example passes with the fault off (so it is the fault, not the example, that fails).
The two DDP faults need several processes: see test_prop_ddp_faults.py.
"""

from __future__ import annotations

from typing import Callable

import pytest
from hypothesis import HealthCheck, Phase, find, settings

from custom_impl.faults import FAULTS
from tests.harness.test_prop_pipelines import (check_audio_loss_positive, check_forward_agrees,
                                               check_loss_matches_oracle, check_reference_never_target,
                                               check_supervised_codes_agree)
from tests.strategies import batch_frames, batches

pytestmark = pytest.mark.property

DDP_FAULTS = frozenset({"ddp-unwrapped-forward", "inverted-no-sync"})
MAX_SHRUNK_FRAMES = 3          # "one short utterance": a few codec frames (25 frames = 1 s)

# fault -> (property it breaks, max seconds of the drawn clips)
BROKEN_PROPERTY: dict[str, tuple[Callable, float]] = {
    "reference-audio-as-label": (check_reference_never_target, 4.0),
    "unmapped-audio-labels": (check_supervised_codes_agree, 4.0),
    "silent-zero-audio-loss": (check_audio_loss_positive, 2.0),
    "no-shift": (check_loss_matches_oracle, 1.0),
    "random-extra-layers": (check_forward_agrees, 2.0),
}

FIND_SETTINGS = settings(max_examples=20, deadline=None, database=None, derandomize=True,
                         phases=(Phase.generate, Phase.shrink),
                         suppress_health_check=list(HealthCheck))


def fails(check: Callable, samples, ctx, faults) -> bool:
    """True when the property body does not hold (AssertionError) for `samples` under `faults`."""
    try:
        check(samples, ctx, faults=faults)
    except AssertionError:
        return True
    return False


def test_every_single_process_fault_has_a_property():
    assert set(BROKEN_PROPERTY) == set(FAULTS) - DDP_FAULTS


@pytest.mark.parametrize("fault", sorted(BROKEN_PROPERTY))
def test_fault_breaks_a_property_and_shrinks_to_one_short_utterance(ctx, fault):
    check, max_seconds = BROKEN_PROPERTY[fault]
    minimal = find(batches(max_size=3, max_seconds=max_seconds),
                   lambda samples: fails(check, samples, ctx, (fault,)), settings=FIND_SETTINGS)
    print(f"{fault} breaks {check.__name__}; minimal failing example: {minimal}")
    assert len(minimal) == 1, f"{fault}: shrunk to {len(minimal)} samples: {minimal}"
    assert minimal[0].target_frames <= MAX_SHRUNK_FRAMES, f"{fault}: shrunk example {minimal}"
    assert batch_frames(minimal) <= 2 * MAX_SHRUNK_FRAMES, f"{fault}: shrunk example {minimal}"
    assert not fails(check, minimal, ctx, ()), f"{fault}: the minimal example fails without the fault too"
