"""The reference pipeline behind the stage contract of `higgs_common.stages` (read that first).

Each function is the reference's own step (dataset -> collator -> model -> loss -> optimizer), so
the harness can run any of them on the other pipeline's output.  The task comes from
`ctx.options["task_type"]`, defaulting here to `zero_shot_voice_cloning` (`HARNESS_TASK_TYPE`),
the task the custom pipeline trains; the reference CLI's own default is single-speaker.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from higgs_common.collator_settings import collator_settings
from higgs_common.conventions import Conventions, PerDevice, identity
from higgs_common.converters import write_reference_folder
from higgs_common.manifest import CanonicalRecord
from higgs_common.stages import (DatasetItem, ForwardOutputs, LossBreakdown, StageContext, TrainConfig,
                                 UnknownFaultError)
from reference_impl import trainer as tr
from reference_impl.collator import BATCH_FIELDS, ExtendedHiggsAudioSampleCollator
from reference_impl.dataset import (Entry, ReferenceDataset, _is_label_turn, build_messages, describe_layout,
                                    scene_description, system_text)
from reference_impl.loss import AUDIO_REDUCTION, TEXT_REDUCTION, TOTAL_REDUCTION, per_position_ce, reference_losses
from reference_impl.loss import CONVENTIONS as LOSS_CONVENTIONS
from reference_impl.model import HiggsAudioModelWithLoss
from reference_impl.normalize import normalize_transcript

NAME = "reference"
HARNESS_TASK_TYPE = "zero_shot_voice_cloning"
KNOWN_FAULTS: frozenset[str] = frozenset()   # the reference defines no injectable faults
DEFAULT_TRAIN: TrainConfig = tr.DEFAULT_TRAIN
VERSION = "train-higgs-audio@ed1c71e (trainer_ddp.py), boson-multimodal 0.1.1"


def _zero_shot_system_message(record: CanonicalRecord) -> str:
    """The zero-shot system turn: the instruction and the record's scene (reference_impl.dataset)."""
    return system_text(scene_description({"scene": record.scene}))


def _read_transcript(text: str) -> str:
    """What `ReferenceDataset.read_transcript` makes of a transcript file: stripped, then normalised."""
    return normalize_transcript(text.strip())


# The reference's zero-shot conventions (the task the harness compares it on), quirks included:
# the voice prompt is an earlier, trained assistant turn; no delay pattern; label_audio_ids =
# audio_out_ids (BOS first); <|AUDIO_OUT|> text label masked (upstream default); the audio shift
# runs across the whole stream; terms enter the total only if > 0; the HF Trainer averages
# micro-batch means under gradient accumulation.
CONVENTIONS = Conventions(
    voice_prompt="assistant_turn",
    trained_turns=frozenset({"target", "voice_prompt"}),
    delay_pattern=False,
    audio_label_layout="bos_first",
    mask_audio_out_token_label=True,
    system_message=_zero_shot_system_message,
    normalize_transcript=_read_transcript,
    normalize_reference_transcript=identity,
    loss=LOSS_CONVENTIONS,
    config_notes={
        "collator.class": ("ExtendedHiggsAudioSampleCollator", "train-higgs-audio wraps the upstream collator (ExtendedHiggsAudioSampleCollator) to set "
                          "label_audio_ids = audio_out_ids"),
        "lora.task_type": ("CAUSAL_LM", "train-higgs-audio builds its LoraConfig with task_type=CAUSAL_LM (hence its model accepts "
                          "labels= and inputs_embeds=)"),
        "distributed.find_unused_parameters": (True, "train-higgs-audio passes ddp_find_unused_parameters=True to the HF "
                                              "Trainer (speed only: every trainable parameter gets a gradient)"),
        "optimizer.no_decay": (["bias", "norm"], "the HF Trainer exempts biases and LayerNorm/RMSNorm weights from "
                                                         "weight decay"),
        "precision.autocast": (PerDevice(cpu="none", cuda="bf16"),
                               "train-higgs-audio sets bf16=True: on CUDA the HF Trainer runs forward and loss under "
                               "torch.autocast(bfloat16); on a CPU the reference trains in fp32"),
        "precision.trainable_dtype": (PerDevice(cpu="torch.float32", cuda="torch.bfloat16"),
                                      "the reference's default recipe is a full fine-tune of the model as loaded "
                                      "(torch_dtype=bfloat16 on CUDA), so its trainable weights are bf16 there"),
    },
)


def _check_faults(ctx: StageContext) -> None:
    unknown = sorted(set(ctx.faults) - KNOWN_FAULTS)
    if unknown:
        raise UnknownFaultError(f"reference pipeline defines no fault(s) {unknown}")


def task_type(ctx: StageContext) -> str:
    return str(ctx.options.get("task_type", HARNESS_TASK_TYPE))


def _collator(ctx: StageContext) -> ExtendedHiggsAudioSampleCollator:
    return ExtendedHiggsAudioSampleCollator.from_config(ctx.model_config, ctx.text_tokenizer)


