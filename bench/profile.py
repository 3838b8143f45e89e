"""Where a custom training step's time goes: `torch.profiler` over a few steps, summarised.

`profile_custom` builds the custom pipeline's model with its speed switches (as
`bench.train.run_custom` does), runs warm-up steps (torch.compile compiles there), times
a few unprofiled steps, then profiles a few more with `torch.profiler` (CPU + CUDA activities).
`summarise_kernels` turns the device events into:

* time per category, per step: matmul (cuBLAS/CUTLASS GEMMs, inductor matmul templates),
  attention (flash / memory-efficient / cuDNN SDPA kernels), norm (RMSNorm kernels, inductor
  kernels computing an rsqrt), optimizer (AdamW and gradient clipping: multi-tensor kernels),
  elementwise (everything else: fused pointwise/reduction kernels, copies, cross-entropy);
* idle GPU: the profiled wall time minus the union of kernel intervals, i.e. time the GPU waited
  for the host (kernel launches, Python, host syncs): the share of a launch/host-bound step;
* the top kernels by device time;
* on CUDA, the host syncs of one step (`torch.cuda.set_sync_debug_mode("warn")`: every `.item()`,
  `float(tensor)`, `.tolist()`, boolean-mask indexing, blocking copy), each a point where the host
  waits for the GPU to drain.

The profiler adds host overhead per operator, so the profiled step is slower than the unprofiled
one (both are reported) and the idle share is an upper bound.  On the CPU (smoke runs) the
operators' self times stand in for kernels; the numbers say nothing about a GPU.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

CATEGORIES = ("matmul", "attention", "norm", "elementwise", "optimizer")
# Checked in order: the first pattern a kernel name matches gives its category (else elementwise).
_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("optimizer", re.compile(r"multi_tensor_apply|adam|LpNorm|foreach", re.I)),
    ("attention", re.compile(r"flash|fmha|attention|sdpa|attn", re.I)),
    ("norm", re.compile(r"rms|norm|rsqrt", re.I)),
    ("matmul", re.compile(r"gemm|gemv|nvjet|xmma|cutlass|cublas|matmul|splitK|wgmma|_mm_|\bmm\b|addmm|bmm|"
                          r"triton_tem_|s16816|s1688|tensorop", re.I)),
)


@dataclass(frozen=True)
class Kernel:
    """One device activity: name, start and duration in microseconds."""

    name: str
    start_us: float
    duration_us: float


def category(name: str) -> str:
    """The category of a kernel (or CPU operator) name (module docstring)."""
    for label, pattern in _PATTERNS:
        if pattern.search(name):
            return label
    return "elementwise"


def busy_us(kernels: Iterable[Kernel]) -> float:
    """Length of the union of the kernels' intervals (overlapping streams count once), in us."""
    total, end = 0.0, float("-inf")
    for k in sorted(kernels, key=lambda k: k.start_us):
        a, b = k.start_us, k.start_us + k.duration_us
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def summarise_kernels(kernels: Sequence[Kernel], *, wall_s: float, steps: int, top: int = 15) -> dict[str, Any]:
    """Per-step device time by category, idle share and top kernels (module docstring).

    `wall_s` is the profiled steps' wall time; `steps` how many steps it covers.  Times are in ms per
    step; shares are of the profiled step's wall time.  Raises ValueError for steps < 1 or wall_s <= 0.
    """
    if steps < 1 or wall_s <= 0:
        raise ValueError(f"summarise_kernels: steps={steps}, wall_s={wall_s}: need at least one step and a wall time")
    step_ms = wall_s * 1e3 / steps
    by_cat = {c: 0.0 for c in CATEGORIES}
    by_name: dict[str, list[float]] = {}
    for k in kernels:
        by_cat[category(k.name)] += k.duration_us
        entry = by_name.setdefault(k.name, [0.0, 0])
        entry[0] += k.duration_us
        entry[1] += 1
    busy_ms = min(busy_us(kernels) / 1e3 / steps, step_ms)
    idle_ms = step_ms - busy_ms
    categories = {c: {"ms_per_step": by_cat[c] / 1e3 / steps, "share_of_step": by_cat[c] / 1e3 / steps / step_ms}
                  for c in CATEGORIES}
    categories["idle (host gaps)"] = {"ms_per_step": idle_ms, "share_of_step": idle_ms / step_ms}
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
    return {"steps": steps, "profiled_step_ms": step_ms, "gpu_busy_ms_per_step": busy_ms,
            "idle_share": idle_ms / step_ms, "kernels_per_step": len(kernels) / steps,
            "categories": categories,
            "top_kernels": [{"name": n, "category": category(n), "ms_per_step": t / 1e3 / steps, "calls_per_step": c / steps,
                             "share_of_step": t / 1e3 / steps / step_ms} for n, (t, c) in ranked]}


