"""Optional liger-kernel (triton) kernels on the custom model: RMSNorm and SwiGLU.

liger-kernel is not a dependency: CI has no GPU and no triton.  Install it next to torch on the
GPU machine (`pip install liger-kernel`, a pure-Python wheel; scripts/gpu_speed.sh carries it).
Only the custom model INSTANCE is patched (liger's own `apply_liger_kernel_to_llama` patches the
transformers classes, which would change the reference too).

* RMSNorm: `LlamaRMSNorm.forward` (fp32 variance, `weight * x.to(input_dtype)`) = liger's
  `casting_mode="llama"`; `in_place=False` because the dual-FFN layer feeds one input to two
  norms and `torch.where` (liger's in-place backward would overwrite a gradient still in use).
* SwiGLU: `LlamaMLP.forward` = `down_proj(silu(gate_proj(x)) * up_proj(x))`; liger fuses the
  silu-multiply (forward and backward).  The projections stay peft's LoRA modules.
* Under the `compile` switch the liger calls run outside the compiled graph
  (`torch.compiler.disable`, one graph break each): inductor on torch 2.11 fails to re-trace
  liger's Triton kernels (`InductorError` in `decompose_triton_kernel_wrapper_functional`,
  measured on an H200 with liger-kernel 0.6), so compiled layers call them eagerly.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm


class MissingKernelError(ImportError):
    """A speed switch asked for a package that is not installed."""


def liger_functional() -> Any:
    """`liger_kernel.transformers.functional`, or a MissingKernelError saying how to get it."""
    try:
        from liger_kernel.transformers import functional
    except ImportError as exc:
        raise MissingKernelError(
            "the liger-* speed switches need the optional package liger-kernel (and triton, i.e. a CUDA "
            f"machine): pip install liger-kernel  ({type(exc).__name__}: {exc})") from exc
    return functional


@torch.compiler.disable
def _rms_norm(hidden_states: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """liger RMSNorm, (..., hidden) -> same shape and dtype; never traced (module docstring)."""
    fn = liger_functional().liger_rms_norm
    return fn(hidden_states, weight, eps, offset=0.0, casting_mode="llama", in_place=False)


@torch.compiler.disable
def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """liger's fused silu(gate) * up, (..., intermediate); never traced (module docstring)."""
    return liger_functional().liger_swiglu(gate, up)


def _liger_rmsnorm_forward(self: LlamaRMSNorm, hidden_states: torch.Tensor) -> torch.Tensor:
    return _rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _liger_swiglu_forward(self: LlamaMLP, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(_silu_mul(self.gate_proj(x), self.up_proj(x)))


def install_rmsnorm(base: torch.nn.Module) -> int:
    """liger RMSNorm on every LlamaRMSNorm of `base`; returns how many."""
    liger_functional()
    n = 0
    for module in base.modules():
        if isinstance(module, LlamaRMSNorm):
            module.forward = types.MethodType(_liger_rmsnorm_forward, module)
            n += 1
    return n


def install_swiglu(base: torch.nn.Module) -> int:
    """liger SwiGLU in every silu LlamaMLP of `base` (tensor-parallel slicing off); returns how many."""
    liger_functional()
    n = 0
    for module in base.modules():
        if (isinstance(module, LlamaMLP) and module.config.hidden_act in ("silu", "swish")
                and getattr(module.config, "pretraining_tp", 1) == 1):
            module.forward = types.MethodType(_liger_swiglu_forward, module)
            n += 1
    return n
