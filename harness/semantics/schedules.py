"""Learning-rate schedule formulas, written from their definitions, to check pipelines against.

Multipliers of the base learning rate at scheduler step s (0-based, the value in effect for the
optimizer step that follows), with w warmup steps and T total steps, as `transformers`
documents `get_scheduler` (linear, cosine with num_cycles=0.5: Loshchilov & Hutter, SGDR, 2017;
constant, constant_with_warmup):

    warmup (s < w):   s / max(1, w)
    linear:           max(0, (T - s) / max(1, T - w))
    cosine:           max(0, 0.5 * (1 + cos(pi * (s - w) / max(1, T - w))))
    constant:         1
"""

from __future__ import annotations

import math

SCHEDULES: tuple[str, ...] = ("linear", "cosine", "constant", "constant_with_warmup")


def lr_multiplier(kind: str, step: int, *, warmup_steps: int, max_steps: int) -> float:
    """The schedule's multiplier at `step` (raises ValueError for an unknown kind)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; known: {SCHEDULES}")
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    if kind in ("constant", "constant_with_warmup"):
        return 1.0
    progress = float(step - warmup_steps) / float(max(1, max_steps - warmup_steps))
    if kind == "linear":
        return max(0.0, float(max_steps - step) / float(max(1, max_steps - warmup_steps)))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def lr_curve(kind: str, base_lr: float, *, warmup_steps: int, max_steps: int, steps: int) -> list[float]:
    """Learning rate for scheduler steps 0..steps-1."""
    return [base_lr * lr_multiplier(kind, s, warmup_steps=warmup_steps, max_steps=max_steps) for s in range(steps)]
