"""torch.distributed plumbing and THE micro-step code shared by the training loop and `ddp_backward`.

One function, `accumulate`, does forward + loss + backward over a list of micro-batches with DDP's
`no_sync` on every micro-batch except the last (gradients are all-reduced once, when the last
backward runs).  The training loop and the harness's `stages.ddp_backward` both call it, so the
harness tests the code that trains, not a copy of it.
"""

from __future__ import annotations

import math
import os
import socket
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from custom_impl.faults import is_on
from custom_impl.loss import batch_label_counts, breakdown, compute_terms, global_objective
from custom_impl.model import forward
from custom_impl.speed import SpeedOptions, speed_of
from higgs_common.guards import NonFiniteLossError  # noqa: F401  (re-exported: raised by check_finite)
from higgs_common.stages import LossBreakdown, StageContext


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port free right now on localhost (for MASTER_PORT of spawned workers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(prefer_cuda: bool = True) -> DistInfo:
    """Join the process group torchrun describes (env://); a lone process runs without one.

    gloo on CPU, NCCL on CUDA.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = prefer_cuda and torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    initialized_here = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://",
                                world_size=world, rank=rank)
        initialized_here = True
    return DistInfo(rank, world, local_rank, device, initialized_here)


def teardown(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, info: DistInfo, *, bucket_cap_mb: float | None = None) -> torch.nn.Module:
    """DDP-wrap when running with more than one process (broadcasts rank 0's weights).

    `bucket_cap_mb` (torch's default 25 when None): the gradient all-reduce runs per bucket as
    buckets fill during backward.  A cap above the trainable gradients' size (LoRA r32 on the full
    model: ~316 MB fp32) gives one all-reduce after the backward instead of ~13 overlapping it.
    """
    if info.world_size > 1:
        ids = [info.device.index] if info.device.type == "cuda" else None
        kwargs = {} if bucket_cap_mb is None else {"bucket_cap_mb": bucket_cap_mb}
        return DDP(model, device_ids=ids, find_unused_parameters=False, **kwargs)
    return model


def world_size_now() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def syncs_on(i: int, n: int, faults: frozenset[str]) -> bool:
    """Whether micro-batch i of n runs WITH gradient all-reduce.

    Correct: only the last (the accumulated gradient is reduced once).  Fault
    `inverted-no-sync` (the original's `if accum_step % grad_accum == 0: sync`): only the first.
    """
    return i == 0 if is_on(faults, "inverted-no-sync") else i == n - 1


def check_finite(lb: LossBreakdown, *, step: int, sample_ids: Sequence[str]) -> None:
    values = {"total": float(lb.total.detach()), "text": float(lb.text), "audio": float(lb.audio)}
    values.update({f"cb{i}": float(v) for i, v in enumerate(lb.per_codebook.tolist())})
    if not all(math.isfinite(v) for v in values.values()):
        raise NonFiniteLossError(f"non-finite loss at step {step} on samples {list(sample_ids)}: {values}")


def accumulate(model: torch.nn.Module, micro_batches: Sequence[Any], ctx: StageContext, *,
               precision: str = "fp32", step: int = 0,
               sample_ids: Sequence[Sequence[str]] | None = None,
               objectives: list[torch.Tensor] | None = None,
               speed: SpeedOptions | None = None) -> list[LossBreakdown]:
    """Forward/loss/backward over the micro-batches of one optimizer step (gradients accumulate).

    Objective = mean loss over the whole global batch (all micro-batches of all ranks): the
    denominators (supervised text tokens, per-codebook audio frames) are all-reduced first.
    Returns each micro-batch's local LossBreakdown for logging; `objectives`, if given, receives
    each micro-batch's detached share of the global loss (their sum over ranks is the global loss).
    `speed` (default: the options `custom_impl.speedups.apply` attached to the model, else
    `SpeedOptions()`): with `fast_head` (the default) the text head runs only at supervised rows.
    """
    speed = speed if speed is not None else speed_of(model)
    faults = ctx.faults
    cfg = ctx.model_config
    n = len(micro_batches)
    counts = [batch_label_counts(b, faults=faults, audio_in_token_id=cfg.audio_in_token_idx,
                                 audio_out_token_id=cfg.audio_out_token_idx) for b in micro_batches]
    n_cb = max((c[1].numel() for c in counts), default=0)
    totals = torch.zeros(1 + n_cb, dtype=torch.float64)
    for t, cb in counts:
        totals[0] += t
        if cb.numel():
            totals[1:] += cb.double()
    world = world_size_now()
    if world > 1:
        comm = totals.to(ctx.device) if ctx.device.type == "cuda" else totals
        dist.all_reduce(comm, op=dist.ReduceOp.SUM)
        totals = comm.cpu()
    text_total, cb_totals = int(totals[0]), totals[1:].long()

    out: list[LossBreakdown] = []
    for i, batch in enumerate(micro_batches):
        ids = sample_ids[i] if sample_ids is not None else []
        sync = syncs_on(i, n, faults) or not isinstance(model, DDP)
        with (nullcontext() if sync else model.no_sync()):
            outputs = forward(model, batch, ctx, precision=precision, speed=speed)
            terms = compute_terms(outputs, batch, faults=faults)
            if terms.text_count != counts[i][0] or (
                    terms.audio_counts.numel() and not torch.equal(terms.audio_counts, counts[i][1])):
                raise RuntimeError(f"pre-counted supervised tokens {counts[i][0]}/{counts[i][1].tolist()} "
                                   f"differ from the loss's {terms.text_count}/{terms.audio_counts.tolist()} "
                                   f"(samples {list(ids)})")
            lb = breakdown(terms)
            check_finite(lb, step=step, sample_ids=ids)
            objective = global_objective(terms, text_total, cb_totals if cb_totals.numel() else terms.audio_counts,
                                         world)
            objective.backward()
        if objectives is not None:
            objectives.append(objective.detach() / world)
        out.append(lb)
    return out
