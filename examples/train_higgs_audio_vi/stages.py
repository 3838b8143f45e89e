"""Worked example: a user's adapter around a script-style trainer, thucth-qt/train-higgs-audio-vi.

That repository (a fork of train-higgs-audio for Vietnamese) trains with one script,
``trainer/trainer.py``: its own dataset, collator, model wrapper (which strips the text labels
before the model call), a `Trainer` subclass whose ``compute_loss`` runs forward and a hand-written
loss in one call, settings inline in ``main()``, and a vendored ``boson_multimodal``.  This module
wraps it the way docs/adapters.md describes; all computing is the checkout's code:

    higgs-diff compare --reference train-higgs-audio=PATH_A \\
        --custom examples/train_higgs_audio_vi/stages.py=PATH_B        # PATH_B: a clone of it

Run offline with the shims of `adapters.offline` (codec served from the code cache, Whisper
feature extractor) and ``device=ctx.device`` where ``main()`` hard-codes ``"cuda"``.  The
conventions below declare what its code does (check-adapter checks them): train-higgs-audio's
layout, and its hand-written loss, whose audio term scores ``audio_logits[t]`` against the codes
fed at ``t`` (no next-frame shift) and whose total is the mean of the terms present.  The first is
a defect no recipe should have; the comparison reports it at the config stage.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from adapters import hf
from adapters.locate import located_cross_entropy, position_maps
from adapters.checkout import CheckoutError, activated, find_on_sys_path, import_checkout, require_checkout
from adapters.offline import CachedCodec, logged_errors_raise, whisper_processor
from higgs_common.conventions import Conventions, LossConventions, PerDevice, identity
from higgs_common.converters import write_reference_folder
from higgs_common.stages import (DatasetItem, ForwardOutputs, LossBreakdown, StageContext, TrainConfig,
                                 UnknownFaultError)

NAME = "train-higgs-audio-vi"
ENV_VAR = "HIGGS_DIFF_EXAMPLE_TRAINER"
FILES = ("trainer/trainer.py", "boson_multimodal/__init__.py")
# Its ZeroShotVoiceCloning_training.sh: LoRA r16/32/0.1, lr 1e-5, warmup 200, decay 0.01, clip 1.0, cosine.
DEFAULT_TRAIN = TrainConfig(use_lora=True, lora_r=16, lora_alpha=32, lora_dropout=0.1, learning_rate=1e-5,
                            lora_target_modules=("q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"),
                            weight_decay=0.01, warmup_steps=200, max_grad_norm=1.0, schedule="cosine", seed=42)
_LAYOUT = ["system:text", "user:text", "assistant:audio", "user:text", "assistant:audio"]   # its zero-shot turns
_state: dict[str, Any] = {"root": None, "script": None}


def configure(path: str | Path) -> None:                           # the SPEC's PATH, inline
    _state["root"], _state["script"] = require_checkout(path, FILES, ENV_VAR), None


def script() -> Any:
    """Its ``trainer.trainer`` module, imported once with its vendored ``boson_multimodal``."""
    if _state["script"] is None:
        if _state["root"] is None:
            found = find_on_sys_path(FILES) or os.environ.get(ENV_VAR)
            if not found:
                raise CheckoutError(f"no train-higgs-audio-vi checkout: give ...stages.py=PATH or set {ENV_VAR}")
            configure(found)
        _state["script"] = import_checkout(_state["root"], ["trainer.trainer"], namespace="example_vi")["trainer.trainer"]
    return _state["script"]


def _normalize(text: str) -> str:
    return script().HiggsAudioDataset._normalize_transcript(None, text.strip())


def _system_message(record: Any) -> str:
    """Its zero-shot system turn (``_create_messages_for_task``): instruction and scene."""
    scene = (record.scene or "a quiet room").replace("_", " ")
    return f"Generate audio following instruction.\n\n<|scene_desc_start|>\nAudio is recorded from {scene}.\n<|scene_desc_end|>"


CONVENTIONS = Conventions(
    voice_prompt="assistant_turn", trained_turns=frozenset({"target", "voice_prompt"}), delay_pattern=False,
    audio_label_layout="bos_first", mask_audio_out_token_label=True, system_message=_system_message,
    normalize_transcript=_normalize, normalize_reference_transcript=identity,
    loss=LossConventions(text_reduction="token_mean", audio_reduction="codebook_mean", total="mean",
                         audio_shift="none", accumulation="micro_batch_mean"),   # its _compute_higgs_audio_loss
    config_notes={
        "collator.class": ("ExtendedHiggsAudioSampleCollator", "its collator: upstream's, label_audio_ids = audio_out_ids"),
        "collator.whisper_processor": ("loaded", "main() loads Whisper"), "collator.encode_whisper_embed": (True, "main()"),
        "collator.chunk_size_seconds": (30, "upstream's default with a Whisper processor"),
        "lora.task_type": ("CAUSAL_LM", "its setup_lora_config"), "optimizer.no_decay": (["bias", "norm"], "HF Trainer"),
        "precision.autocast": (PerDevice(cpu="none", cuda="bf16"), "--bf16 autocasts on CUDA only"),
    })


def _check(ctx: StageContext) -> None:
    if ctx.faults:
        raise UnknownFaultError(f"{NAME} defines no fault(s) {sorted(ctx.faults)}")


def write_native(records: Sequence[Any], out_dir: Path) -> Path:
    return write_reference_folder(records, Path(out_dir))      # train-higgs-audio's folder format


def dataset(native_path: Path, ctx: StageContext) -> list[DatasetItem]:
    _check(ctx)
    mod, items = script(), []
    ds = mod.HiggsAudioDataset(str(native_path), ctx.text_tokenizer,
                               CachedCodec(ctx.code_cache, ctx.model_config.audio_num_codebooks),
                               task_type=str(ctx.options.get("task_type", "zero_shot_voice_cloning")))
    slot_in, slot_out = ctx.model_config.audio_in_token_idx, ctx.model_config.audio_out_token_idx
    for i, raw in enumerate(ds.samples):
        sid = str(raw.get("id", i))
        with logged_errors_raise(mod.logger, path=Path(native_path) / "metadata.json", sample_id=sid,
                                 field="audio_file"):
            sample = ds[i]
        slots = [t for t in sample.input_ids.tolist() if t in (slot_in, slot_out)]   # its audios, in prompt order
        # Labels: every <|AUDIO_OUT|> audio (its collator sets label_audio_ids = audio_out_ids).
        items.append(DatasetItem(sid, sample, len(slots) - 1, 0 if len(slots) > 1 else None,
                                 tuple(j for j, t in enumerate(slots) if t == slot_out)))
    return items


def _collator(ctx: StageContext) -> Any:
    cfg = ctx.model_config                                      # main()'s arguments, audio_num_codebooks=8 literal
    return script().ExtendedHiggsAudioSampleCollator(
        whisper_processor=whisper_processor(), audio_in_token_id=cfg.audio_in_token_idx,
        audio_out_token_id=cfg.audio_out_token_idx, audio_stream_bos_id=cfg.audio_stream_bos_id,
        audio_stream_eos_id=cfg.audio_stream_eos_id, encode_whisper_embed=True,
        pad_token_id=ctx.text_tokenizer.pad_token_id, return_audio_in_tokens=True, use_delay_pattern=False,
        round_to=8, audio_num_codebooks=8)


def collate(items: Sequence[DatasetItem], ctx: StageContext) -> Any:
    _check(ctx)
    batch = _collator(ctx)(copy.deepcopy([it.sample for it in items]))
    return script().HiggsAudioBatchInput(**hf.batch_fields(batch))   # crosses to the harness by name


def build_model(ctx: StageContext, train: TrainConfig) -> torch.nn.Module:
    _check(ctx)
    mod = script()
    torch.manual_seed(train.seed)
    with activated(_state["root"]):                             # it patches HiggsAudioModel by a lazy import
        wrapper = mod.HiggsAudioModelWrapper(str(ctx.model_path), device=str(ctx.device), args=None)
    if train.use_lora:
        wrapper = mod.setup_lora_config(wrapper, {"rank": train.lora_r, "alpha": train.lora_alpha,
                                                  "dropout": train.lora_dropout,
                                                  "target_modules": list(train.lora_target_modules)})
    return hf.attach_wrapper(wrapper.train())


def forward(model: torch.nn.Module, batch: Any, ctx: StageContext) -> ForwardOutputs:
    """Its wrapper's forward (labels stripped before the model call), as ``compute_loss`` calls it."""
    out = hf.wrapper_of(model)(**hf.batch_fields(batch, next(model.parameters()).device))
    return ForwardOutputs(out.logits, out.audio_logits, out.expanded_labels, out.expanded_input_ids)


