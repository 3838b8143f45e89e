"""Moving a pipeline's batch between devices (a leaf module: the stage modules and the runner use it)."""

from __future__ import annotations

from typing import Any

import torch


def to_device(batch: Any, device: torch.device) -> Any:
    """A shallow copy of a batch with every tensor attribute on `device` (same type back)."""
    if batch is None:
        return None
    if all(getattr(v, "device", device) == device for v in vars(batch).values() if isinstance(v, torch.Tensor)):
        return batch
    clone = type(batch).__new__(type(batch))
    for k, v in vars(batch).items():
        setattr(clone, k, v.to(device) if isinstance(v, torch.Tensor) else v)
    return clone
