"""train-higgs-audio's collator: upstream `HiggsAudioSampleCollator`, then labels := `audio_out_ids`.

Parameters are the reference's (`COLLATOR_PARAMS`): Whisper off, `return_audio_in_tokens=True`,
`use_delay_pattern=False`, `round_to=8`, `audio_num_codebooks` from the model config,
`mask_audio_out_token_label` left at its default True.  After upstream collation the reference
REPLACES `label_audio_ids` with `audio_out_ids` (`[BOS, codes, EOS]` per audio-out segment,
concatenated over segments and samples); the shift happens later, in the loss.

Quirks (documented in reference_impl.loss and pinned in tests):
- QUIRK BOS-first labels: `label_audio_ids[:, seg_start] == audio_stream_bos_id` instead of
  upstream's -100, for every audio-out segment.
- QUIRK reference turn trained: every `<|AUDIO_OUT|>` segment is in `audio_out_ids`, so the
  zero-shot reference clip (an earlier assistant turn) is a label too.
- QUIRK no delay pattern: the released checkpoint has `use_delay_pattern: true` and uses it at
  inference; the reference trains without it.

Deviation: the reference loads `WhisperProcessor("openai/whisper-large-v3")` and passes
`encode_whisper_embed=True`; offline we pass no processor and `encode_whisper_embed=False`.  The
checkpoint has `skip_audio_tower=True`, so the model never reads Whisper features, and the
zero-shot layout has no audio-in span at all.

Fix (not in the reference): upstream writes -100 into the caller's `sample.label_ids` in place
when `mask_audio_out_token_label=True`, so collating the same sample object twice changes the
second batch.  We deep-copy the samples before calling upstream.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, Sequence

import torch
from boson_multimodal.data_collator.higgs_audio_collator import HiggsAudioSampleCollator
from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample

# The reference's collator arguments that do not come from the model config or tokenizer.
COLLATOR_PARAMS: dict[str, Any] = dict(
    whisper_processor=None,
    encode_whisper_embed=False,
    return_audio_in_tokens=True,
    use_delay_pattern=False,
    round_to=8,
    mask_audio_out_token_label=True,
)

BATCH_FIELDS: tuple[str, ...] = (
    "input_ids", "attention_mask", "audio_features", "audio_feature_attention_mask",
    "audio_out_ids", "audio_out_ids_start", "audio_out_ids_start_group_loc",
    "audio_in_ids", "audio_in_ids_start", "label_ids", "label_audio_ids", "reward",
)


class ExtendedHiggsAudioBatchInput:
    """Attribute container that HF `Trainer` and `model(**batch)` both accept.

    `__len__` is the batch size (the Trainer checks `len(inputs)`); `keys()`/`__getitem__` make
    `**batch` work; `__contains__` answers the Trainer's `"labels" in batch` probes.
    """

    def __init__(self, **fields: Any) -> None:
        self._keys: list[str] = []
        for key, value in fields.items():
            setattr(self, key, value)
            self._keys.append(key)

    def __len__(self) -> int:
        ids = getattr(self, "input_ids", None)
        return 0 if ids is None else int(ids.shape[0])

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def keys(self) -> list[str]:
        return list(self._keys)

    def to(self, device: torch.device | str) -> "ExtendedHiggsAudioBatchInput":
        """A copy with every tensor moved to `device`."""
        return ExtendedHiggsAudioBatchInput(**{
            k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.items()})

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self._keys]


class ExtendedHiggsAudioSampleCollator:
    """Upstream collator with the reference's parameters, then `label_audio_ids = audio_out_ids`."""

    def __init__(self, *, audio_in_token_id: int, audio_out_token_id: int, pad_token_id: int,
                 audio_stream_bos_id: int, audio_stream_eos_id: int, audio_num_codebooks: int,
                 **overrides: Any) -> None:
        params = {**COLLATOR_PARAMS, **overrides}
        self.params = dict(params, audio_in_token_id=audio_in_token_id, audio_out_token_id=audio_out_token_id,
                           pad_token_id=pad_token_id, audio_stream_bos_id=audio_stream_bos_id,
                           audio_stream_eos_id=audio_stream_eos_id, audio_num_codebooks=audio_num_codebooks)
        self.base_collator = HiggsAudioSampleCollator(**self.params)

    @classmethod
    def from_config(cls, model_config: Any, tokenizer: Any, **overrides: Any) -> "ExtendedHiggsAudioSampleCollator":
        """Ids from the HiggsAudioConfig (as the reference does) and pad from the tokenizer."""
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(audio_in_token_id=model_config.audio_in_token_idx,
                   audio_out_token_id=model_config.audio_out_token_idx,
                   pad_token_id=pad,
                   audio_stream_bos_id=model_config.audio_stream_bos_id,
                   audio_stream_eos_id=model_config.audio_stream_eos_id,
                   audio_num_codebooks=model_config.audio_num_codebooks,
                   **overrides)

    def __call__(self, samples: Sequence[ChatMLDatasetSample]) -> ExtendedHiggsAudioBatchInput:
        # Deep copy: upstream masks <|AUDIO_OUT|> labels in the caller's label_ids in place.
        batch = self.base_collator(copy.deepcopy(list(samples)))
        fields = {name: getattr(batch, name) for name in BATCH_FIELDS}
        # The reference's one change: audio labels are the audio-out inputs ([BOS, codes, EOS]).
        fields["label_audio_ids"] = batch.audio_out_ids
        return ExtendedHiggsAudioBatchInput(**fields)
