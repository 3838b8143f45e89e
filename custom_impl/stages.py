"""`custom_impl.stages`: the custom zero-shot pipeline behind the stage contract
(`higgs_common.stages`), plus `ddp_run` / `ddp_backward`, which run the training loop's own
micro-step code under real torch.distributed so the harness can check gradient synchronisation.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup, \
    get_linear_schedule_with_warmup

from custom_impl import collator as _collator
from custom_impl import dataset as _dataset
from custom_impl import loss as _loss
from custom_impl import model as _model
from custom_impl.distributed import accumulate, free_port
from custom_impl.faults import check_faults
from higgs_common.converters import write_chatml_json
from higgs_common.manifest import CanonicalRecord
from higgs_common.stages import (DatasetItem, ForwardOutputs, LossBreakdown, StageContext, TrainConfig)

NAME = "custom"
NATIVE_FILE = "train_chatml.json"

DEFAULT_TRAIN = TrainConfig(
    use_lora=True,
    lora_r=32,
    lora_alpha=64,
    lora_dropout=0.05,
    lora_target_modules=_model.LORA_TARGET_MODULES,
    learning_rate=2e-4,            # upstream trainer.py --lr default
    weight_decay=0.01,
    adam_betas=(0.9, 0.95),
    adam_eps=1e-8,
    warmup_steps=100,
    max_steps=20,
    max_grad_norm=1.0,
    schedule="cosine",
    precision="bf16",              # autocast on CUDA only; CPU runs fp32
    seed=0,
)


def _faults(ctx: StageContext) -> frozenset[str]:
    return check_faults(ctx.faults)


def write_native(records: Sequence[CanonicalRecord], out_dir: Path) -> Path:
    return write_chatml_json(records, Path(out_dir) / NATIVE_FILE)


def dataset(native_path: Path, ctx: StageContext) -> list[DatasetItem]:
    _faults(ctx)
    return _dataset.load_dataset(Path(native_path), ctx)


def collate(items: Sequence[DatasetItem], ctx: StageContext) -> Any:
    _faults(ctx)
    return _collator.collate(items, ctx)


def build_model(ctx: StageContext, train: TrainConfig) -> torch.nn.Module:
    _faults(ctx)
    return _model.build_model(ctx, train)


def forward(model: torch.nn.Module, batch: Any, ctx: StageContext) -> ForwardOutputs:
    _faults(ctx)
    return _model.forward(model, _collator.batch_to_device(batch, ctx.device), ctx)


def loss(outputs: ForwardOutputs, batch: Any, ctx: StageContext) -> LossBreakdown:
    return _loss.compute_loss(outputs, batch, faults=_faults(ctx))


def backward(loss: LossBreakdown, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    loss.total.backward()
    return grads_of(model)


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gradients of trainable parameters by (DDP-independent) name; zeros where none arrived."""
    # Kept on the parameters' device: the harness diffs on the GPU when the model is there.
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in _model.trainable_named_parameters(model)}


def step(model: torch.nn.Module, optimizer: Any, ctx: StageContext) -> dict[str, torch.Tensor]:
    """Clip (DEFAULT_TRAIN.max_grad_norm), optimizer step, zero grads; returns trainable params."""
    params = [p for _, p in _model.trainable_named_parameters(model)]
    torch.nn.utils.clip_grad_norm_(params, DEFAULT_TRAIN.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {n: p.detach().clone() for n, p in _model.trainable_named_parameters(model)}


def make_optimizer(model: torch.nn.Module, train: TrainConfig) -> tuple[Any, Any]:
    params = [p for _, p in _model.trainable_named_parameters(model)]
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, betas=tuple(train.adam_betas),
                                  eps=train.adam_eps, weight_decay=train.weight_decay)
    if train.schedule == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, train.warmup_steps, train.max_steps)
    elif train.schedule == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, train.warmup_steps, train.max_steps)
    elif train.schedule == "constant":
        scheduler = get_constant_schedule_with_warmup(optimizer, train.warmup_steps)
    else:
        raise ValueError(f"unknown schedule {train.schedule!r} (cosine | linear | constant)")
    return optimizer, scheduler


