"""What the harness does to a side's model, optimizer and scheduler, wherever they live.

Each public function takes the object first and runs where it lives (`harness.engine.worker.on_side`):
in this process for an in-process side, in the side's worker otherwise.  Values come back as copies
(CPU or model-device tensors, detached); nothing here hands a live parameter to the caller.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.engine.worker import on_side


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


# ------------------------------------------------------------------ run where the object lives

def _trainable_values(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in _inner(model).named_parameters() if p.requires_grad}


def _load_values(model: torch.nn.Module, values: dict[str, torch.Tensor]) -> list[str]:
    loaded = []
    with torch.no_grad():
        for n, p in _inner(model).named_parameters():
            v = values.get(n)
            if p.requires_grad and v is not None and v.shape == p.shape:
                p.copy_(v.to(p.device, p.dtype))
                loaded.append(n)
    return loaded


def _set_grads(model: torch.nn.Module, grads: dict[str, torch.Tensor | None]) -> None:
    with torch.no_grad():
        for n, p in _inner(model).named_parameters():
            if p.requires_grad:
                g = grads.get(n)
                p.grad = None if g is None else g.detach().clone().to(p.device, p.dtype)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: (p.grad.detach().clone() if p.grad is not None else None)
            for n, p in _inner(model).named_parameters() if p.requires_grad}


def _zero_grad(model: torch.nn.Module) -> None:
    model.zero_grad(set_to_none=True)


def _set_mode(model: torch.nn.Module, train: bool) -> None:
    model.train(train)


def _move(model: torch.nn.Module, device: str) -> None:
    model.to(device)


def _device(model: torch.nn.Module) -> str:
    return str(next(model.parameters()).device)


def _summary(model: torch.nn.Module) -> dict[str, Any]:
    named = list(model.named_parameters())
    return {"names": [n for n, _ in named], "trainable": [n for n, p in named if p.requires_grad],
            "shapes": {n: tuple(p.shape) for n, p in named if p.requires_grad},
            "frozen_dtypes": sorted({str(p.dtype) for _, p in named if not p.requires_grad})}


def _current_lr(opt: torch.optim.Optimizer) -> float:
    return float(opt.param_groups[0]["lr"])


def _step_scheduler(sched: Any) -> None:
    sched.step()


def _type_name(obj: Any) -> str:
    return type(obj).__name__


# ------------------------------------------------------------------ the harness's calls

def trainable_values(model: Any) -> dict[str, torch.Tensor]:
    """{name: detached copy} of the trainable parameters (DDP unwrapped)."""
    return on_side(model, _trainable_values, model)


def load_values(model: Any, values: dict[str, torch.Tensor]) -> list[str]:
    """Copy `values` into the same-named, same-shaped trainable parameters; names loaded."""
    return on_side(model, _load_values, model, values)


def set_grads(model: Any, grads: dict[str, torch.Tensor | None]) -> None:
    """`p.grad` of every trainable parameter from `grads` (None where absent)."""
    on_side(model, _set_grads, model, grads)


def grads(model: Any) -> dict[str, torch.Tensor | None]:
    """Copies of the trainable parameters' gradients (None: no gradient reached it)."""
    return on_side(model, _grads, model)


def zero_grad(model: Any) -> None:
    on_side(model, _zero_grad, model)


def set_mode(model: Any, train: bool) -> None:
    on_side(model, _set_mode, model, train)


def move(model: Any, device: torch.device | str) -> None:
    on_side(model, _move, model, str(device))


def device_of(model: Any) -> torch.device:
    return torch.device(on_side(model, _device, model))


def summary(model: Any) -> dict[str, Any]:
    """{"names", "trainable", "shapes" (trainable), "frozen_dtypes"} of a model's parameters."""
    return on_side(model, _summary, model)


def current_lr(opt: Any) -> float:
    return on_side(opt, _current_lr, opt)


def step_scheduler(sched: Any) -> None:
    on_side(sched, _step_scheduler, sched)


def type_name(obj: Any) -> str:
    return obj.type_name if hasattr(obj, "type_name") and hasattr(obj, "hid") else type(obj).__name__
