"""train-higgs-audio (github.com/JimmyMa99/train-higgs-audio) run from a user's checkout, as a side.

    higgs-diff compare --reference train-higgs-audio=PATH --custom mypkg/higgs_stages.py

Everything that computes runs the checkout's own code from ``PATH/trainer/trainer_ddp.py`` with
its vendored, patched ``PATH/boson_multimodal`` (`adapters.checkout.import_checkout`):
`HiggsAudioDataset` (its message layout, transcript normaliser and codes), its
`ExtendedHiggsAudioSampleCollator`, `HiggsAudioModelWrapper` + `setup_lora_config`, the loss its
patched `HiggsAudioModel.forward` computes, reached through `HiggsAudioTrainer.compute_loss`, and
the optimizer and schedule that `HiggsAudioTrainer.create_optimizer_and_scheduler` builds.

What `main()` writes inline (collator arguments, `TrainingArguments`) is restated here from
``trainer_ddp.py::main`` (commit ed1c71e), with the numbers taken from the `TrainConfig` the harness
passes (`_training_args`).  `effective_config` reads the collator and LoRA sections off the
checkout's built objects; the other sections are `reference_impl.stages.effective_config`'s (the
same TrainingArguments defaults, the same declared layout and loss).

Shims an offline run needs, and nothing else (each replaces one call, nothing the loss sees):

* audio loading: ``torchaudio.load`` needs torchcodec with torchaudio >= 2.9 and otherwise makes
  the dataset log an error and train on ``zeros(1)``; here it reads the file with soundfile
  (same float32, channels-first result).
* Whisper: ``WhisperProcessor.from_pretrained("openai/whisper-large-v3")`` downloads; the collator
  only reads its ``feature_extractor``, given here as ``WhisperFeatureExtractor(feature_size=128)``
  (large-v3's 128 mel bins).  The tiny checkpoint skips the audio tower, so features are unused.
* codec: ``load_higgs_audio_tokenizer`` downloads HuBERT; the dataset gets an object whose
  ``encode(path)`` returns the harness's cached codes (`higgs_common.code_cache`), so both sides
  see identical codes.
* precision: ``HiggsAudioModelWrapper`` always loads ``torch_dtype=bfloat16``; its
  ``from_pretrained`` call gets the dtype of the run instead (fp32 on a CPU, where the HF Trainer
  with ``bf16=True`` would not autocast either).
* errors: its dataset logs any per-sample error and returns the *next* sample, its codec call logs
  and drops the audio, its loader logs and returns silence.  Any error its logger records while a
  sample is built becomes a `SampleError` naming the file, the sample and the message.

The checkout is the ``train-higgs-audio=PATH`` SPEC's PATH: in the side's own worker process (the
default) PATH is first on ``sys.path`` and found there; inline it comes through `configure(path)`;
else the environment variable ``HIGGS_DIFF_TRAIN_HIGGS_AUDIO``.  Conventions are declared once, in
`reference_impl.stages.CONVENTIONS`: `reference_impl` is this project's re-implementation of the
same script, so the declaration is the same, except that the transcript normaliser is the
checkout's own ``HiggsAudioDataset._normalize_transcript``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Sequence

import torch

from adapters import hf
from adapters.checkout import CheckoutError, find_on_sys_path, import_checkout, require_checkout
from adapters.locate import located_cross_entropy, position_maps
from adapters.offline import CachedCodec, logged_errors_raise, recording, torchaudio_offline, whisper_processor
from higgs_common.collator_settings import collator_settings
from higgs_common.manifest import CanonicalRecord
from higgs_common.stages import (DatasetItem, ForwardOutputs, LossBreakdown, StageContext, TrainConfig,
                                 UnknownFaultError)
from reference_impl import stages as _declared

NAME = "train-higgs-audio"
ENV_VAR = "HIGGS_DIFF_TRAIN_HIGGS_AUDIO"
SCRIPT_MODULE = "trainer.trainer_ddp"
CHECKOUT_FILES: tuple[str, ...] = ("trainer/trainer_ddp.py", "boson_multimodal/__init__.py")
VERSION = "train-higgs-audio checkout (trainer/trainer_ddp.py), vendored boson_multimodal"
DEFAULT_TRAIN: TrainConfig = _declared.DEFAULT_TRAIN
TASK_TYPE = "zero_shot_voice_cloning"           # ctx.options["task_type"] overrides, as for reference_impl

_state: dict[str, Any] = {"root": None, "script": None}


def configure(path: str | Path) -> None:
    """Use the checkout at `path` (raises CheckoutError if it lacks trainer/trainer_ddp.py)."""
    _state["root"] = require_checkout(path, CHECKOUT_FILES, ENV_VAR)
    _state["script"] = None


def script() -> ModuleType:
    """The checkout's ``trainer.trainer_ddp`` module, imported once with its vendored package."""
    if _state["script"] is None:
        if _state["root"] is None:
            found = find_on_sys_path(CHECKOUT_FILES)
            if found is None and not os.environ.get(ENV_VAR):
                raise CheckoutError(f"no train-higgs-audio checkout: give train-higgs-audio=PATH or set {ENV_VAR}")
            configure(found or os.environ[ENV_VAR])
        mod = import_checkout(_state["root"], [SCRIPT_MODULE], namespace="higgs_diff_checkout.train_higgs_audio")[SCRIPT_MODULE]
        if not mod.HIGGS_AVAILABLE:
            raise CheckoutError(f"{_state['root']}: its boson_multimodal did not import (the script would fall "
                                f"back to a text-only model)")
        mod.torchaudio = torchaudio_offline(mod.torchaudio)
        _state["script"] = mod
    return _state["script"]