def effective_config(ctx: StageContext, train: TrainConfig) -> dict[str, Any]:
    """Settings as the code uses them (generated from the real objects/constants)."""
    ckw = {k: v for k, v in _collator.collator_kwargs(ctx.model_config).items() if k != "whisper_processor"}
    ckw["whisper_processor"] = None
    lcfg = _model.lora_config(train)
    return {
        "message_layout": {"messages": list(_dataset.MESSAGE_LAYOUT), "start_index": 0,
                           "trained_turns": ["assistant[2]"],
                           "reference_audio_placement": "user turn, <|AUDIO|> (audio-in codes, never a label)",
                           "target_audio_placement": "assistant turn, <|AUDIO_OUT|> (the only audio label)"},
        "collator": {"class": "HiggsAudioSampleCollator", **ckw, "label_audio_ids": "upstream labels",
                     "deep_copy_samples": True},
        "loss": {"text": _loss.REDUCTION.split("; ")[0], "audio": _loss.REDUCTION.split("; ")[1],
                 "total": "text + audio (an all -100 audio label raises AudioLabelError)",
                 "audio_labels": "label_audio_ids ([-100, codes, EOS] per segment, delayed)",
                 "audio_shift": "1, within each segment", "delay_pattern_in_training": ckw["use_delay_pattern"],
                 "ddp_normalisation": "global supervised-token counts over ranks and micro-batches"},
        "lora": {"enabled": train.use_lora, "r": lcfg.r, "alpha": lcfg.lora_alpha,
                 "dropout": lcfg.lora_dropout, "target_modules": sorted(lcfg.target_modules),
                 "bias": lcfg.bias, "task_type": lcfg.task_type},
        "optimizer": {"class": "torch.optim.adamw.AdamW", "lr": train.learning_rate,
                      "betas": list(train.adam_betas), "eps": train.adam_eps,
                      "weight_decay": train.weight_decay, "no_decay": "none",
                      "max_grad_norm": train.max_grad_norm},
        "schedule": {"type": train.schedule, "warmup_steps": train.warmup_steps, "max_steps": train.max_steps},
        "precision": {"mode": "bf16" if (ctx.device.type == "cuda" and train.precision == "bf16") else "fp32",
                      "autocast": "bf16 on CUDA" if train.precision == "bf16" else "none",
                      "weights_dtype": "torch.float32"},
        "distributed": {"launcher": "torchrun (manual loop)", "wrapper": "DistributedDataParallel",
                        "backend": "nccl on CUDA, gloo on CPU", "no_sync": "all micro-batches but the last",
                        "sampler": "DistributedSampler", "find_unused_parameters": False},
        "faults": sorted(ctx.faults),
        **({"model_flags_forced": dict(_model.RANDOM_EXTRA_LAYER_FLAGS)} if "random-extra-layers" in ctx.faults else {}),
    }


# ---------------------------------------------------------------------------------- DDP probe
@dataclasses.dataclass
class DDPRankResult:
    """What one rank of `ddp_run` saw: enough to tell synchronised ranks from unsynchronised ones."""

    grads: dict[str, torch.Tensor]          # accumulated gradients of step 1, after DDP's all-reduce
    params: dict[str, torch.Tensor]         # trainable parameters after optimizer step 1
    losses: torch.Tensor                    # (steps,) float64 global-batch loss of each step