def loss(outputs: ForwardOutputs, batch: Any, ctx: StageContext) -> LossBreakdown:
    """``HiggsAudioTrainer._compute_higgs_audio_loss(outputs, None, batch)``: its hand-written loss."""
    mod = script()
    trainer = mod.HiggsAudioTrainer.__new__(mod.HiggsAudioTrainer)    # it reads only self.model's device
    trainer.model = torch.nn.Linear(1, 1).to(outputs.logits.device)
    fields = hf.batch_fields(batch, outputs.logits.device)

    def run(lab: dict[str, Any]) -> torch.Tensor:
        out = ForwardOutputs(outputs.logits, outputs.audio_logits, lab["expanded_labels"], outputs.expanded_input_ids)
        return trainer._compute_higgs_audio_loss(out, None, {**fields, "label_ids": lab["label_ids"],
                                                             "label_audio_ids": lab["label_audio_ids"]})
    total, calls = located_cross_entropy(mod.HiggsAudioTrainer._compute_higgs_audio_loss.__globals__, run, {
        "expanded_labels": outputs.expanded_labels, "label_ids": fields["label_ids"],
        "label_audio_ids": fields["label_audio_ids"]})
    vocab = outputs.logits.shape[-1]
    maps = position_maps(calls, vocab=vocab, text_labels=outputs.expanded_labels, text_source="expanded_labels",
                         audio_labels=fields["label_audio_ids"], audio_source="label_audio_ids",
                         num_codebooks=ctx.model_config.audio_num_codebooks,
                         num_frames=0 if outputs.audio_logits is None else outputs.audio_logits.shape[0])
    text, audio = [c.out.detach() for c in calls if c.classes == vocab], [c.out.detach() for c in calls if c.classes != vocab]
    audio_out = fields["audio_out_ids"]
    return LossBreakdown(total, text[0] if text else torch.tensor(0.0),
                         torch.stack(audio).mean() if audio else torch.tensor(0.0), maps.per_codebook,
                         maps.text_tokens, maps.audio_tokens, audio_out is not None and audio_out.numel() > 0,
                         reduction="its _compute_higgs_audio_loss: mean of the terms present",
                         notes=tuple(f"{n} CE entries scored from {s}, not at expanded positions"
                                     for s, n in maps.unplaced.items()),
                         audio_token_ce=maps.audio_ce, text_token_ce=maps.text_ce)


