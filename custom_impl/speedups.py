"""Apply the speed switches (`custom_impl.speed`) to one custom model instance and the process.

    model = build_model(ctx, train)
    report = speedups.apply(model, opts)          # before DDP wrapping
    with speedups.process_settings(opts):         # tf32: process-wide, undone on exit
        ...train...

`apply` attaches the options to the model (`model.higgs_speed`, read by
`distributed.accumulate` for the gathered text head) and patches only that instance: the
reference model, and any other custom model, keep upstream's code.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from loguru import logger

from custom_impl import attention as _attention
from custom_impl import dual_ffn as _dual_ffn
from custom_impl import kernels as _kernels
from custom_impl import lora_compute as _lora_compute
from custom_impl.speed import SpeedOptions


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The HiggsAudioModel inside DDP and peft wrappers."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def apply(model: torch.nn.Module, opts: SpeedOptions) -> dict[str, Any]:
    """Install `opts` on `model` (peft- or plain-wrapped, not yet DDP-wrapped); returns what was done.

    Raises kernels.MissingKernelError when a liger switch is on without liger-kernel.
    """
    if opts.liger_ce:
        _kernels.liger_functional()
    base = base_model(model)
    done: dict[str, Any] = {"options": opts.describe()}
    if opts.liger_rmsnorm:
        done["liger_rmsnorm_modules"] = _kernels.install_rmsnorm(base)
    if opts.liger_swiglu:
        done["liger_swiglu_modules"] = _kernels.install_swiglu(base)
    if opts.lora_bf16:
        done["lora_bf16_modules"] = _lora_compute.install(base)
    if opts.causal_attn:
        reason = _attention.install(base)
        done["causal_attn"] = "installed" if reason is None else f"not installed: {reason}"
        if reason is not None:
            logger.warning(f"speed switch causal-attn not applied: {reason}")
    if opts.index_ffn or opts.compile_layers:
        done.update(_dual_ffn.install(base, index_ffn=opts.index_ffn, compile_layers=opts.compile_layers,
                                      unpad=opts.unpad_ffn,
                                      cuda_graphs=opts.cuda_graphs and next(base.parameters()).is_cuda))
    if opts.cuda_graphs and not (opts.compile_layers and opts.index_ffn):
        logger.warning("speed switch cuda-graphs has no effect without compile and index-ffn")
    if opts.unpad_ffn and not opts.index_ffn:
        logger.warning("speed switch unpad-ffn has no effect without index-ffn")
    model.higgs_speed = opts
    return done


def release(model: torch.nn.Module) -> bool:
    """Give back what `apply` holds outside `model` once the caller drops it: the memory CUDA graph
    trees keep for the layers' recorded graphs (`cuda-graphs`), which would otherwise stay allocated
    for as long as the process runs (`dual_ffn.release_graphs`: this drops the process's compiled
    code too).  Call it before building another model in the same process (benchmarks, tests); a
    training run that ends with its process need not.  Returns whether anything was freed."""
    return _dual_ffn.release_graphs(base_model(model))


def enter_process_settings(opts: SpeedOptions) -> Callable[[], None]:
    """Set the process-wide settings of `opts`; returns the function undoing them.

    tf32: fp32 matmuls at `torch.set_float32_matmul_precision("high")` (TF32 tensor cores; this is
    what `torch.backends.cuda.matmul.allow_tf32` reads) and cuDNN's TF32 on; without it matmuls at
    "highest" (full fp32) whatever the process had before, cuDNN left as it was (torch's default).
    """
    previous = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if opts.tf32 else "highest")
    if opts.tf32:
        torch.backends.cudnn.allow_tf32 = True

    def restore() -> None:
        torch.set_float32_matmul_precision(previous[0])
        torch.backends.cudnn.allow_tf32 = previous[1]
    return restore


@contextmanager
def process_settings(opts: SpeedOptions) -> Iterator[None]:
    """`enter_process_settings` as a context manager."""
    restore = enter_process_settings(opts)
    try:
        yield
    finally:
        restore()


def fused_adamw(opts: SpeedOptions, device: torch.device | str) -> bool:
    """Whether AdamW runs fused (`stages.make_optimizer`): the switch is on and the parameters are on
    CUDA (the switch is meant for the GPU; CPU runs keep torch's default AdamW)."""
    return opts.fused_adamw and torch.device(device).type == "cuda"
