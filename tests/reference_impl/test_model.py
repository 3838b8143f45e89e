"""reference_impl.model: the loss-returning model behind PEFT CAUSAL_LM, which passes labels=/inputs_embeds=."""

from __future__ import annotations

import torch

from higgs_common.stages import TrainConfig
from reference_impl.collator import ExtendedHiggsAudioSampleCollator
from reference_impl.model import HiggsAudioModelWithLoss
from reference_impl.trainer import apply_lora


def test_peft_causal_lm_forward_and_labels_ignored(ctx, zero_shot_items):
    torch.manual_seed(0)
    base = HiggsAudioModelWithLoss.from_pretrained(str(ctx.model_path)).eval()
    model = apply_lora(base, TrainConfig(lora_dropout=0.0)).eval()
    batch = ExtendedHiggsAudioSampleCollator.from_config(ctx.model_config, ctx.text_tokenizer)(
        [it.sample for it in zero_shot_items[:2]])
    with torch.no_grad():
        out = model(**batch)
        out_labels = model(**batch, labels=torch.zeros_like(batch.input_ids))   # QUIRK labels ignored
    assert torch.isfinite(out.loss) and out.audio_loss > 0 and out.llm_loss > 0
    torch.testing.assert_close(out.loss, out_labels.loss)
    torch.testing.assert_close(out.loss, out.llm_loss + out.audio_loss)
    assert out.loss_info["audio_tokens"] > 0
