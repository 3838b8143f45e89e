"""Adapters around fused training code: `forward_and_loss` in place of `forward` + `loss`, and
`train_step` in place of `backward` + `step`.

A real trainer computes the loss inside its forward call; its adapter may export

    forward_and_loss(model, batch, ctx) -> (ForwardOutputs | None, LossBreakdown)

instead of `forward` and `loss` (`higgs_common.stages`).  `with_derived_stages(module)` returns a
module-like view whose `forward` runs the fused call and keeps its LossBreakdown, and whose `loss`
returns that LossBreakdown when given the outputs of that forward; given other outputs (the isolated
mode feeds the custom side's forward outputs to both losses) it runs the fused call again on the
batch, so the loss compared is the side's loss on its OWN forward of the same weights and batch (the
forward stage checks that those forwards agree).  When the fused call returns no ForwardOutputs,
they are read off the model's forward output (`higgs_common.capture`): fields `logits`,
`audio_logits`, `expanded_labels`, `expanded_input_ids` where the output object has them.

A training loop whose update is inline may export

    train_step(model, batch, optimizer, ctx, train) -> Any     # forward, loss, backward(), clipping,
                                                               # optimizer.step(), zero_grad(), as the loop does

instead of `backward` and `step`.  Both are derived by running it on the batch of the side's last
forward, with the RNG state that forward started from (so dropout draws the same masks):
`backward` hands it an optimizer that records the gradients and changes nothing, and returns the
gradients as they were when the loop clipped them (`torch.nn.utils.clip_grad_norm_`) or, without
clipping, when it called `optimizer.step()`; `step` runs it with the given optimizer while every
`backward()` it calls sets the gradients the harness put on the parameters instead of computing
them, so the update, clipping and order are the loop's own on the harness's gradients.
"""

from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Any, Iterator
from unittest import mock

import torch

from higgs_common.stages import ForwardOutputs, HiggsDiffError, LossBreakdown


class FusedStages:
    """Module-like view of an adapter with `forward_and_loss` (module docstring)."""

    def __init__(self, module: ModuleType) -> None:
        self._module = module
        self._last: tuple[ForwardOutputs, torch.nn.Module, LossBreakdown] | None = None   # the last forward
        self.__name__ = module.__name__
        self.__file__ = getattr(module, "__file__", "?")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._module)) | {"forward", "loss"})

    def _fused(self, model: torch.nn.Module, batch: Any, ctx: Any) -> tuple[ForwardOutputs, LossBreakdown]:
        from higgs_common.capture import capture

        with capture(model) as cap:
            outputs, lb = self._module.forward_and_loss(model, batch, ctx)
        if not isinstance(lb, LossBreakdown):
            raise HiggsDiffError(f"{self.__name__}.forward_and_loss must return (ForwardOutputs | None, "
                                 f"LossBreakdown), got {type(lb).__name__} second")
        if outputs is None:
            if not cap.outputs:
                raise HiggsDiffError(f"{self.__name__}.forward_and_loss returned no ForwardOutputs and did not call "
                                     "model.forward: nothing to compare at the forward stage")
            raw = cap.outputs[-1]
            outputs = ForwardOutputs(logits=getattr(raw, "logits"), audio_logits=getattr(raw, "audio_logits", None),
                                     expanded_labels=getattr(raw, "expanded_labels", None),
                                     expanded_input_ids=getattr(raw, "expanded_input_ids", None))
        return outputs, lb

    def forward(self, model: torch.nn.Module, batch: Any, ctx: Any) -> ForwardOutputs:
        outputs, lb = self._fused(model, batch, ctx)
        self._last = (outputs, model, lb)
        return outputs

    def loss(self, outputs: ForwardOutputs, batch: Any, ctx: Any) -> LossBreakdown:
        last = self._last
        if last is not None and last[0] is outputs:
            return last[2]
        if last is None:
            raise HiggsDiffError(f"{self.__name__}: loss() before forward(): a fused adapter computes its loss in "
                                 "forward_and_loss, on its own model")
        _, lb = self._fused(last[1], batch, ctx)
        return lb


