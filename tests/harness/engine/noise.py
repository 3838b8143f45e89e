"""Reduction-order noise of the size another CPU, BLAS, GPU or world size produces, as a perturb hook.

`ReductionNoise(rel)` multiplies every floating tensor that a stage computes by a reduction
(forward logits, loss values and per-position CE, gradients) by 1 + rel * N(0, 1), on one side,
seeded per call so a run is repeatable.  Integers (ids, codes, labels) and optimizer outputs are
left alone: reordering a sum does not change them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

NOISY_STAGES = ("forward", "loss", "backward")


@dataclasses.dataclass
class ReductionNoise:
    rel: float = 1e-7
    side: str = "custom"
    seed: int = 0
    calls: int = 0

    def _noisy(self, t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
            return t
        self.calls += 1
        g = torch.Generator(device="cpu").manual_seed(self.seed * 7919 + self.calls)
        z = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device)
        return t * (1 + self.rel * z).to(t.dtype)

    def __call__(self, stage: str, side: str, output: Any) -> Any:
        if side != self.side or stage not in NOISY_STAGES:
            return output
        if isinstance(output, dict):
            return {k: self._noisy(v) for k, v in output.items()}
        if dataclasses.is_dataclass(output):
            changes = {f.name: self._noisy(getattr(output, f.name)) for f in dataclasses.fields(output)
                       if isinstance(getattr(output, f.name), torch.Tensor)}
            return dataclasses.replace(output, **changes)
        return output
