"""Right-padded training batches under plain causal attention (SDPA `is_causal`, no mask tensor).

Upstream's `HiggsAudioModel._update_causal_mask` (sdpa) drops the mask only when the batch has no
padding at all; otherwise it builds a (B, 1, L, L) additive mask, and SDPA then cannot use its
flash kernel.  The custom collator pads on the RIGHT (`pad_left=False`; upstream's merge keeps it
right-padded for batches of more than one sample), so every real position t of a row sees only
positions <= t, which are all real: the padding mask removes nothing a real position could see,
and dropping it leaves every real position's output unchanged.  Padded positions' outputs do
change, but nothing reads them (they carry no label and come after every real position).

`install(base)` replaces `_update_causal_mask` on ONE model instance; the batch's merged
attention mask is checked to be right-padded on every call (one host sync) and anything else -
left padding, a cache, attention outputs, a non-SDPA attention - goes to upstream's method.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from boson_multimodal.model.higgs_audio.modeling_higgs_audio import HiggsAudioDualFFNDecoderLayer, HiggsAudioModel

UPSTREAM_UPDATE_CAUSAL_MASK = HiggsAudioModel._update_causal_mask


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """(B, L) 0/1 mask: every row is ones then zeros (a row of zeros too)."""
    m = attention_mask.to(torch.int8)
    return bool((m[:, 1:] <= m[:, :-1]).all()) if m.shape[1] > 1 else True


def _causal_update(self: HiggsAudioModel, attention_mask: torch.Tensor | None, input_tensor: torch.Tensor,
                   cache_position: torch.Tensor, past_key_values: Any, output_attentions: bool) -> torch.Tensor | None:
    if (past_key_values is None and not output_attentions and isinstance(attention_mask, torch.Tensor)
            and attention_mask.dim() == 2 and input_tensor.shape[1] > 1 and is_right_padded(attention_mask)):
        return None          # LlamaSdpaAttention then calls SDPA with is_causal=True
    return UPSTREAM_UPDATE_CAUSAL_MASK(self, attention_mask, input_tensor, cache_position, past_key_values,
                                       output_attentions)


def unsupported_reason(base: HiggsAudioModel) -> str | None:
    """Why the mask may not be dropped on this model, or None.

    Fast-forward layers and audio self-attention build their own masks from `attention_mask`
    (None means something else to them), and only SDPA treats a None mask as causal.
    """
    impl = getattr(base.config, "_attn_implementation", None)
    if impl != "sdpa":
        return f"attention implementation {impl!r} is not sdpa"
    for layer in base.layers:
        if isinstance(layer, HiggsAudioDualFFNDecoderLayer) and (layer.fast_forward or layer.use_audio_attention):
            return "the model has fast-forward or audio self-attention layers"
    return None


def install(base: HiggsAudioModel) -> str | None:
    """Drop redundant padding masks on `base`; returns None when installed, else why not."""
    reason = unsupported_reason(base)
    if reason is None:
        base._update_causal_mask = types.MethodType(_causal_update, base)
    return reason
