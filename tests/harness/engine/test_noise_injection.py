"""Machine independence of the derived tolerances.

Reduction-order noise of the size another CPU, BLAS, GPU or world size produces (relative 1e-7
on every value a reduction computes: logits, losses, per-position CE, gradients, and the DDP
all-reduce sums) must not make the clean run fail at the README's defaults (4 samples, 2-rank DDP
check); every named fault must still be found at its pinned stage with the noise on.
"""

from __future__ import annotations

import pytest

from harness import compare
from tests.harness.engine.noise import ReductionNoise
from tests.harness.test_fault_table import DDP_FAULTS, FAULT_TABLE

pytestmark = pytest.mark.slow
NOISE = 1e-7


@pytest.mark.parametrize("side", ["custom", "reference"])
def test_clean_run_passes_under_reduction_order_noise(side):
    noise = ReductionNoise(NOISE, side=side)
    report = compare(stage="all", perturb=noise, grad_noise=NOISE)          # README defaults otherwise
    assert noise.calls >= 40, "the noise hook barely fired (logits, losses and every LoRA gradient are noised)"
    assert report.verdict == "pass", report.first_divergence()


@pytest.mark.parametrize("fault", sorted(FAULT_TABLE))
def test_each_fault_is_still_found_at_its_stage(fault):
    stage = FAULT_TABLE[fault][0]
    report = compare(stage="all", fault=fault, samples=2, perturb=ReductionNoise(NOISE), grad_noise=NOISE,
                     ddp_world_size=2 if fault in DDP_FAULTS else 0)
    fd = report.first_divergence()
    assert report.verdict == "diverged" and fd["stage"] == stage, fd