def _batch_fields(batch: Any) -> dict[str, Any]:
    """Fields of any Higgs batch (ours, upstream HiggsAudioBatchInput, or another pipeline's)."""
    return {k: getattr(batch, k, None) for k in BATCH_FIELDS}


# --------------------------------------------------------------------------- stages

def write_native(records: Sequence[CanonicalRecord], out_dir: Path) -> Path:
    return write_reference_folder(records, Path(out_dir))


def dataset(native_path: Path, ctx: StageContext) -> list[DatasetItem]:
    """One DatasetItem per metadata sample, in order.

    Indices refer to the sample's audio list: the target is the last audio; the reference clip
    (zero-shot: the earlier *assistant* audio; multi-speaker cloning: the first reference) is the
    first audio that is not the target, or None; every assistant audio is a label here.
    """
    _check_faults(ctx)
    opts = {k: ctx.options[k] for k in ("max_audio_seconds", "speech_floor_dbfs", "allow_no_speech",
                                        "allow_default_ref_transcript", "allow_missing_ref_audio")
            if k in ctx.options}
    ds = ReferenceDataset(Path(native_path), ctx.text_tokenizer, ctx.code_cache, task_type=task_type(ctx), **opts)
    items = []
    for i in range(len(ds)):
        built = ds.build(i)
        n_audio = len(built.audio_fields)
        refs = [j for j, f in enumerate(built.audio_fields) if f != "audio_file"]
        items.append(DatasetItem(
            sample_id=built.sample_id,
            sample=built.sample,
            target_audio_index=n_audio - 1,
            reference_audio_index=refs[0] if refs else None,
            label_audio_indices=built.label_audio_indices,
            extra={"task_type": ds.task_type, "layout": describe_layout(built.messages),
                   "audio_fields": built.audio_fields, "label_audio_ids": built.label_audio_ids,
                   "audio_label_contents": built.audio_label_contents, "notes": built.notes},
        ))
    return items


def collate(items: Sequence[DatasetItem], ctx: StageContext):
    _check_faults(ctx)
    return _collator(ctx)([it.sample for it in items])


def build_model(ctx: StageContext, train: TrainConfig) -> torch.nn.Module:
    """The checkpoint as HiggsAudioModelWithLoss, bf16 on CUDA only, LoRA-wrapped if `train.use_lora`."""
    _check_faults(ctx)
    torch.manual_seed(train.seed)   # LoRA init is random; make it repeatable
    dtype = tr.torch_dtype(tr.effective_precision(train, ctx.device))
    model = HiggsAudioModelWithLoss.from_pretrained(str(ctx.model_path), torch_dtype=dtype).to(ctx.device)
    if train.use_lora:
        model = tr.apply_lora(model, train)
    model.train()
    return model


def forward(model: torch.nn.Module, batch: Any, ctx: StageContext) -> ForwardOutputs:
    """`model(**batch)` on the model's device; works for PEFT-wrapped and plain models."""
    device = tr.model_device(model)
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
              for k, v in _batch_fields(batch).items() if v is not None}
    out = model(**kwargs)
    return ForwardOutputs(
        logits=out.logits,
        audio_logits=out.audio_logits,
        expanded_labels=out.expanded_labels,
        expanded_input_ids=out.expanded_input_ids,
        extra={"audio_out_mask": out.audio_out_mask, "model_loss": getattr(out, "loss", None)},
    )


def loss(outputs: ForwardOutputs, batch: Any, ctx: StageContext) -> LossBreakdown:
    """reference_losses on the model outputs and the batch's own `label_audio_ids` (whoever collated it)."""
    fields = _batch_fields(batch)
    label_audio_ids = fields["label_audio_ids"]
    r = reference_losses(outputs.logits, outputs.audio_logits, outputs.expanded_labels, label_audio_ids)
    audio_out = fields["audio_out_ids"]
    audio_ce, text_ce = per_position_ce(outputs.logits, outputs.audio_logits, outputs.expanded_labels,
                                        label_audio_ids)
    notes = tuple(f"{t} term dropped from total (.item() <= 0 or NaN)" for t in r["dropped"])
    return LossBreakdown(
        total=r["loss"],
        text=r["llm_loss"].detach(),
        audio=r["audio_loss"].detach(),
        per_codebook=r["codebook_losses"].detach(),
        text_supervised_tokens=r["text_tokens"],
        audio_supervised_tokens=r["audio_tokens"],
        has_target_audio=audio_out is not None and audio_out.numel() > 0,
        reduction=f"text: {TEXT_REDUCTION}; audio: {AUDIO_REDUCTION}; total: {TOTAL_REDUCTION}",
        notes=notes,
        audio_token_ce=audio_ce,
        text_token_ce=text_ce,
    )