def device_kernels(prof: Any, device: torch.device) -> list[Kernel]:
    """The profiled device activities (CUDA kernels, copies, memsets); on the CPU the operators' self times."""
    from torch.autograd import DeviceType

    events = prof.events()
    if device.type == "cuda":
        return [Kernel(e.name, float(e.time_range.start), float(e.time_range.end - e.time_range.start))
                for e in events if e.device_type == DeviceType.CUDA]
    # CPU: every operator's self time (its own work, children excluded), placed at its start
    return [Kernel(e.name, float(e.time_range.start), float(e.self_cpu_time_total))
            for e in events if e.device_type == DeviceType.CPU and not e.is_async and e.self_cpu_time_total > 0]


def count_host_syncs(fn: Any, device: torch.device) -> int | None:
    """How many synchronizing CUDA calls `fn()` makes (torch's sync debug mode, one warning each);
    None off CUDA."""
    import warnings

    if device.type != "cuda":
        return None
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchronizing CUDA operation" in str(w.message) for w in caught)


def profile_custom(ctx: Any, train: Any, batch: Any, speed: Any, *, warmup: int = 3, steps: int = 3) -> dict[str, Any]:
    """Profile `steps` custom training steps on `batch` after `warmup` + `steps` unprofiled ones.

    Returns `summarise_kernels`'s dict plus `unprofiled_step_ms` (median), `batch_size`, `speed`,
    `device`, `peak_memory_gib`.  Failures (out of memory) propagate to the caller."""
    import statistics

    from custom_impl import model as cm
    from custom_impl import speedups
    from custom_impl import stages as cs
    from custom_impl.distributed import accumulate
    from bench import train as tb

    device = ctx.device
    restore = speedups.enter_process_settings(speed)
    model = opt = None
    try:
        tb._reset_peak(device)
        model = cs.build_model(ctx, train)
        speedups.apply(model, speed)
        model.train()
        opt, sched = cs.make_optimizer(model, train)
        params = [p for _, p in cm.trainable_named_parameters(model)]

        def one_step() -> None:
            accumulate(model, [batch], ctx, precision=train.precision)
            torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)

        plain = []
        for i in range(warmup + steps):
            tb.sync(device)
            t0 = time.perf_counter()
            one_step()
            tb.sync(device)
            if i >= warmup:
                plain.append(time.perf_counter() - t0)
        syncs = count_host_syncs(one_step, device)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            tb.sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                one_step()
            tb.sync(device)
            wall = time.perf_counter() - t0
        out = summarise_kernels(device_kernels(prof, device), wall_s=wall, steps=steps)
        out.update(unprofiled_step_ms=statistics.median(plain) * 1e3, batch_size=int(batch.input_ids.shape[0]),
                   speed=speed.describe(), device=str(device), peak_memory_gib=tb._peak(device),
                   host_syncs_per_step=syncs)
        return out
    finally:
        restore()
        if model is not None:
            speedups.release(model)
        del model, opt
        tb._free()


def render_profile(p: dict[str, Any]) -> str:
    """Markdown: the category table, the idle share, the top kernels."""
    lines = [f"## Profile: custom pipeline, batch {p['batch_size']} ({p['device']})", "",
             f"`torch.profiler` over {p['steps']} steps after warm-up; speed switches: {p['speed']}. "
             f"Step: {p['unprofiled_step_ms']:.1f} ms unprofiled, {p['profiled_step_ms']:.1f} ms profiled "
             f"(the profiler's host overhead); GPU busy {p['gpu_busy_ms_per_step']:.1f} ms per step, "
             f"{p['kernels_per_step']:.0f} device activities per step.", "",
             f"**Idle GPU (launch/host bound): {100 * p['idle_share']:.1f}% of the profiled step** "
             "(an upper bound: the profiler slows the host)."
             + (f" Host syncs per step: {p['host_syncs_per_step']} (`torch.cuda.set_sync_debug_mode`)."
                if p.get("host_syncs_per_step") is not None else ""), "",
             "| category | ms per step | share of step |", "|---|---|---|"]
    for name, v in p["categories"].items():
        lines.append(f"| {name} | {v['ms_per_step']:.2f} | {100 * v['share_of_step']:.1f}% |")
    lines += ["", "Kernels of overlapping streams are counted in full in their category; the idle row is "
                  "the wall time no kernel ran.", "",
              "| top kernels by device time | category | ms per step | calls per step | share |", "|---|---|---|---|---|"]
    for k in p["top_kernels"]:
        name = k["name"] if len(k["name"]) <= 90 else k["name"][:87] + "..."
        lines.append(f"| `{name.replace('|', '/')}` | {k['category']} | {k['ms_per_step']:.2f} | "
                     f"{k['calls_per_step']:.0f} | {100 * k['share_of_step']:.1f}% |")
    return "\n".join(lines) + "\n"
