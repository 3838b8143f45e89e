"""The custom pipeline's collator: upstream `HiggsAudioSampleCollator`, configured as upstream's
custom pipeline did, behind a copy boundary.

Settings and why:
* `mask_audio_out_token_label=False` - the custom pipeline's fix against over-masking;
* `return_audio_in_tokens=True`     - the reference clip reaches the model only as codes
                                       (the checkpoint skips the Whisper tower);
* `encode_whisper_embed=False`      - no Whisper processor offline and none used by the model;
* `use_delay_pattern`               - from the model config, i.e. what the checkpoint expects.

Per audio-out segment the collator emits inputs `[BOS, codes, EOS]` and labels
`[-100, codes, EOS]` at the SAME positions (delayed when the delay pattern is on); the next-token
shift is therefore the loss's job (see `custom_impl.loss`).
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from boson_multimodal.data_collator.higgs_audio_collator import HiggsAudioBatchInput, HiggsAudioSampleCollator

from custom_impl.faults import is_on
from higgs_common.stages import DatasetItem, StageContext

ROUND_TO = 8


def collator_kwargs(model_config: Any) -> dict[str, Any]:
    """The exact constructor arguments; also reported by `effective_config`."""
    return dict(
        whisper_processor=None,
        audio_in_token_id=model_config.audio_in_token_idx,
        audio_out_token_id=model_config.audio_out_token_idx,
        pad_token_id=model_config.pad_token_id,
        audio_stream_bos_id=model_config.audio_stream_bos_id,
        audio_stream_eos_id=model_config.audio_stream_eos_id,
        round_to=ROUND_TO,
        pad_left=False,
        encode_whisper_embed=False,
        return_audio_in_tokens=True,
        audio_num_codebooks=model_config.audio_num_codebooks,
        use_delay_pattern=bool(model_config.use_delay_pattern),
        disable_audio_codes_transform=False,
        mask_audio_out_token_label=False,
    )


def make_collator(model_config: Any) -> HiggsAudioSampleCollator:
    return HiggsAudioSampleCollator(**collator_kwargs(model_config))


def _unmapped_labels(batch: HiggsAudioBatchInput, items: Sequence[DatasetItem]) -> HiggsAudioBatchInput:
    """FAULT (b): labels kept in a label-only list, indexed with full-audio-list positions.

    Upstream's custom dataset built `label_audio_ids_concat` from the labelled clips only (the
    target) while the audio list holds reference + target.  Looking the target's label up by its
    audio-list index (1) in a one-element label list finds nothing, and the segment's labels
    become -100 - exactly like a segment the collator thinks must not be trained.
    """
    segments = []
    for item in items:
        label_list = [item.sample.get_audio_codes(i) for i in item.label_audio_indices]  # target only
        out_indices = [i for i in range(len(item.sample.audio_ids_start)) if i == item.target_audio_index]
        for idx in out_indices:
            segments.append(label_list[idx] if idx < len(label_list) else None)
    if batch.label_audio_ids is not None and batch.label_audio_ids.numel() > 0:
        starts = batch.audio_out_ids_start.tolist() + [batch.label_audio_ids.shape[1]]
        labels = batch.label_audio_ids.clone()  # (C, N_out)
        for k, seg in enumerate(segments):
            if seg is None:
                labels[:, starts[k]:starts[k + 1]] = -100
        batch.label_audio_ids = labels
    return batch


def collate(items: Sequence[DatasetItem], ctx: StageContext) -> HiggsAudioBatchInput:
    """list[DatasetItem] -> HiggsAudioBatchInput.

    Deep-copies the samples first: the upstream collator writes into `sample.label_ids` in place
    when `mask_audio_out_token_label=True`, and although this pipeline turns that off, the harness
    may feed the same items to other collators (or re-collate them) - a shared, mutated sample
    silently turns audio labels into -100 on the second pass (facts §3).  The copy makes every
    collation independent of every other.
    """
    samples = [copy.deepcopy(it.sample) for it in items]
    batch = make_collator(ctx.model_config)(samples)
    if is_on(ctx.faults, "unmapped-audio-labels"):
        batch = _unmapped_labels(batch, items)
    return batch


def batch_to_device(batch: HiggsAudioBatchInput, device: torch.device) -> HiggsAudioBatchInput:
    """Move every tensor field (dataclass or attribute container) to `device`."""
    fields = getattr(batch, "__dataclass_fields__", None) or vars(batch)
    for name in fields:
        value = getattr(batch, name, None)
        if isinstance(value, torch.Tensor):
            setattr(batch, name, value.to(device))
    return batch
