"""A third pipeline behind the stage contract: boson_multimodal's upstream defaults, written out.

This is the worked example of `docs/adapters.md`: a pipeline that copies neither in-repo one.
What makes it different (all declared in `CONVENTIONS` below):

* data: one JSONL file, one ChatML sample per line, the voice prompt at the END OF THE SYSTEM
  MESSAGE (its transcript, then the clip as an `<|AUDIO|>` slot), then the target transcript as the
  user turn and the target audio as the only assistant turn;
* transcripts: whitespace collapsed, nothing else;
* collator: upstream `HiggsAudioSampleCollator` with its defaults (`mask_audio_out_token_label=True`,
  no delay pattern), Whisper off, audio-in codes on;
* loss: a plain next-token cross-entropy written out below: text over every supervised token,
  audio pooled over every supervised (frame, codebook) pair, both shifted by one inside each
  segment, summed;
* training recipe: LoRA r 8 / alpha 16 on attention only, AdamW, constant learning rate.

Run it against the reference:

    python -m harness.check_adapter examples/upstream_defaults/stages.py
    python -m harness.compare --reference reference_impl.stages --custom examples/upstream_defaults/stages.py
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from boson_multimodal.data_collator.higgs_audio_collator import HiggsAudioSampleCollator
from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample, prepare_chatml_sample
from boson_multimodal.model.higgs_audio import HiggsAudioModel
from peft import LoraConfig, get_peft_model

from higgs_common.collator_settings import collator_settings
from higgs_common.conventions import Conventions, LossConventions
from higgs_common.stages import (DatasetItem, ForwardOutputs, LossBreakdown, SampleError, StageContext, TrainConfig,
                                 UnknownFaultError)

NAME = "upstream-defaults"
VERSION = "examples/upstream_defaults 1.0 (boson-multimodal 0.1.1 defaults)"
IGNORE = -100
SYSTEM_PROMPT = "Generate audio following instruction. Speak in the voice of this reference:"


def normalize(text: str) -> str:
    """Collapse runs of whitespace; that is all this pipeline does to transcripts."""
    return " ".join(text.split())


def system_message(record: Any) -> str:
    return SYSTEM_PROMPT


CONVENTIONS = Conventions(
    voice_prompt="system_message",
    trained_turns=frozenset({"target"}),
    delay_pattern=False,
    audio_label_layout="ignore_first",
    mask_audio_out_token_label=True,
    system_message=system_message,
    normalize_transcript=normalize,
    normalize_reference_transcript=normalize,
    loss=LossConventions(text_reduction="token_mean", audio_reduction="token_mean", total="sum",
                         audio_shift_scope="segment", accumulation="micro_batch_mean"),
    config_notes={
        "collator.class": ("HiggsAudioSampleCollator", "upstream's collator, used as shipped"),
        "lora.task_type": (None, "no task type: upstream forward does not take labels="),
        "distributed.find_unused_parameters": (False, "plain DDP defaults"),
        "optimizer.no_decay": ([], "no weight decay groups"),
    },
)

DEFAULT_TRAIN = TrainConfig(use_lora=True, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                            lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), learning_rate=1e-4,
                            weight_decay=0.0, adam_betas=(0.9, 0.999), adam_eps=1e-8, warmup_steps=0,
                            max_steps=20, max_grad_norm=1.0, schedule="constant", precision="fp32", seed=0)
FAULTS: dict[str, Any] = {}


def _check(ctx: StageContext) -> None:
    if ctx.faults:
        raise UnknownFaultError(f"{NAME} defines no faults, got {sorted(ctx.faults)}")


# ------------------------------------------------------------------------------------ data

def write_native(records: Sequence[Any], out_dir: Path) -> Path:
    """One JSONL line per record: {"id", "messages", "ref_audio", "audio"} (absolute paths)."""
    out = Path(out_dir) / "train.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in records:
        lines.append(json.dumps({"id": r.id, "messages": [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT},
                                           {"type": "text", "text": normalize(r.ref_text)},
                                           {"type": "audio", "audio_url": str(Path(r.ref_audio).resolve())}]},
            {"role": "user", "content": normalize(r.text)},
            {"role": "assistant", "content": [{"type": "audio", "audio_url": str(Path(r.audio).resolve())}]}]},
            ensure_ascii=False))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def dataset(native_path: Path, ctx: StageContext) -> list[DatasetItem]:
    _check(ctx)
    items = []
    for n, line in enumerate(Path(native_path).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        sid = row["id"]
        inputs, labels, audios, _ = prepare_chatml_sample({"messages": row["messages"]}, ctx.text_tokenizer)
        if inputs is None:
            raise SampleError("prepare_chatml_sample rejected the sample", sample_id=sid, field="messages",
                              path=native_path)
        codes = [ctx.code_cache.codes(Path(a.audio_url), sample_id=sid, field=f"audio[{i}]").long()
                 for i, a in enumerate(audios)]                       # (C, T_i) each: [reference, target]
        lengths = [c.shape[1] for c in codes]
        sample = ChatMLDatasetSample(
            input_ids=torch.tensor(inputs, dtype=torch.long), label_ids=torch.tensor(labels, dtype=torch.long),
            audio_ids_concat=torch.cat(codes, dim=1),
            audio_ids_start=torch.tensor([sum(lengths[:i]) for i in range(len(lengths))], dtype=torch.long),
            audio_waveforms_concat=torch.zeros(0), audio_waveforms_start=torch.zeros(0, dtype=torch.long),
            audio_sample_rate=torch.full((len(codes),), 24000.0),
            audio_speaker_indices=torch.full((len(codes),), -1, dtype=torch.long))
        items.append(DatasetItem(sid, sample, target_audio_index=1, reference_audio_index=0,
                                 label_audio_indices=(1,)))
    return items


def _collator(ctx: StageContext) -> HiggsAudioSampleCollator:
    cfg = ctx.model_config
    return HiggsAudioSampleCollator(
        whisper_processor=None, audio_in_token_id=cfg.audio_in_token_idx, audio_out_token_id=cfg.audio_out_token_idx,
        pad_token_id=cfg.pad_token_id, audio_stream_bos_id=cfg.audio_stream_bos_id,
        audio_stream_eos_id=cfg.audio_stream_eos_id, encode_whisper_embed=False, return_audio_in_tokens=True,
        audio_num_codebooks=cfg.audio_num_codebooks)


def collate(items: Sequence[DatasetItem], ctx: StageContext) -> Any:
    _check(ctx)
    return _collator(ctx)([copy.deepcopy(it.sample) for it in items])   # upstream masks labels in place


# ------------------------------------------------------------------------------------ model

def _lora(train: TrainConfig) -> LoraConfig:
    return LoraConfig(r=train.lora_r, lora_alpha=train.lora_alpha, lora_dropout=train.lora_dropout,
                      target_modules=list(train.lora_target_modules), bias="none")


def build_model(ctx: StageContext, train: TrainConfig) -> torch.nn.Module:
    _check(ctx)
    torch.manual_seed(train.seed)
    model = HiggsAudioModel.from_pretrained(str(ctx.model_path), torch_dtype=torch.float32).to(ctx.device)
    if train.use_lora:
        model = get_peft_model(model, _lora(train))
    model.train()
    return model


BATCH_FIELDS = ("input_ids", "attention_mask", "audio_features", "audio_feature_attention_mask", "audio_in_ids",
                "audio_in_ids_start", "audio_out_ids", "audio_out_ids_start", "audio_out_ids_start_group_loc",
                "label_ids", "label_audio_ids")


def forward(model: torch.nn.Module, batch: Any, ctx: StageContext) -> ForwardOutputs:
    device = next(model.parameters()).device
    kwargs = {k: getattr(batch, k, None) for k in BATCH_FIELDS}
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items() if v is not None}
    out = model(**kwargs)
    return ForwardOutputs(out.logits, out.audio_logits, out.expanded_labels, out.expanded_input_ids)


# ------------------------------------------------------------------------------------ loss

def loss(outputs: ForwardOutputs, batch: Any, ctx: StageContext) -> LossBreakdown:
    """Next-token CE: text over supervised tokens; audio pooled over (frame, codebook) pairs, within segments."""
    logits, labels = outputs.logits, outputs.expanded_labels.to(outputs.logits.device)
    text_map = torch.full(labels.shape, float("nan"), device=logits.device)              # (B, L)
    tgt = labels[:, 1:]
    text_ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tgt.clamp_min(0), reduction="none")
    text_ce = text_ce * (tgt != IGNORE)
    n_text = int((tgt != IGNORE).sum())
    text = text_ce.sum() / max(n_text, 1)
    text_map[:, 1:] = torch.where(tgt != IGNORE, text_ce.detach(), torch.full_like(text_ce.detach(), float("nan")))

    audio_logits, audio_labels = outputs.audio_logits, batch.label_audio_ids            # (N, C, K), (C, N)
    n, c = audio_logits.shape[0], audio_logits.shape[1]
    audio_map = torch.full((n, c), float("nan"), device=audio_logits.device)
    starts = batch.audio_out_ids_start.tolist() + [n]
    sums, counts = torch.zeros(c, device=audio_logits.device), torch.zeros(c, device=audio_logits.device)
    for a, b in zip(starts, starts[1:]):
        if b - a < 2:
            continue
        t = audio_labels[:, a + 1:b].T.to(audio_logits.device)                             # (T-1, C)
        ce = F.cross_entropy(audio_logits[a:b - 1].float().transpose(1, 2), t.clamp_min(0), reduction="none")
        ce = ce * (t != IGNORE)
        sums = sums + ce.sum(dim=0)
        counts = counts + (t != IGNORE).sum(dim=0)
        audio_map[a + 1:b] = torch.where(t != IGNORE, ce.detach(), torch.full_like(ce.detach(), float("nan")))
    audio = sums.sum() / counts.sum().clamp_min(1)
    per_codebook = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
    return LossBreakdown(total=text + audio, text=text.detach(), audio=audio.detach(),
                         per_codebook=per_codebook.detach(), text_supervised_tokens=n_text,
                         audio_supervised_tokens=int(counts.sum()), has_target_audio=n > 0,
                         reduction="text token mean + audio token mean (pooled), shift within segments",
                         audio_token_ce=audio_map, text_token_ce=text_map)


def backward(loss: LossBreakdown, model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    loss.total.backward()
    return {n: (p.grad.detach().clone() if p.grad is not None else None)
            for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------ optimizer

def make_optimizer(model: torch.nn.Module, train: TrainConfig) -> tuple[Any, Any]:
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, betas=tuple(train.adam_betas), eps=train.adam_eps,
                                  weight_decay=train.weight_decay)
    kind = "constant_with_warmup" if train.schedule == "constant" else train.schedule
    return optimizer, get_scheduler(kind, optimizer, num_warmup_steps=train.warmup_steps,
                                    num_training_steps=train.max_steps)


def step(model: torch.nn.Module, optimizer: Any, ctx: StageContext, train: TrainConfig) -> dict[str, torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    if train.max_grad_norm and train.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------ configuration

def effective_config(ctx: StageContext, train: TrainConfig) -> dict[str, Any]:
    lora = _lora(train)
    return {
        "message_layout": {"voice_prompt": "system_message", "trained_turns": ["target"], "start_index": None,
                           "messages": ["system:text+text+audio", "user:text", "assistant:audio"]},
        "collator": {"class": "HiggsAudioSampleCollator", **collator_settings(_collator(ctx)),
                     "label_audio_ids": "upstream", "deep_copy_samples": True},
        "loss": CONVENTIONS.loss.to_json(),
        "lora": {"enabled": train.use_lora, **({"r": lora.r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout,
                                                "target_modules": sorted(lora.target_modules), "bias": lora.bias,
                                                "task_type": None} if train.use_lora else {})},
        "optimizer": {"class": "torch.optim.AdamW", "lr": train.learning_rate, "betas": list(train.adam_betas),
                      "eps": train.adam_eps, "weight_decay": train.weight_decay, "no_decay": [],
                      "max_grad_norm": train.max_grad_norm},
        "schedule": {"type": train.schedule, "warmup_steps": train.warmup_steps, "max_steps": train.max_steps},
        "precision": {"mode": "fp32", "autocast": "none", "weights_dtype": "torch.float32",
                      "trainable_dtype": "torch.float32"},
        "distributed": {"wrapper": "DistributedDataParallel", "no_sync": "all_but_last_micro_batch",
                        "sampler": "DistributedSampler", "find_unused_parameters": False},
        "faults": sorted(ctx.faults),
    }