def backward(loss: LossBreakdown, model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """Gradients of every trainable parameter after `total.backward()` (None where none reached it)."""
    model.zero_grad(set_to_none=True)
    loss.total.backward()
    return {n: (p.grad.detach().clone() if p.grad is not None else None)
            for n, p in model.named_parameters() if p.requires_grad}


def make_optimizer(model: torch.nn.Module, train: TrainConfig) -> tuple[Any, Any]:
    """AdamW + schedule exactly as `transformers.Trainer` would create them for `train`."""
    args = _training_args(train, tr.model_device(model))
    return tr.make_optimizer_and_scheduler(model, args, train.max_steps)


def step(model: torch.nn.Module, optimizer: Any, ctx: StageContext, train: TrainConfig) -> dict[str, torch.Tensor]:
    """One Trainer-style update: clip to `train.max_grad_norm` (TrainingArguments.max_grad_norm),
    optimizer.step(), zero_grad.  The scheduler is the caller's to step (the Trainer steps it right
    after this)."""
    max_norm = train.max_grad_norm
    if max_norm is not None and max_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- configuration

def _training_args(train: TrainConfig, device: torch.device | str):
    return tr.build_training_args(train, Path(tempfile.gettempdir()) / "higgs-diff-reference-unused",
                                  device=device, max_steps=train.max_steps, report_to=[])


def _layout(task: str) -> dict[str, Any]:
    """The message layout for `task`, generated by the real message builder on a dummy entry."""
    raw = {"id": "example", "scene": "a quiet room", "ref_audio_file": "ref.wav", "ref_transcript": "ref text",
           "ref_speakers": [{"ref_audio_file": "a.wav", "ref_transcript": "a"}]}
    entry = Entry("example", raw, Path("target.wav"), Path("target.txt"), Path("metadata.json"), True)
    transcript = "[SPEAKER0] hi. [SPEAKER1] hello." if task == "multi_speaker_smart_voice" else "target text."
    layout = build_messages(entry, transcript, task, Path("."))
    labelled = [f"{m.role}[{i}]" for i, m in enumerate(layout.messages)
                if _is_label_turn(m.role, i, None)]
    return {"task_type": task, "messages": describe_layout(layout.messages), "trained_turns": labelled,
            "reference_audio": "ref_audio_file" in layout.audio_fields}


def effective_config(ctx: StageContext, train: TrainConfig) -> dict[str, Any]:
    """Effective settings, read off the objects the pipeline really builds (machine-readable)."""
    col = _collator(ctx)
    collator = {**collator_settings(col.base_collator), "label_audio_ids": "audio_out_ids", "deep_copy_samples": True}
    args = _training_args(train, ctx.device)
    opt_cls, opt_kwargs = tr.Trainer.get_optimizer_cls_and_kwargs(args)
    lora: dict[str, Any] = {"enabled": train.use_lora}
    if train.use_lora:
        lc = tr.build_lora_config(train)
        lora.update(r=lc.r, alpha=lc.lora_alpha, dropout=lc.lora_dropout, target_modules=sorted(lc.target_modules),
                    task_type=str(getattr(lc.task_type, "value", lc.task_type)), bias=lc.bias)
    precision = tr.effective_precision(train, ctx.device)
    layout = _layout(task_type(ctx))
    return {
        "message_layout": {"voice_prompt": "assistant_turn" if layout["reference_audio"] else "none",
                           "trained_turns": ["target", "voice_prompt"] if layout["reference_audio"] else ["target"],
                           "start_index": None, "messages": layout["messages"]},
        "collator": {"class": type(col).__name__, **collator},
        "loss": LOSS_CONVENTIONS.to_json(),
        "lora": lora,
        "optimizer": {"class": f"{opt_cls.__module__.split('.')[0]}.optim.{opt_cls.__name__}",
                      "lr": opt_kwargs.get("lr", args.learning_rate),
                      "betas": list(opt_kwargs.get("betas", (args.adam_beta1, args.adam_beta2))),
                      "eps": opt_kwargs.get("eps", args.adam_epsilon),
                      "weight_decay": args.weight_decay, "no_decay": ["bias", "norm"],
                      "max_grad_norm": args.max_grad_norm},
        # Quirk kept (transformers.get_scheduler): the "constant" schedule ignores num_warmup_steps, so a
        # reference run asking for a constant schedule with warm-up gets none; declared as it runs.
        "schedule": {"type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
                     "warmup_steps": 0 if str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)) == "constant"
                     else args.get_warmup_steps(train.max_steps), "max_steps": train.max_steps},
        "precision": {"mode": precision, "autocast": "bf16" if precision == "bf16" else "none",
                      "weights_dtype": str(tr.torch_dtype(precision)),
                      # peft keeps LoRA adapters in fp32 (autocast_adapter_dtype); a full fine-tune trains
                      # the weights in the dtype the model was loaded in
                      "trainable_dtype": "torch.float32" if train.use_lora else str(tr.torch_dtype(precision))},
        "distributed": {"wrapper": "DistributedDataParallel", "no_sync": "all_but_last_micro_batch",
                        "sampler": "DistributedSampler", "find_unused_parameters": args.ddp_find_unused_parameters},
        "faults": [],
    }
