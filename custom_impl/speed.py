"""The custom pipeline's speed switches: what each one does, their defaults, and how to set them.

Every switch is independent of `TrainConfig` (it changes how the same computation runs, never
what is computed), so the harness's configuration diff does not see it.  Set them with a SPEC, a
comma list applied left to right:

    default            the device's defaults (below)
    none | all         every switch off | every switch that needs no optional package on
    NAME | +NAME       switch NAME on
    -NAME | no-NAME    switch NAME off

from, in order (later wins): the device defaults, the environment variable `HIGGS_CUSTOM_SPEED`,
`python -m custom_impl.train --speed SPEC`, and `python -m bench --custom-speed SPEC`
(`--ablate NAME,...` measures each switch flipped).  Example: `--speed default,-compile`.

| switch            | what it does                                                    | CUDA | CPU |
|-------------------|-----------------------------------------------------------------|------|-----|
| fast-head         | training path: text head only at supervised rows (`fast_head`) | on   | on  |
| group-by-length   | training CLI: length-grouped batches (`length_grouping`)        | off  | off |
| index-ffn         | dual-FFN split by precomputed indices (`dual_ffn`)              | on   | off |
| unpad-ffn         | with index-ffn: padding rows skip both FFNs (`dual_ffn`)        | on   | off |
| compile           | `torch.compile` of every decoder layer (`dual_ffn`)             | on   | off |
| cuda-graphs       | with index-ffn, compile: recurring shapes as CUDA graphs        | on   | off |
| causal-attn       | right-padded batches: SDPA `is_causal`, no mask (`attention`)   | on   | off |
| fused-adamw       | `torch.optim.AdamW(fused=True)` (CUDA only)                     | on   | off |
| tf32              | TF32 for fp32 matmuls (the fp32 LoRA adapters; changes numerics) | on   | off |
| lora-bf16         | LoRA adapter matmuls in the base dtype (`lora_compute`; numerics) | on   | off |
| liger-rmsnorm     | liger-kernel RMSNorm on the custom model (`kernels`)            | off  | off |
| liger-swiglu      | liger-kernel SwiGLU in every MLP (`kernels`)                    | off  | off |
| liger-ce          | liger-kernel fused linear cross-entropy for the gathered head   | off  | off |

`group-by-length` is off on CUDA too: measured on an H200 (full checkpoint, batch 32, one pool of
samples), grouped batches ran at 14.7k tokens/s against 27.0k for random ones, because their
varying shapes send the compiled decoder layers through dynamic-shape graphs (~0.46 s steps
instead of 0.36 s) and a recompilation (1.5 s), which costs more than the ~10% of padding the
grouping saves (reports/bench/h200-speed, epoch rows).  It also changes which samples share a
batch, i.e. the training trajectory.  `+group-by-length` turns it on.

`tf32` and `lora-bf16` are the CUDA defaults that change numerics.  `tf32`: fp32 matmuls (the
fp32 LoRA adapters' without `lora-bf16`) round their inputs to TF32 (10-bit mantissa) instead of
running in full fp32; measured on an H200 (full checkpoint, batch 32) it is worth +13% tokens/s
(reports/bench/h200-speed-variants).  `lora-bf16`: the adapters' two matmuls take bf16 inputs
(fp32 master weights and gradients kept), which is exactly what the reference's bf16 autocast
does to them; it saves the fp32 copies of every adapted projection's input and output
(`custom_impl.lora_compute`).  Both change the loss by less than the bf16 tolerance it is checked
at; `-tf32` / `-lora-bf16` turn them off.

`unpad-ffn` acts only inside `index-ffn`'s layers: the FFNs skip the batch's padding rows (13%
of the rows of a batch of 32 shipped samples), whose outputs nothing reads; real rows are
unchanged up to summation order; with LoRA dropout on, the text FFN's dropout masks are drawn over
fewer rows (other draws of the same distribution).

`cuda-graphs` acts only on `index-ffn`'s compiled layers, on CUDA: a batch shape (B, L and the
text, audio and padding row counts) seen again runs the layers through a second compiled core in
torch.compile's "reduce-overhead" mode, whose CUDA graph trees warm up on the shape's second
forward, record each layer's forward and backward on its third and replay them from its fourth (at
most 8 shapes; `dual_ffn.GraphPolicy`); every other forward runs the plain compiled layers.  The
gain needs shapes that recur exactly: fixed batches (the bench), or data of one padded length;
shuffled batches of varying lengths rarely repeat a shape and run as without the switch.  Measured
on an H200 (full checkpoint, fixed batch of 8, where the step was launch-bound, one micro-batch per
step): 83-88 ms a step against 156 ms without it, and three fresh models within 2.5% instead of
27.6% (reports/bench/speed-20261203T162956Z, speed-20261203T165529Z).  Gradients of graphed layers
are copied out of the graphs' memory before they reach `.grad` (gradient accumulation).  A process
that builds another model after one that graphed calls `speedups.release(model)` first: it frees
the recordings and drops the process's compiled code (`torch.compiler.reset()`).

Every switch but `tf32` and `lora-bf16` leaves the loss unchanged up to floating-point summation order
(tests/custom_impl/test_speed.py); the liger ones need the optional `liger-kernel` package
(and triton, i.e. CUDA) and fail with a message naming it when it is missing.  None of them
touches the harness's stage-contract forward (`custom_impl.stages.forward`), which still returns
upstream's full logits.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Iterable

import torch

ENV_VAR = "HIGGS_CUSTOM_SPEED"

# Switch name (CLI spelling) -> SpeedOptions field.
SWITCHES: dict[str, str] = {
    "fast-head": "fast_head",
    "group-by-length": "group_by_length",
    "index-ffn": "index_ffn",
    "unpad-ffn": "unpad_ffn",
    "compile": "compile_layers",
    "cuda-graphs": "cuda_graphs",
    "causal-attn": "causal_attn",
    "fused-adamw": "fused_adamw",
    "tf32": "tf32",
    "lora-bf16": "lora_bf16",
    "liger-rmsnorm": "liger_rmsnorm",
    "liger-swiglu": "liger_swiglu",
    "liger-ce": "liger_ce",
}
# Switches that need an optional package: `all` leaves them out.
OPTIONAL_PACKAGE = {"liger-rmsnorm": "liger_kernel", "liger-swiglu": "liger_kernel", "liger-ce": "liger_kernel"}
# Switches that change numerics beyond summation order: `all` leaves them out too.
NUMERICS_CHANGING = ("tf32", "lora-bf16")


class SpeedSpecError(ValueError):
    """A speed SPEC naming an unknown switch or keyword."""


@dataclass(frozen=True)
class SpeedOptions:
    """Which speed switches are on (field docs: the module table)."""

    fast_head: bool = True
    group_by_length: bool = False
    index_ffn: bool = False
    unpad_ffn: bool = False
    compile_layers: bool = False
    cuda_graphs: bool = False
    causal_attn: bool = False
    fused_adamw: bool = False
    tf32: bool = False
    lora_bf16: bool = False
    liger_rmsnorm: bool = False
    liger_swiglu: bool = False
    liger_ce: bool = False
    ce_chunk_rows: int = 0          # rows per cross-entropy chunk of the gathered head; 0: automatic

    @classmethod
    def none(cls) -> "SpeedOptions":
        return cls(**{field: False for field in SWITCHES.values()})

    @classmethod
    def all(cls) -> "SpeedOptions":
        on = {field: (name not in OPTIONAL_PACKAGE and name not in NUMERICS_CHANGING)
              for name, field in SWITCHES.items()}
        return cls(**on)

    @classmethod
    def defaults(cls, device: torch.device | str) -> "SpeedOptions":
        """CUDA: every exact switch that needs no optional package but group-by-length, plus tf32 and
        lora-bf16 (module docstring: all measured); CPU: only the gathered text head."""
        if torch.device(device).type == "cuda":
            return cls.all().replace(tf32=True, lora_bf16=True, group_by_length=False)
        return cls.none().replace(fast_head=True)

    def replace(self, **changes: object) -> "SpeedOptions":
        return dataclasses.replace(self, **changes)

    def names_on(self) -> list[str]:
        return [name for name, field in SWITCHES.items() if getattr(self, field)]

    def describe(self) -> str:
        """'fast-head,index-ffn,...' or 'none': what a report prints."""
        on = self.names_on()
        return ",".join(on) if on else "none"

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, field) for name, field in SWITCHES.items()} | {"ce-chunk-rows": self.ce_chunk_rows}


def apply_spec(base: SpeedOptions, spec: str | None, device: torch.device | str) -> SpeedOptions:
    """`base` with SPEC's items applied left to right (grammar: module docstring)."""
    opts = base
    for raw in (spec or "").split(","):
        item = raw.strip()
        if not item:
            continue
        if item == "default":
            opts = SpeedOptions.defaults(device)
        elif item == "none":
            opts = SpeedOptions.none()
        elif item == "all":
            opts = SpeedOptions.all()
        elif item.startswith("ce-chunk-rows="):
            opts = opts.replace(ce_chunk_rows=int(item.split("=", 1)[1]))
        else:
            on = not (item.startswith("-") or item.startswith("no-"))
            name = item.lstrip("+-").removeprefix("no-")
            if name not in SWITCHES:
                raise SpeedSpecError(f"unknown speed switch {name!r} in {spec!r}; known: "
                                     f"{', '.join(SWITCHES)} (and default, none, all, ce-chunk-rows=N)")
            opts = opts.replace(**{SWITCHES[name]: on})
    return opts


