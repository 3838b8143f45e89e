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
from custom_impl import speed as _speed
from custom_impl import speedups as _speedups
from custom_impl.distributed import accumulate, free_port
from custom_impl import faults as _faults_registry
from custom_impl.faults import check_faults
from higgs_common.conventions import DELAY_FROM_MODEL_CONFIG, Conventions, identity
from higgs_common.collator_settings import collator_settings
from higgs_common.converters import CHATML_SYSTEM_PROMPT, write_chatml_json
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


VERSION = "custom zero-shot pipeline (codeman911/higgs-audio a01ea1f, faults fixed), boson-multimodal 0.1.1"
FAULTS = _faults_registry.FAULTS


def _system_message(record: CanonicalRecord) -> str:
    """The ChatML file's system turn (higgs_common.converters.write_chatml_json): one fixed prompt."""
    del record
    return CHATML_SYSTEM_PROMPT


# The custom zero-shot conventions: the voice prompt is an <|AUDIO|> slot in the user turn, only
# the target is trained, the delay pattern follows the checkpoint, labels are upstream's
# [-100, codes, EOS] with the <|AUDIO_OUT|> text label kept, transcripts are used raw, and the loss
# is the hand-written one (shift within each segment, per-codebook means, global-token normalisation).
CONVENTIONS = Conventions(
    voice_prompt="audio_in_slot",
    trained_turns=frozenset({"target"}),
    delay_pattern=DELAY_FROM_MODEL_CONFIG,
    audio_label_layout="ignore_first",
    mask_audio_out_token_label=False,
    system_message=_system_message,
    normalize_transcript=identity,
    normalize_reference_transcript=identity,
    loss=_loss.CONVENTIONS,
    config_notes={
        "collator.class": ("HiggsAudioSampleCollator", "the custom pipeline calls the upstream collator directly"),
        "lora.task_type": (None, "no task type: with CAUSAL_LM peft passes labels=/inputs_embeds= that upstream "
                                 "forward rejects"),
        "distributed.find_unused_parameters": (False, "the manual loop wraps DDP with find_unused_parameters=False "
                                                      "(every trainable parameter gets a gradient)"),
        "optimizer.no_decay": ([], "AdamW decays every trainable parameter (LoRA adapters have no bias or norm "
                                   "weights)"),
        "precision.autocast": ("none", "with LoRA (the default recipe) the manual loop runs the frozen base as loaded "
                                       "(bf16 on CUDA) without autocast; autocast only for a full fine-tune"),
        "precision.trainable_dtype": ("torch.float32", "LoRA adapters stay fp32 (peft's autocast_adapter_dtype), "
                                                       "so AdamW updates them at full precision"),
    },
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


def backward(loss: LossBreakdown, model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    loss.total.backward()
    return grads_of(model)


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """Gradients of trainable parameters by (DDP-independent) name; None where none arrived."""
    # Kept on the parameters' device: the harness diffs on the GPU when the model is there.
    return {n: (p.grad.detach().clone() if p.grad is not None else None)
            for n, p in _model.trainable_named_parameters(model)}


def optimizer_update(params: list[torch.Tensor], optimizer: Any, scheduler: Any | None, train: TrainConfig) -> float:
    """One optimizer update of the custom pipeline, the ONE copy every caller runs (the training
    CLI's loop, `ddp_run`, the stage contract's `step`): clip the global L2 norm of the gradients
    to `train.max_grad_norm` (no clipping when it is 0 or unset), AdamW step, scheduler step (when
    given), zero the gradients.  Returns the gradient norm before clipping (a Python float: one
    host sync).  Follows upstream boson-ai/higgs-audio trainer and HF Trainer's order (clip, step,
    schedule, zero)."""
    max_norm = train.max_grad_norm if train.max_grad_norm and train.max_grad_norm > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def step(model: torch.nn.Module, optimizer: Any, ctx: StageContext, train: TrainConfig,
         scheduler: Any | None = None) -> dict[str, torch.Tensor]:
    """`optimizer_update`, the training loop's own update (with `scheduler` when the caller hands it
    over, else the caller steps it); returns the trainable parameters."""
    optimizer_update([p for _, p in _model.trainable_named_parameters(model)], optimizer, scheduler, train)
    return {n: p.detach().clone() for n, p in _model.trainable_named_parameters(model)}


def make_optimizer(model: torch.nn.Module, train: TrainConfig) -> tuple[Any, Any]:
    """AdamW over the trainable parameters and the schedule.  torch's single-kernel (fused) AdamW,
    the same update rule, when the model carries the speed switch fused-adamw and sits on CUDA."""
    params = [p for _, p in _model.trainable_named_parameters(model)]
    fused = {"fused": True} if params and _speedups.fused_adamw(_speed.speed_of(model), params[0].device) else {}
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, betas=tuple(train.adam_betas), **fused,
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
    """Settings as the code uses them (read off the real objects and constants), machine-readable."""
    ckw = collator_settings(_collator.make_collator(ctx.model_config))
    lcfg = _model.lora_config(train)
    cuda = ctx.device.type == "cuda"
    return {
        "message_layout": {"voice_prompt": "audio_in_slot", "trained_turns": ["target"], "start_index": 0,
                           "messages": ["system:text", "user:text+audio+text", "assistant:audio"]},
        "collator": {"class": "HiggsAudioSampleCollator", **ckw, "label_audio_ids": "upstream",
                     "deep_copy_samples": True},
        "loss": _loss.CONVENTIONS.to_json(),
        "lora": {"enabled": train.use_lora, "r": lcfg.r, "alpha": lcfg.lora_alpha,
                 "dropout": lcfg.lora_dropout, "target_modules": sorted(lcfg.target_modules),
                 "bias": lcfg.bias, "task_type": lcfg.task_type},
        "optimizer": {"class": "torch.optim.AdamW", "lr": train.learning_rate,
                      "betas": list(train.adam_betas), "eps": train.adam_eps,
                      "weight_decay": train.weight_decay, "no_decay": [],
                      "max_grad_norm": train.max_grad_norm},
        "schedule": {"type": train.schedule, "warmup_steps": train.warmup_steps, "max_steps": train.max_steps},
        "precision": {"mode": "bf16" if (cuda and train.precision == "bf16") else "fp32",
                      "autocast": "bf16" if (cuda and train.precision == "bf16" and not train.use_lora) else "none",
                      "weights_dtype": str(_model.load_dtype(ctx.device, train)),
                      "trainable_dtype": "torch.float32"},
        "distributed": {"wrapper": "DistributedDataParallel", "no_sync": "all_but_last_micro_batch",
                        "sampler": "DistributedSampler", "find_unused_parameters": False},
        "faults": sorted(ctx.faults),
        **({"model_flags_forced": dict(_model.RANDOM_EXTRA_LAYER_FLAGS)} if "random-extra-layers" in ctx.faults else {}),
    }


# ---------------------------------------------------------------------------------- DDP probe
@dataclasses.dataclass
class DDPRankResult:
    """What one rank of `ddp_run` saw: enough to tell synchronised ranks from unsynchronised ones."""

    grads: dict[str, torch.Tensor | None]   # accumulated gradients of step 1, after DDP's all-reduce
    params: dict[str, torch.Tensor]         # trainable parameters after optimizer step 1
    losses: torch.Tensor                    # (steps,) float64 global-batch loss of each step


def _noise(t: torch.Tensor, rel: float, seed: int) -> torch.Tensor:
    """t * (1 + rel * N(0, 1)), the same on every rank (seeded by `seed`, not by the rank)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return t.mul_(1 + rel * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype))


def _noisy_allreduce_hook(rel: float):
    """DDP communication hook: the usual all-reduce (average), then relative noise of size `rel`
    on the reduced bucket: what another reduction order, topology or world size could produce."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    def hook(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        fut = default_hooks.allreduce_hook(None, bucket)

        def add(f: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
            return _noise(f.value()[0], rel, 1000 + bucket.index())
        return fut.then(add)
    # DDP checks the hook's annotations as objects (this module's are strings: `from __future__`).
    hook.__annotations__ = {"state": object, "bucket": dist.GradBucket, "return": torch.futures.Future[torch.Tensor]}
    return hook


def _accumulation_run(rank: int, world_size: int, ctx: StageContext, train: TrainConfig, items: list[DatasetItem],
                      grad_accum: int, steps: int, init_state: dict[str, torch.Tensor] | None,
                      grad_noise: float) -> dict[str, Any]:
    """The training loop's micro-step (accumulate, clip, AdamW, schedule) for `steps` steps on this
    rank's shard; DDP-wrapped when a process group is up.  Returns step-1 grads/params and losses."""
    local = _dataset.shard(items, rank, world_size)
    per = max(1, len(local) // grad_accum)
    micro = [local[i * per:(i + 1) * per] for i in range(grad_accum)]
    model = _model.build_model(ctx, train).to(ctx.device)
    # The training loop's speed switches (device defaults, $HIGGS_CUSTOM_SPEED), compilation left
    # out (it changes no result and would cost every worker minutes) and tf32 too (a process-wide
    # setting that changes numerics: the check compares at fp32 rounding).
    _speedups.apply(model, _speed.resolve(ctx.device).replace(compile_layers=False, cuda_graphs=False, tf32=False))
    if init_state:
        with torch.no_grad():
            for n, p in _model.trainable_named_parameters(model):
                if n in init_state:
                    p.copy_(init_state[n].to(p.device, p.dtype))
    wrapped: torch.nn.Module = model
    if dist.is_initialized():
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=False)
        if grad_noise:
            wrapped.register_comm_hook(None, _noisy_allreduce_hook(grad_noise))
    optimizer, scheduler = make_optimizer(model, train)
    params = [p for _, p in _model.trainable_named_parameters(wrapped)]
    batches = [_collator.batch_to_device(_collator.collate(m, ctx), ctx.device) for m in micro]
    ids = [[it.sample_id for it in m] for m in micro]
    losses = []
    result: dict[str, Any] = {}
    for step_no in range(1, steps + 1):
        objectives: list[torch.Tensor] = []
        accumulate(wrapped, batches, ctx, precision="fp32", step=step_no, sample_ids=ids, objectives=objectives)
        if grad_noise and not dist.is_initialized():
            for k, p in enumerate(params):
                if p.grad is not None:
                    _noise(p.grad, grad_noise, 1000 + k)
        share = torch.stack(objectives).sum().double().reshape(1)     # this rank's part of the global loss
        if dist.is_initialized():
            share = share.to(ctx.device)
            dist.all_reduce(share, op=dist.ReduceOp.SUM)
        losses.append(float(share))
        if step_no == 1:
            result["grads"] = {k: (None if v is None else v.cpu()) for k, v in grads_of(wrapped).items()}
        optimizer_update(params, optimizer, scheduler, train)
        if step_no == 1:
            result["params"] = {n: p.detach().cpu().clone() for n, p in _model.trainable_named_parameters(wrapped)}
    result["losses"] = torch.tensor(losses, dtype=torch.float64)
    return result


def _ddp_worker(rank: int, world_size: int, port: int, ctx: StageContext, train: TrainConfig,
                items: list[DatasetItem], grad_accum: int, steps: int, out_dir: str,
                init_state: dict[str, torch.Tensor] | None, grad_noise: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    nccl = ctx.device.type == "cuda"
    if nccl:   # one GPU per rank, as under torchrun
        torch.cuda.set_device(rank)
        ctx = dataclasses.replace(ctx, device=torch.device("cuda", rank))
    dist.init_process_group("nccl" if nccl else "gloo", rank=rank, world_size=world_size)
    try:
        result = _accumulation_run(rank, world_size, ctx, train, items, grad_accum, steps, init_state, grad_noise)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def ddp_run(ctx: StageContext, train: TrainConfig, items: Sequence[DatasetItem], *,
            world_size: int = 2, grad_accum: int = 2, steps: int = 1, faults: Sequence[str] | None = None,
            init_state: dict[str, torch.Tensor] | None = None, grad_noise: float = 0.0) -> list[DDPRankResult]:
    """Each rank's step-1 gradients and parameters, and every step's global loss, of the training
    loop's own micro-step code (`distributed.accumulate`, clipping, AdamW, the schedule).

    world_size 1 runs in this process (gradient accumulation alone: `grad_accum` micro-batches vs
    one batch); more ranks spawn processes (NCCL, one GPU each, when `ctx` is on CUDA and there are
    enough GPUs; gloo on the CPU otherwise).  Rank r takes the contiguous shard r of `items`, splits
    it into `grad_accum` micro-batches and runs `steps` optimizer steps on that same global batch.
    `faults` (default: ctx.faults) may include the DDP faults.  `init_state` (name -> tensor) sets
    the trainable parameters after the model is built (e.g. non-zero LoRA B).  `grad_noise` (test
    hook) multiplies every reduced gradient by 1 + grad_noise * N(0, 1), the size of another reduction
    order.  Without a fault, every rank reproduces, within float tolerance, one process that trains
    on all of `items` at once (world_size=1, grad_accum=1).  Computed in fp32 whatever
    `train.precision` says: the check is about synchronisation and normalisation.
    """
    faults_set = check_faults(ctx.faults if faults is None else faults)
    if len(items) % (world_size * grad_accum):
        raise ValueError(f"{len(items)} items do not split into {world_size} ranks x {grad_accum} micro-batches")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    init = None if init_state is None else {k: v.detach().cpu() for k, v in init_state.items()}
    # The code cache (codec, file handles) is not needed past the dataset stage and may not pickle.
    # (a 1-rank baseline uses the same device as the multi-rank run it is compared with)
    enough_gpus = ctx.device.type == "cuda" and torch.cuda.device_count() >= max(world_size, 2)
    device = torch.device("cuda") if enough_gpus else torch.device("cpu")
    wctx = dataclasses.replace(ctx, faults=faults_set, device=device, code_cache=None)
    if world_size == 1:
        if device.type == "cuda":
            wctx = dataclasses.replace(wctx, device=torch.device("cuda", 0))
        return [DDPRankResult(**_accumulation_run(0, 1, wctx, train, list(items), grad_accum, steps, init,
                                                  grad_noise))]
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="custom_ddp_") as tmp:
        mp.start_processes(_ddp_worker, args=(world_size, port, wctx, train, list(items), grad_accum, steps, tmp,
                                              init, grad_noise),
                           nprocs=world_size, join=True, start_method="spawn")
        return [DDPRankResult(**torch.load(Path(tmp) / f"rank{r}.pt")) for r in range(world_size)]


def ddp_backward(ctx: StageContext, train: TrainConfig, items: Sequence[DatasetItem], *,
                 world_size: int = 2, grad_accum: int = 2, faults: Sequence[str] | None = None
                 ) -> list[dict[str, torch.Tensor]]:
    """Each rank's accumulated gradients after one optimizer step's worth of micro-batches (`ddp_run`)."""
    return [r.grads for r in ddp_run(ctx, train, items, world_size=world_size, grad_accum=grad_accum,
                                     steps=1, faults=faults)]