@contextmanager
def _loads_in(mod: ModuleType, dtype: torch.dtype) -> Iterator[None]:
    """``HiggsAudioModel.from_pretrained`` inside the script loads in `dtype` (its literal is bfloat16)."""
    real = mod.HiggsAudioModel

    class _Loader:
        @staticmethod
        def from_pretrained(*args: Any, **kwargs: Any) -> Any:
            return real.from_pretrained(*args, **{**kwargs, "torch_dtype": dtype})
    mod.HiggsAudioModel = _Loader
    try:
        yield
    finally:
        mod.HiggsAudioModel = real


# --------------------------------------------------------------------------- contract

def _normalize(text: str) -> str:
    """The checkout's ``HiggsAudioDataset._normalize_transcript`` applied to a stripped transcript."""
    ds = script().HiggsAudioDataset.__new__(script().HiggsAudioDataset)
    return ds._normalize_transcript(text.strip())


CONVENTIONS = dataclasses.replace(
    _declared.CONVENTIONS, normalize_transcript=_normalize,
    config_notes={
        **_declared.CONVENTIONS.config_notes,
        "collator.whisper_processor": ("loaded", "main() gives the collator a Whisper processor (offline: its feature "
                                                 "extractor); the checkpoint skips the audio tower, so the model never "
                                                 "reads Whisper features"),
        "collator.encode_whisper_embed": (True, "main() passes encode_whisper_embed=True; the checkpoint skips the "
                                                "audio tower and the zero-shot layout has no audio-in span"),
        "collator.chunk_size_seconds": (30, "upstream's default, kept by the collator when a Whisper processor is given"),
    })


def _check_faults(ctx: StageContext) -> None:
    if ctx.faults:
        raise UnknownFaultError(f"train-higgs-audio defines no fault(s) {sorted(ctx.faults)}")


def write_native(records: Sequence[CanonicalRecord], out_dir: Path) -> Path:
    """Its data folder: metadata.json plus <id>.wav / <id>.txt (`higgs_common.converters`)."""
    return _declared.write_native(records, out_dir)


def dataset(native_path: Path, ctx: StageContext) -> list[DatasetItem]:
    """The checkout's `HiggsAudioDataset`, one item per metadata sample, in order.

    The target is the last audio; the voice prompt the first other audio; labels are the audios
    its ``prepare_chatml_sample`` returns as ``audio_label_contents``.  Raises SampleError where
    the script would log and skip.
    """
    _check_faults(ctx)
    mod = script()
    task = str(ctx.options.get("task_type", TASK_TYPE))
    codec = CachedCodec(ctx.code_cache, ctx.model_config.audio_num_codebooks)
    ds = mod.HiggsAudioDataset(str(native_path), ctx.text_tokenizer, codec, task_type=task)
    items = []
    for i, raw in enumerate(ds.samples):
        sample_id = str(raw.get("id", raw.get("audio_id", i)))
        with recording(mod, "prepare_chatml_sample") as prepared, \
                logged_errors_raise(mod.logger, path=Path(native_path) / "metadata.json", sample_id=sample_id,
                                    field="audio_file/transcript_file"):
            sample = ds[i]
        label_contents = prepared[-1][3] or []
        n_audio = len(sample.audio_ids_start)
        items.append(DatasetItem(
            sample_id=sample_id, sample=sample, target_audio_index=n_audio - 1,
            reference_audio_index=0 if n_audio > 1 else None,
            label_audio_indices=tuple(j for j, c in enumerate(label_contents) if c is not None),
            extra={"task_type": task}))
    return items