def resolve(device: torch.device | str, spec: str | None = None, *, env: bool = True) -> SpeedOptions:
    """Device defaults, then `$HIGGS_CUSTOM_SPEED` (when `env`), then `spec`."""
    opts = SpeedOptions.defaults(device)
    if env:
        opts = apply_spec(opts, os.environ.get(ENV_VAR), device)
    return apply_spec(opts, spec, device)


def flipped(base: SpeedOptions, names: Iterable[str]) -> list[tuple[str, SpeedOptions]]:
    """(label, options) for each name with that one switch flipped; 'none' / 'all' as themselves."""
    out = []
    for name in names:
        if name in ("none", "all"):
            out.append((name, getattr(SpeedOptions, name)()))
            continue
        if name not in SWITCHES:
            raise SpeedSpecError(f"unknown speed switch {name!r}; known: {', '.join(SWITCHES)}")
        field = SWITCHES[name]
        value = not getattr(base, field)
        out.append((("+" if value else "-") + name, base.replace(**{field: value})))
    return out


def speed_of(model: torch.nn.Module) -> SpeedOptions:
    """The options `custom_impl.speedups.apply` attached to the model, else the plain defaults
    (only the gathered text head), whatever wrapper (DDP, peft) the model is in."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return getattr(inner, "higgs_speed", None) or SpeedOptions()
