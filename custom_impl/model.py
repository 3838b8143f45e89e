"""Model loading, LoRA and the forward call of the custom pipeline.

LoRA targets (found in `HiggsAudioModel`): every decoder layer's `self_attn.{q,k,v,o}_proj`,
its text MLP `mlp.{gate,up,down}_proj` and, in dual-FFN layers, the audio MLP
`audio_mlp.{gate,up,down}_proj` - peft matches module-name suffixes, so the seven names below
cover attention, MLP and audio MLP.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any

import torch
from boson_multimodal.model.higgs_audio import HiggsAudioModel
from peft import LoraConfig, get_peft_model
from torch.nn.parallel import DistributedDataParallel as DDP

from custom_impl.fast_head import TextHeadInputs, text_head_bypassed
from custom_impl.faults import is_on
from custom_impl.speed import SpeedOptions
from higgs_common.stages import ForwardOutputs, StageContext, TrainConfig

LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Flags the original trainer forced on; both add modules that no released checkpoint contains.
RANDOM_EXTRA_LAYER_FLAGS = {"use_audio_out_self_attention": True, "use_audio_out_embed_projector": True}

# Batch fields HiggsAudioModel.forward consumes (label_audio_ids is accepted and ignored upstream).
MODEL_INPUT_FIELDS = (
    "input_ids", "attention_mask", "audio_features", "audio_feature_attention_mask",
    "audio_in_ids", "audio_in_ids_start", "audio_out_ids", "audio_out_ids_start",
    "audio_out_ids_start_group_loc", "label_ids", "label_audio_ids",
)


def lora_config(train: TrainConfig) -> LoraConfig:
    # No task_type: with CAUSAL_LM peft passes labels=/inputs_embeds= that upstream forward rejects.
    return LoraConfig(r=train.lora_r, lora_alpha=train.lora_alpha, lora_dropout=train.lora_dropout,
                      target_modules=list(train.lora_target_modules), bias="none")


def load_dtype(device: torch.device, train: TrainConfig) -> torch.dtype:
    """bf16 for the FROZEN base of a bf16 LoRA run on CUDA, else fp32.

    Why: frozen weights get no updates, so an fp32 master copy of them buys nothing; under
    autocast every matmul rounds them to bf16 anyway (and the checkpoint is stored in bf16).
    Keeping them in fp32 costs 2x the weight memory plus a bf16 copy of every weight saved for
    backward each step.  peft keeps the trainable adapters in fp32 (autocast_adapter_dtype).
    Full fine-tuning keeps fp32 master weights; CPU always runs fp32.
    """
    if torch.device(device).type == "cuda" and train.use_lora and train.precision == "bf16":
        return torch.bfloat16
    return torch.float32


def build_model(ctx: StageContext, train: TrainConfig) -> torch.nn.Module:
    """HiggsAudioModel from ctx.model_path (+ LoRA when train.use_lora), in train mode.

    Fault `random-extra-layers` acts here: it forces config flags that add modules the checkpoint
    lacks; the missing keys are kept on `model.higgs_missing_keys` so tests/harness can see them.
    """
    torch.manual_seed(train.seed)
    config = copy.deepcopy(ctx.model_config)
    if is_on(ctx.faults, "random-extra-layers"):
        for key, value in RANDOM_EXTRA_LAYER_FLAGS.items():
            setattr(config, key, value)
    model, info = HiggsAudioModel.from_pretrained(str(ctx.model_path), config=config,
                                                  torch_dtype=load_dtype(ctx.device, train), output_loading_info=True)
    missing = list(info.get("missing_keys", []))
    model.to(ctx.device)
    if train.use_lora:
        model = get_peft_model(model, lora_config(train))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.higgs_missing_keys = missing
    # bf16 weights need no autocast, and must not get it: under autocast upstream's audio-code
    # embedding sum runs in fp32 and its index_put into the bf16 sequence raises (dtype mismatch).
    model.higgs_weights_dtype = load_dtype(ctx.device, train)
    model.train()
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (peft wrappers are kept: they own the LoRA forward)."""
    return model.module if isinstance(model, DDP) else model


def model_inputs(batch: Any) -> dict[str, Any]:
    get = batch.get if isinstance(batch, dict) else (lambda k: getattr(batch, k, None))
    return {k: get(k) for k in MODEL_INPUT_FIELDS}


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA only; CPU runs in fp32 (CPU bf16 autocast is slow and changes numerics)."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def forward(model: torch.nn.Module, batch: Any, ctx: StageContext, *, precision: str = "fp32",
            speed: SpeedOptions | None = None) -> ForwardOutputs:
    """Run the model (DDP-, peft- or plain-wrapped) on a collated batch.

    `speed=None` (the stage contract): upstream's outputs, full `logits` (B, L, V).  With
    `speed.fast_head` (the training path, `distributed.accumulate`): `logits` is None and
    `extra["text_head"]` holds the final hidden states (B, L, H) and the head's weight, for the
    loss to apply the head only at supervised rows (`custom_impl.fast_head`).

    Fault `ddp-unwrapped-forward`: calls `model.module(...)`, bypassing DDP's gradient hooks.
    """
    target = model
    if is_on(ctx.faults, "ddp-unwrapped-forward") and isinstance(model, DDP):
        target = model.module
    if getattr(unwrap(model), "higgs_weights_dtype", torch.float32) != torch.float32:
        precision = "fp32"   # weights already bf16: no autocast (see build_model)
    gathered = speed is not None and speed.fast_head
    with autocast_for(ctx.device, precision), (text_head_bypassed(model) if gathered else nullcontext()) as head:
        out = target(**model_inputs(batch))
    extra: dict[str, Any] = {"audio_out_mask": out.audio_out_mask, "attention_mask": out.attention_mask}
    if gathered:
        extra["text_head"] = TextHeadInputs(hidden=out.logits, weight=head.weight, chunk_rows=speed.ce_chunk_rows,
                                            liger=speed.liger_ce)
    return ForwardOutputs(
        logits=None if gathered else out.logits,
        audio_logits=out.audio_logits,
        expanded_labels=out.expanded_labels,
        expanded_input_ids=out.expanded_input_ids,
        extra=extra,
    )


def trainable_named_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable parameters with names independent of the DDP wrapper."""
    return [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]