class _RngState:
    """The CPU (and current CUDA device's) RNG state at one moment; `restore()` goes back to it."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda)


class _GradRecorder(torch.optim.Optimizer):
    """An optimizer whose step() records the parameters' gradients and changes nothing."""

    def __init__(self, params: list[torch.nn.Parameter], seen: dict[int, torch.Tensor | None]) -> None:
        super().__init__(params, {"lr": 0.0})
        self._seen = seen

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if not self._seen:
            for group in self.param_groups:
                for p in group["params"]:
                    self._seen[id(p)] = None if p.grad is None else p.grad.detach().clone()


@contextlib.contextmanager
def _clip_records(seen: dict[int, torch.Tensor | None]) -> Iterator[None]:
    """Record the gradients at the first clip_grad_norm_ call (before it clips)."""
    import torch.nn.utils.clip_grad as clip_mod

    orig = clip_mod.clip_grad_norm_

    def clip_grad_norm_(parameters: Any, *args: Any, **kwargs: Any) -> Any:
        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        if not seen:
            for p in params:
                seen[id(p)] = None if p.grad is None else p.grad.detach().clone()
        return orig(params, *args, **kwargs)
    with mock.patch.object(clip_mod, "clip_grad_norm_", clip_grad_norm_), \
            mock.patch.object(torch.nn.utils, "clip_grad_norm_", clip_grad_norm_):
        yield


@contextlib.contextmanager
def _given_gradients(params: list[torch.nn.Parameter], grads: list[torch.Tensor | None]) -> Iterator[None]:
    """Every backward() inside sets `grads` on `params` instead of computing them."""
    def assign(*_a: Any, **_k: Any) -> None:
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.grad = None if g is None else g.clone()
    with mock.patch.object(torch.Tensor, "backward", assign), mock.patch.object(torch.autograd, "backward", assign):
        yield


class TrainStepStages:
    """Module-like view of an adapter with `train_step` (module docstring): derived `backward`/`step`."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self._batch: tuple[Any, Any, _RngState] | None = None     # (batch, ctx, RNG state) of the last forward
        self.__name__ = getattr(module, "__name__", "adapter")
        self.__file__ = getattr(module, "__file__", "?")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._module)) | {"backward", "step"})

    def forward(self, model: torch.nn.Module, batch: Any, ctx: Any) -> ForwardOutputs:
        self._batch = (batch, ctx, _RngState())
        return self._module.forward(model, batch, ctx)

    def _last(self) -> tuple[Any, Any, _RngState]:
        if self._batch is None:
            raise HiggsDiffError(f"{self.__name__}: backward/step before forward(): they are derived from "
                                 "train_step, run on the batch of the last forward")
        return self._batch

    def backward(self, loss: LossBreakdown, model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
        batch, ctx, rng = self._last()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        seen: dict[int, torch.Tensor | None] = {}
        model.zero_grad(set_to_none=True)
        rng.restore()
        with _clip_records(seen):
            self._module.train_step(model, batch, _GradRecorder([p for _, p in named], seen), ctx,
                                    self._module.DEFAULT_TRAIN)
        model.zero_grad(set_to_none=True)
        if not seen:
            raise HiggsDiffError(f"{self.__name__}.train_step neither clipped gradients nor called optimizer.step()")
        return {n: seen.get(id(p)) for n, p in named}

    def step(self, model: torch.nn.Module, optimizer: Any, ctx: Any, train: Any) -> dict[str, torch.Tensor]:
        batch, _ctx, rng = self._last()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        grads = [None if p.grad is None else p.grad.detach().clone() for _, p in named]
        rng.restore()
        with _given_gradients([p for _, p in named], grads):
            self._module.train_step(model, batch, optimizer, ctx, train)
        return {n: p.detach().clone() for n, p in named}


def with_derived_stages(module: Any) -> Any:
    """`module` itself, or views deriving `forward`/`loss` from `forward_and_loss` (FusedStages) and
    `backward`/`step` from `train_step` (TrainStepStages) where the adapter has those instead."""
    if hasattr(module, "forward_and_loss") and not (hasattr(module, "forward") and hasattr(module, "loss")):
        module = FusedStages(module)
    if hasattr(module, "train_step") and not (hasattr(module, "backward") and hasattr(module, "step")):
        module = TrainStepStages(module)
    return module