def backward(loss: LossBreakdown, model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return hf.gradients(loss.total, model)


def _args(train: TrainConfig, device: torch.device) -> Any:
    from transformers import TrainingArguments                   # main()'s, numbers from `train`
    return TrainingArguments(
        output_dir="/tmp/higgs-diff-example-vi-unused", max_steps=train.max_steps, learning_rate=train.learning_rate,
        warmup_steps=train.warmup_steps, weight_decay=train.weight_decay, max_grad_norm=train.max_grad_norm,
        adam_beta1=train.adam_betas[0], adam_beta2=train.adam_betas[1], adam_epsilon=train.adam_eps,
        lr_scheduler_type=train.schedule, fp16=False, bf16=train.precision == "bf16" and device.type == "cuda",
        remove_unused_columns=True, gradient_checkpointing=False, report_to=[], ddp_find_unused_parameters=False,
        ddp_broadcast_buffers=False, seed=train.seed, use_cpu=device.type != "cuda")


def make_optimizer(model: torch.nn.Module, train: TrainConfig) -> tuple[Any, Any]:
    return hf.trainer_optimizer(script().HiggsAudioTrainer, model, _args(train, next(model.parameters()).device),
                                train.max_steps)


def step(model: torch.nn.Module, optimizer: Any, ctx: StageContext, train: TrainConfig) -> dict[str, torch.Tensor]:
    return hf.trainer_step(model, optimizer, train.max_grad_norm)


def effective_config(ctx: StageContext, train: TrainConfig) -> dict[str, Any]:
    lora = next(iter(build_model(ctx, train).peft_config.values())) if train.use_lora else None
    return hf.effective_config(conventions=CONVENTIONS, collator=_collator(ctx), args=_args(train, ctx.device),
                               lora=lora, use_lora=train.use_lora, num_training_steps=train.max_steps,
                               trainable_dtype="torch.float32", messages=_LAYOUT)
