"""The settings of an upstream `HiggsAudioSampleCollator`, read off the object itself.

Both pipelines report their collator through this one function, so the configuration stage of
the harness compares the same keys on both sides, with the values the collator really holds
(constructor defaults included), not the arguments someone believes were passed.
"""

from __future__ import annotations

from typing import Any

# Attributes upstream's __init__ stores (boson_multimodal 0.1.1, data_collator/higgs_audio_collator.py).
UPSTREAM_COLLATOR_SETTINGS: tuple[str, ...] = (
    "round_to", "pad_left", "audio_in_token_id", "audio_out_token_id", "audio_stream_bos_id",
    "audio_stream_eos_id", "pad_token_id", "encode_whisper_embed", "return_audio_in_tokens",
    "audio_num_codebooks", "use_delay_pattern", "chunk_size_seconds", "disable_audio_codes_transform",
    "add_new_bos_eos_for_long_chunk", "mask_audio_out_token_label",
)


def collator_settings(collator: Any) -> dict[str, Any]:
    """{setting: value} of an upstream collator; `whisper_processor` as "loaded" or None."""
    out = {k: getattr(collator, k) for k in UPSTREAM_COLLATOR_SETTINGS if hasattr(collator, k)}
    out["whisper_processor"] = None if getattr(collator, "whisper_processor", None) is None else "loaded"
    return out
