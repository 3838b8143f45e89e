"""Stage-contract pieces shared by adapters of scripts that train with the HF `Trainer`.

The public Higgs Audio scripts wrap `HiggsAudioModel` in their own ``nn.Module`` (a ``.model``
attribute, float inputs cast, labels stripped), compute forward and loss in one
``Trainer.compute_loss``, and leave the update to `transformers.Trainer`.  These helpers keep an
adapter around such a script to the script-specific parts: `attach_wrapper`/`wrapper_of` (the
harness sees the inner model's parameter names, the script's wrapper still runs the forward),
`batch_fields`, `gradients`, `trainer_step` (the Trainer's clip/step/zero_grad), `trainer_optimizer`
(what the script's Trainer subclass builds) and `effective_config` (sections read off the built
objects; `higgs_common.stages.EFFECTIVE_CONFIG_SECTIONS`).
"""

from __future__ import annotations

from typing import Any

import torch

from higgs_common.collator_settings import collator_settings
from higgs_common.conventions import Conventions

# Fields of upstream HiggsAudioBatchInput, which `model(**batch)` takes.
BATCH_FIELDS: tuple[str, ...] = (
    "input_ids", "attention_mask", "audio_features", "audio_feature_attention_mask", "audio_out_ids",
    "audio_out_ids_start", "audio_out_ids_start_group_loc", "audio_in_ids", "audio_in_ids_start", "label_ids",
    "label_audio_ids", "reward",
)
_WRAPPER = "_higgs_diff_wrapper"


def batch_fields(batch: Any, device: torch.device | None = None) -> dict[str, Any]:
    """{field: value} of any Higgs batch (either side's collator), tensors moved to `device`."""
    out = {k: getattr(batch, k, None) for k in BATCH_FIELDS}
    if device is not None:
        out = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
    return out


def attach_wrapper(wrapper: torch.nn.Module) -> torch.nn.Module:
    """The wrapper's inner model (``wrapper.model``), remembering the wrapper (not as a sub-module)."""
    inner = wrapper.model
    inner.__dict__[_WRAPPER] = wrapper
    return inner


def wrapper_of(model: torch.nn.Module) -> torch.nn.Module | None:
    """The script's wrapper of a model from `attach_wrapper`, else None."""
    return model.__dict__.get(_WRAPPER)


def gradients(total: torch.Tensor, model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """``total.backward()``; every trainable parameter's gradient by name (None where none arrived)."""
    model.zero_grad(set_to_none=True)
    total.backward()
    return {n: (p.grad.detach().clone() if p.grad is not None else None)
            for n, p in model.named_parameters() if p.requires_grad}


def trainer_step(model: torch.nn.Module, optimizer: Any, max_grad_norm: float | None) -> dict[str, torch.Tensor]:
    """The HF Trainer's update: clip trainable gradients to `max_grad_norm`, ``optimizer.step()``,
    zero grads (the Trainer steps the scheduler next); returns the trainable parameters."""
    if max_grad_norm is not None and max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class _Probe(torch.nn.Module):
    """A model whose parameters are the given model's, with the ``config`` a Trainer subclass reads."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.config = getattr(model, "config", None)


def trainer_optimizer(trainer_cls: type, model: torch.nn.Module, args: Any, num_training_steps: int
                      ) -> tuple[Any, Any]:
    """(optimizer, scheduler) that ``trainer_cls(model=..., args=args).create_optimizer_and_scheduler``
    builds: the script's wrapper when `model` has one, else `model` itself (the harness's LR probe)."""
    target = wrapper_of(model) or _Probe(model)
    trainer = trainer_cls(model=target, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=num_training_steps)
    return trainer.optimizer, trainer.lr_scheduler


def schedule_type(args: Any) -> str:
    """The HF TrainingArguments' lr_scheduler_type as a plain string ("linear", "cosine", "constant", ...)."""
    return str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))


def effective_config(*, conventions: Conventions, collator: Any, args: Any, lora: Any, use_lora: bool,
                     num_training_steps: int, trainable_dtype: str, messages: list[str]) -> dict[str, Any]:
    """The sections of `EFFECTIVE_CONFIG_SECTIONS`, read off a built collator (its ``base_collator``),
    TrainingArguments `args` and peft LoraConfig `lora`; layout and loss as `conventions` declare."""
    from transformers import Trainer
    opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    precision = "bf16" if args.bf16 else ("fp16" if args.fp16 else "fp32")
    lora_section: dict[str, Any] = {"enabled": use_lora}
    if use_lora:
        lora_section.update(r=lora.r, alpha=lora.lora_alpha, dropout=lora.lora_dropout,
                            target_modules=sorted(lora.target_modules), bias=lora.bias,
                            task_type=str(getattr(lora.task_type, "value", lora.task_type)))
    return {
        "message_layout": {"voice_prompt": conventions.voice_prompt, "trained_turns": sorted(conventions.trained_turns),
                           "start_index": None, "messages": messages},
        "collator": {"class": type(collator).__name__, **collator_settings(collator.base_collator),
                     "label_audio_ids": "audio_out_ids", "deep_copy_samples": True},
        "loss": conventions.loss.to_json(),
        "lora": lora_section,
        "optimizer": {"class": f"{opt_cls.__module__.split('.')[0]}.optim.{opt_cls.__name__}",
                      "lr": opt_kwargs.get("lr", args.learning_rate),
                      "betas": list(opt_kwargs.get("betas", (args.adam_beta1, args.adam_beta2))),
                      "eps": opt_kwargs.get("eps", args.adam_epsilon), "weight_decay": args.weight_decay,
                      "no_decay": ["bias", "norm"], "max_grad_norm": args.max_grad_norm},
        # transformers.get_scheduler: the "constant" schedule ignores num_warmup_steps (declared as it runs)
        "schedule": {"type": schedule_type(args),
                     "warmup_steps": 0 if schedule_type(args) == "constant" else args.get_warmup_steps(num_training_steps),
                     "max_steps": num_training_steps},
        "precision": {"mode": precision, "autocast": precision if precision != "fp32" else "none",
                      "weights_dtype": "torch.float32", "trainable_dtype": trainable_dtype},
        "distributed": {"wrapper": "DistributedDataParallel", "no_sync": "all_but_last_micro_batch",
                        "sampler": "DistributedSampler", "find_unused_parameters": args.ddp_find_unused_parameters},
        "faults": [],
    }