def _ddp_worker(rank: int, world_size: int, port: int, ctx: StageContext, train: TrainConfig,
                items: list[DatasetItem], grad_accum: int, steps: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    nccl = ctx.device.type == "cuda"
    if nccl:   # one GPU per rank, as under torchrun
        torch.cuda.set_device(rank)
        ctx = dataclasses.replace(ctx, device=torch.device("cuda", rank))
    dist.init_process_group("nccl" if nccl else "gloo", rank=rank, world_size=world_size)
    try:
        local = _dataset.shard(items, rank, world_size)
        per = max(1, len(local) // grad_accum)
        micro = [local[i * per:(i + 1) * per] for i in range(grad_accum)]
        model = _model.build_model(ctx, train).to(ctx.device)
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rank] if nccl else None, find_unused_parameters=False)
        optimizer, scheduler = make_optimizer(model, train)
        params = [p for _, p in _model.trainable_named_parameters(ddp)]
        batches = [_collator.batch_to_device(_collator.collate(m, ctx), ctx.device) for m in micro]
        ids = [[it.sample_id for it in m] for m in micro]
        losses = []
        result: dict[str, Any] = {}
        for step in range(1, steps + 1):
            objectives: list[torch.Tensor] = []
            accumulate(ddp, batches, ctx, precision="fp32", step=step, sample_ids=ids, objectives=objectives)
            share = torch.stack(objectives).sum().double().reshape(1)     # this rank's part of the global loss
            dist.all_reduce(share, op=dist.ReduceOp.SUM)
            losses.append(float(share))
            if step == 1:
                result["grads"] = {k: v.cpu() for k, v in grads_of(ddp).items()}
            torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if step == 1:
                result["params"] = {n: p.detach().cpu().clone() for n, p in _model.trainable_named_parameters(ddp)}
        result["losses"] = torch.tensor(losses, dtype=torch.float64)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def ddp_run(ctx: StageContext, train: TrainConfig, items: Sequence[DatasetItem], *,
            world_size: int = 2, grad_accum: int = 2, steps: int = 1, faults: Sequence[str] | None = None
            ) -> list[DDPRankResult]:
    """Each rank's step-1 gradients and parameters, and every step's global loss, under real DDP.

    Spawns `world_size` processes (NCCL, one GPU each, when `ctx` is on CUDA and there are enough GPUs;
    gloo on the CPU otherwise); rank r takes the contiguous shard r of `items`, splits it into
    `grad_accum` micro-batches and runs `distributed.accumulate` (the training loop's own code),
    clipping, AdamW and the schedule, `steps` times on that same global batch.  `faults` (default:
    ctx.faults) may include the DDP faults.  Without a fault every rank reproduces, within float
    tolerance, a single process that trains on all of `items` at once (world_size=1, grad_accum=1).
    Computed in fp32 whatever `train.precision` says: the check is about synchronisation, and fp32
    keeps the honest differences (reduction order) far below what a missed all-reduce causes.
    """
    faults_set = check_faults(ctx.faults if faults is None else faults)
    if len(items) % (world_size * grad_accum):
        raise ValueError(f"{len(items)} items do not split into {world_size} ranks x {grad_accum} micro-batches")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    # The code cache (codec, file handles) is not needed past the dataset stage and may not pickle.
    # NCCL with one GPU per rank when the context is on CUDA and there are enough GPUs (issue 8's
    # multi-GPU check); otherwise gloo ranks on the CPU, which still exercise DDP's all-reduce.
    # (a 1-rank baseline uses the same backend as the multi-rank run it is compared with)
    enough_gpus = ctx.device.type == "cuda" and torch.cuda.device_count() >= max(world_size, 2)
    device = torch.device("cuda") if enough_gpus else torch.device("cpu")
    wctx = dataclasses.replace(ctx, faults=faults_set, device=device, code_cache=None)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="custom_ddp_") as tmp:
        mp.start_processes(_ddp_worker, args=(world_size, port, wctx, train, list(items), grad_accum, steps, tmp),
                           nprocs=world_size, join=True, start_method="spawn")
        return [DDPRankResult(**torch.load(Path(tmp) / f"rank{r}.pt")) for r in range(world_size)]


def ddp_backward(ctx: StageContext, train: TrainConfig, items: Sequence[DatasetItem], *,
                 world_size: int = 2, grad_accum: int = 2, faults: Sequence[str] | None = None
                 ) -> list[dict[str, torch.Tensor]]:
    """Each rank's accumulated gradients after one optimizer step's worth of micro-batches (`ddp_run`)."""
    return [r.grads for r in ddp_run(ctx, train, items, world_size=world_size, grad_accum=grad_accum,
                                     steps=1, faults=faults)]
