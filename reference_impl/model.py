"""`HiggsAudioModelWithLoss`: upstream `HiggsAudioModel` plus the reference's loss, without patching it.

The reference edits boson_multimodal's `HiggsAudioModel.forward` in place so that it (a) accepts
`labels=` (PEFT's `PeftModelForCausalLM` passes `labels=` and `inputs_embeds=` to the wrapped
model when `task_type=CAUSAL_LM`) and (b) computes `loss`/`llm_loss` with `compute_losses`.  We
subclass instead: `forward` drops those two PEFT arguments, runs the upstream forward and fills
`loss`, `llm_loss`, `audio_loss` and `codebook_losses` from `reference_impl.loss.reference_losses`.

Behaviour kept from the reference:
- QUIRK labels ignored: the PEFT-supplied `labels` are discarded; the text labels are upstream's
  `expanded_labels` (built from `label_ids`).  `inputs_embeds` is discarded too (upstream embeds
  `input_ids` itself).
- the reference's patched output leaves `audio_loss`/`codebook_losses` unset (None); we fill them,
  which only adds information (the Trainer reads `loss`).
- the reference's vendored boson_multimodal casts the audio-out embedding to the text embeddings'
  dtype in `merge_input_ids_with_audio_features` (so bf16 weights train under CUDA bf16 autocast);
  `forward` runs upstream's forward with that merge (`reference_impl.audio_merge`), without
  touching the upstream module the custom pipeline uses.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from boson_multimodal.model.higgs_audio import HiggsAudioModel
from boson_multimodal.model.higgs_audio.modeling_higgs_audio import HiggsAudioModelOutputWithPast

from reference_impl.audio_merge import forward_with_reference_merge
from reference_impl.loss import reference_losses


class HiggsAudioModelWithLoss(HiggsAudioModel):
    """HiggsAudioModel whose forward also returns the reference's losses."""

    def forward(self, input_ids: Optional[torch.LongTensor] = None, *,
                labels: Optional[torch.LongTensor] = None,
                inputs_embeds: Optional[torch.FloatTensor] = None,
                **kwargs: Any):
        del labels, inputs_embeds   # QUIRK labels ignored (see module docstring)
        kwargs["return_dict"] = True
        out = forward_with_reference_merge(self, input_ids=input_ids, **kwargs)   # upstream forward + the cast
        if kwargs.get("use_cache"):
            return out           # generation: no loss
        losses = reference_losses(out.logits, out.audio_logits, out.expanded_labels, kwargs.get("label_audio_ids"))
        # Rebuild rather than assign: ModelOutput keeps None fields out of its dict, and `loss` must
        # come first for tuple-style consumers.
        ret = HiggsAudioModelOutputWithPast(
            loss=losses["loss"], llm_loss=losses["llm_loss"], audio_loss=losses["audio_loss"],
            codebook_losses=losses["codebook_losses"],
            **{k: v for k, v in out.items() if k not in ("loss", "llm_loss", "audio_loss", "codebook_losses")})
        ret.loss_info = {k: losses[k] for k in ("text_tokens", "audio_tokens", "dropped")}   # attribute only
        return ret
