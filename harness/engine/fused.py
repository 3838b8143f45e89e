"""Adapters around fused training code: `forward_and_loss` in place of `forward` + `loss`.

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
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

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


def with_derived_stages(module: Any) -> Any:
    """`module` itself, or a FusedStages view when it has `forward_and_loss` but no `forward`/`loss`."""
    if hasattr(module, "forward_and_loss") and not (hasattr(module, "forward") and hasattr(module, "loss")):
        return FusedStages(module)
    return module