def _collator(ctx: StageContext) -> Any:
    """`ExtendedHiggsAudioSampleCollator` with the arguments ``main()`` passes."""
    cfg, tok = ctx.model_config, ctx.text_tokenizer
    return script().ExtendedHiggsAudioSampleCollator(
        whisper_processor=whisper_processor(),
        audio_in_token_id=cfg.audio_in_token_idx, audio_out_token_id=cfg.audio_out_token_idx,
        audio_stream_bos_id=cfg.audio_stream_bos_id, audio_stream_eos_id=cfg.audio_stream_eos_id,
        encode_whisper_embed=True, pad_token_id=tok.pad_token_id, return_audio_in_tokens=True,
        use_delay_pattern=False, round_to=8, audio_num_codebooks=getattr(cfg, "audio_num_codebooks", 8))


def collate(items: Sequence[DatasetItem], ctx: StageContext) -> Any:
    """Its collator on deep copies (upstream writes -100 into the samples' label_ids in place).

    Returned as the vendored upstream ``HiggsAudioBatchInput`` with the same fields: its own
    ``ExtendedHiggsAudioBatchInput`` lives in a script module that cannot be imported by name
    outside the checkout (a batch may cross to the harness); `forward` wraps it back.
    """
    _check_faults(ctx)
    mod = script()
    batch = _collator(ctx)(copy.deepcopy([it.sample for it in items]))
    return mod.HiggsAudioBatchInput(**hf.batch_fields(batch))


def _precision(train: TrainConfig, device: torch.device) -> str:
    """bf16 only where the HF Trainer autocasts (CUDA); fp32 elsewhere."""
    return "bf16" if train.precision == "bf16" and torch.device(device).type == "cuda" else "fp32"


def _wrapper(model: torch.nn.Module) -> torch.nn.Module:
    wrapper = hf.wrapper_of(model)
    if wrapper is None:
        raise TypeError("train-higgs-audio's forward needs a model from its build_model "
                        "(the inner model of HiggsAudioModelWrapper)")
    return wrapper


def build_model(ctx: StageContext, train: TrainConfig) -> torch.nn.Module:
    """``HiggsAudioModelWrapper`` (+ ``setup_lora_config``); returns its inner model, train() mode.

    The inner model (peft-wrapped or not) is what `named_parameters` should name; the wrapper
    stays attached for `forward`.
    """
    _check_faults(ctx)
    mod = script()
    torch.manual_seed(train.seed)
    dtype = torch.bfloat16 if _precision(train, ctx.device) == "bf16" else torch.float32
    with _loads_in(mod, dtype):
        wrapper = mod.HiggsAudioModelWrapper(str(ctx.model_path), device=str(ctx.device), args=None)
    if train.use_lora:
        wrapper = mod.setup_lora_config(wrapper, {"rank": train.lora_r, "alpha": train.lora_alpha,
                                                  "dropout": train.lora_dropout,
                                                  "target_modules": list(train.lora_target_modules)})
    return hf.attach_wrapper(wrapper.train())


def forward(model: torch.nn.Module, batch: Any, ctx: StageContext) -> ForwardOutputs:
    """``HiggsAudioTrainer.compute_loss(wrapper, batch, return_outputs=True)``: its wrapper's forward
    (float inputs cast to the weights' dtype) and its patched model, which also returns its loss."""
    mod = script()
    device = next(model.parameters()).device
    inputs = mod.ExtendedHiggsAudioBatchInput(**hf.batch_fields(batch, device))
    total, out = mod.HiggsAudioTrainer.compute_loss(None, _wrapper(model), inputs, return_outputs=True)
    return ForwardOutputs(
        logits=out.logits, audio_logits=out.audio_logits, expanded_labels=out.expanded_labels,
        expanded_input_ids=out.expanded_input_ids,
        extra={"audio_out_mask": out.audio_out_mask, "model_loss": total})


