"""The `lora-bf16` speed switch: LoRA adapter matmuls in the frozen base's dtype, fp32 master weights kept.

peft's `lora.Linear.forward` casts the layer input to the adapters' dtype before the adapter path:

    result = base_layer(x)                                    # (..., out), bf16 on a bf16 base
    x = x.to(lora_A.weight.dtype)                             # (..., in) bf16 -> fp32 copy
    result = result + lora_B(lora_A(dropout(x))) * scaling    # two fp32 (TF32) matmuls, fp32 (..., out)
    result = result.to(bf16)

so on a bf16 base with fp32 adapters (peft's `autocast_adapter_dtype`, the custom pipeline's CUDA
setting) every adapted projection writes an fp32 copy of its input, runs its skinny adapter matmuls
as TF32 and adds an fp32 (..., out) tensor back; the backward does the same in reverse.  Measured on
an H200 (full checkpoint, batch 32) those TF32 GEMMs and casts were about a sixth of the step.

With the switch on, `install` gives each peft LoRA Linear of ONE model instance this forward:

    result = base_layer(x)                                    # (..., out) in the base dtype
    a = lora_A.weight.to(dtype)                               # (r, in)   fp32 master -> base dtype
    b = (lora_B.weight * scaling).to(dtype)                   # (out, r)
    result = result + (dropout(x) @ a.T) @ b.T                # (..., r) then (..., out)

i.e. what the reference's bf16 autocast does to the same two matmuls (upstream train-higgs-audio
wraps its whole forward in `torch.autocast(dtype=torch.bfloat16)`): the adapter weights and their
gradients stay fp32 (autograd casts the bf16 weight gradients back), only the matmul inputs are
rounded to bf16.  It changes numerics (bf16 instead of TF32/fp32 rounding of the adapter path), by
no more than the reference's autocast does; on an fp32 base it changes nothing but summation order.

Calls the fast path does not cover (several or disabled adapters, merged weights, DoRA and other
LoRA variants, a bias on lora_B (`lora_bias=True`), `adapter_names=`, extra arguments) go to peft's
forward unchanged.  `install` changes each module's class to a subclass of peft's `lora.Linear`
(`BaseDtypeLoraLinear`), so the modules stay picklable and `isinstance` checks still hold.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

try:
    from peft.tuners.lora.layer import Linear as LoraLinear
except ImportError:  # pragma: no cover  (peft is a dependency of the custom pipeline)
    LoraLinear = None  # type: ignore[assignment,misc]


def _covered(module: Any, args: tuple, kwargs: dict) -> str | None:
    """The one active adapter the fast path runs, or None when peft's forward must run."""
    if args or kwargs or module.disable_adapters or module.merged:
        return None
    active = module.active_adapters
    if len(active) != 1:
        return None
    name = active[0]
    if name not in module.lora_A or name in getattr(module, "lora_variant", {}):
        return None
    if module.lora_A[name].bias is not None or module.lora_B[name].bias is not None:
        return None
    return name


def base_dtype_forward(self: Any, x: torch.Tensor, name: str) -> torch.Tensor:
    """The adapter path in the base output's dtype (module docstring); `self` a peft LoRA Linear whose
    call `_covered` accepts for adapter `name`.  x (..., in) -> (..., out), the dtype of `base_layer(x)`."""
    result = self.base_layer(x)                                               # (..., out)
    dtype = result.dtype
    a = self.lora_A[name].weight.to(dtype)                                    # (r, in)
    b = (self.lora_B[name].weight * self.scaling[name]).to(dtype)             # (out, r)
    h = F.linear(self.lora_dropout[name](x.to(dtype)), a)                     # (..., r)
    # A plain add, not addmm(result, h, b.T): inductor lowers addmm by first copying `result` into
    # the output (one device-to-device copy per projection, 8 ms a step at batch 32 on an H200),
    # while the add fuses into the pointwise op that consumes the projection (rotary, SiLU*up, residual).
    return result + F.linear(h, b)                                            # (..., out)


if LoraLinear is not None:
    class BaseDtypeLoraLinear(LoraLinear):
        """peft's `lora.Linear` whose covered calls run `base_dtype_forward`; the rest, peft's forward."""

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            name = _covered(self, args, kwargs)
            if name is None:
                return super().forward(x, *args, **kwargs)
            return base_dtype_forward(self, x, name)
else:  # pragma: no cover
    BaseDtypeLoraLinear = None  # type: ignore[assignment,misc]


def install(model: torch.nn.Module) -> int:
    """Give every peft LoRA Linear in `model` (exactly that class: peft's quantised subclasses keep their
    own forward) the base-dtype adapter forward, by changing the INSTANCE's class (other models keep
    peft's); returns how many modules were changed (0 without peft, without LoRA, or when done before)."""
    if LoraLinear is None:
        return 0
    n = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = BaseDtypeLoraLinear
            n += 1
    return n