def loss(outputs: ForwardOutputs, batch: Any, ctx: StageContext) -> LossBreakdown:
    """The checkout's ``HiggsAudioModel.compute_losses`` (what its patched forward returns as loss) on
    `outputs` and the batch's ``label_audio_ids``: text + audio, each only if > 0.

    Counts, per-codebook terms and per-position CE come from its ``F.cross_entropy`` calls, located
    by `adapters.locate.located_cross_entropy`.
    """
    compute_losses = script().HiggsAudioModel.compute_losses      # uses no model state
    label_audio_ids = getattr(batch, "label_audio_ids", None)
    if label_audio_ids is not None:
        label_audio_ids = label_audio_ids.to(outputs.logits.device)
    mask = outputs.extra.get("audio_out_mask")
    (total, llm, audio), calls = located_cross_entropy(
        compute_losses.__globals__,
        lambda lab: compute_losses(None, outputs.logits, outputs.audio_logits, lab["expanded_labels"],
                                   lab["label_audio_ids"], mask),
        {"expanded_labels": outputs.expanded_labels, "label_audio_ids": label_audio_ids})
    maps = position_maps(calls, vocab=outputs.logits.shape[-1], text_labels=outputs.expanded_labels,
                         text_source="expanded_labels", audio_labels=label_audio_ids, audio_source="label_audio_ids",
                         num_codebooks=ctx.model_config.audio_num_codebooks,
                         num_frames=outputs.audio_logits.shape[0] if outputs.audio_logits is not None else 0)
    audio_out = getattr(batch, "audio_out_ids", None)
    notes = tuple(f"{name} term dropped from total (.item() <= 0)" for name, t in (("text", llm), ("audio", audio))
                  if not t.item() > 0)
    return LossBreakdown(
        total=total, text=llm.detach(), audio=audio.detach(), per_codebook=maps.per_codebook,
        text_supervised_tokens=maps.text_tokens, audio_supervised_tokens=maps.audio_tokens,
        has_target_audio=audio_out is not None and audio_out.numel() > 0,
        reduction="text: token mean (shifted); audio: per-codebook token mean, mean over codebooks "
                  "(shift across the stream); total: sum of terms > 0",
        notes=notes, audio_token_ce=maps.audio_ce, text_token_ce=maps.text_ce)


def backward(loss: LossBreakdown, model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """Gradients of every trainable parameter after ``total.backward()`` (None where none arrived)."""
    return hf.gradients(loss.total, model)


def _training_args(train: TrainConfig, device: torch.device | str) -> Any:
    """``main()``'s TrainingArguments; numbers from `train` (main leaves decay, betas, clip, schedule at
    the transformers defaults, which `train` carries for this side)."""
    from transformers import TrainingArguments
    return TrainingArguments(
        output_dir=str(Path(tempfile.gettempdir()) / "higgs-diff-train-higgs-audio-unused"),
        max_steps=train.max_steps, per_device_train_batch_size=4, learning_rate=train.learning_rate,
        warmup_steps=train.warmup_steps, weight_decay=train.weight_decay, adam_beta1=train.adam_betas[0],
        adam_beta2=train.adam_betas[1], adam_epsilon=train.adam_eps, max_grad_norm=train.max_grad_norm,
        lr_scheduler_type=train.schedule, logging_steps=10, save_steps=500, save_total_limit=3, fp16=False,
        bf16=_precision(train, torch.device(device)) == "bf16", dataloader_pin_memory=False,
        remove_unused_columns=False, report_to=[], ddp_find_unused_parameters=True, seed=train.seed,
        use_cpu=torch.device(device).type != "cuda")


def make_optimizer(model: torch.nn.Module, train: TrainConfig) -> tuple[Any, Any]:
    """What ``HiggsAudioTrainer.create_optimizer_and_scheduler`` builds for the wrapper."""
    return hf.trainer_optimizer(script().HiggsAudioTrainer, model,
                                _training_args(train, next(model.parameters()).device), train.max_steps)


def step(model: torch.nn.Module, optimizer: Any, ctx: StageContext, train: TrainConfig) -> dict[str, torch.Tensor]:
    """The HF Trainer's update (`adapters.hf.trainer_step`); the caller steps the scheduler next."""
    return hf.trainer_step(model, optimizer, train.max_grad_norm)


def effective_config(ctx: StageContext, train: TrainConfig) -> dict[str, Any]:
    """The declared layout and loss, and the settings read off the objects the checkout builds."""
    out = _declared.effective_config(ctx, train)      # layout / loss / distributed: declared, shared
    col = _collator(ctx)
    out["collator"] = {"class": type(col).__name__, **collator_settings(col.base_collator),
                       "label_audio_ids": "audio_out_ids", "deep_copy_samples": True}
    if train.use_lora:
        lc = next(iter(build_model(ctx, train).peft_config.values()))
        out["lora"] = {"enabled": True, "r": lc.r, "alpha": lc.lora_alpha, "dropout": lc.lora_dropout,
                       "target_modules": sorted(lc.target_modules), "bias": lc.bias,
                       "task_type": str(getattr(lc.task_type, "value", lc.task_type))}
    return out
