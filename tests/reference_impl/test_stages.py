"""reference_impl.stages: the stage contract end to end on the tiny checkpoint."""

from __future__ import annotations

import pytest
import torch
from boson_multimodal.data_collator.higgs_audio_collator import HiggsAudioSampleCollator
from peft import PeftModel

from higgs_common.stages import ForwardOutputs, LossBreakdown, PipelineStages, UnknownFaultError
from reference_impl import stages
from reference_impl.collator import ExtendedHiggsAudioSampleCollator
from reference_impl.loss import reference_losses


def test_module_satisfies_protocol():
    assert isinstance(stages, PipelineStages)
    assert stages.NAME == "reference"


def test_default_train_is_reference():
    d = stages.DEFAULT_TRAIN
    assert (d.learning_rate, d.warmup_steps, d.lora_r, d.lora_alpha, d.lora_dropout) == (5e-5, 100, 16, 32, 0.1)
    assert d.use_lora is False          # the reference CLI: LoRA only with --use_lora
    assert set(d.lora_target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (d.weight_decay, d.adam_betas, d.max_grad_norm, d.schedule) == (0.0, (0.9, 0.999), 1.0, "linear")


def test_dataset_items(zero_shot_items, records):
    assert [it.sample_id for it in zero_shot_items] == [r.id for r in records[:len(zero_shot_items)]]
    for it in zero_shot_items:
        assert it.target_audio_index == 1 and it.reference_audio_index == 0
        assert it.label_audio_indices == (0, 1)
        assert it.extra["layout"] == ["system:text", "user:text", "assistant:audio", "user:text", "assistant:audio"]


def test_task_type_option(ref_folder, ctx):
    from dataclasses import replace
    items = stages.dataset(ref_folder, replace(ctx, options={"task_type": "single_speaker_smart_voice"}))
    assert items[0].reference_audio_index is None and items[0].target_audio_index == 0


def test_unknown_fault_rejected(ref_folder, ctx):
    from dataclasses import replace
    with pytest.raises(UnknownFaultError):
        stages.dataset(ref_folder, replace(ctx, faults=frozenset({"no_shift"})))


@pytest.mark.parametrize("use_lora", [False, True])
def test_forward_loss_backward_step(ctx, zero_shot_items, use_lora):
    train = stages.DEFAULT_TRAIN.replace(use_lora=use_lora, lora_dropout=0.0, warmup_steps=0, learning_rate=1e-3)
    model = stages.build_model(ctx, train)
    assert isinstance(model, PeftModel) is use_lora
    batch = stages.collate(zero_shot_items[:2], ctx)
    out = stages.forward(model, batch, ctx)
    assert isinstance(out, ForwardOutputs)
    lb = stages.loss(out, batch, ctx)
    assert isinstance(lb, LossBreakdown)
    assert torch.isfinite(lb.total) and lb.audio > 0 and lb.text > 0
    assert lb.has_target_audio and lb.audio_supervised_tokens > 0 and lb.text_supervised_tokens > 0
    torch.testing.assert_close(lb.total.detach(), out.extra["model_loss"].detach())
    assert lb.per_codebook.shape == (ctx.model_config.audio_num_codebooks,)
    assert lb.audio_token_ce.shape == (out.audio_logits.shape[0], ctx.model_config.audio_num_codebooks)
    assert lb.text_token_ce.shape == out.expanded_labels.shape
    grads = stages.backward(lb, model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads) == trainable
    assert all("lora_" in n for n in grads) is use_lora
    assert any(g is not None and g.abs().sum() > 0 for g in grads.values())
    opt, sched = stages.make_optimizer(model, train)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    after = stages.step(model, opt, ctx, train)
    assert set(after) == trainable
    assert any(not torch.equal(after[n], before[n]) for n in after)


def test_loss_on_upstream_collated_batch(ctx, zero_shot_items, tiny_model):
    """loss() must score a batch built by another collator (upstream labels: -100 at BOS etc.)."""
    params = ExtendedHiggsAudioSampleCollator.from_config(ctx.model_config, ctx.text_tokenizer).params
    import copy
    upstream = HiggsAudioSampleCollator(**{**params, "mask_audio_out_token_label": False})
    batch = upstream(copy.deepcopy([it.sample for it in zero_shot_items[:2]]))
    with torch.no_grad():
        out = stages.forward(tiny_model, batch, ctx)
        lb = stages.loss(out, batch, ctx)
    expected = reference_losses(out.logits, out.audio_logits, out.expanded_labels, batch.label_audio_ids)
    torch.testing.assert_close(lb.audio, expected["audio_loss"])
    assert lb.audio_supervised_tokens == expected["audio_tokens"] > 0


def test_effective_config(ctx):
    cfg = stages.effective_config(ctx, stages.DEFAULT_TRAIN.replace(use_lora=True))
    assert cfg["collator"]["use_delay_pattern"] is False
    assert cfg["collator"]["audio_num_codebooks"] == ctx.model_config.audio_num_codebooks
    assert cfg["collator"]["label_audio_ids"] == "audio_out_ids"
    assert cfg["message_layout"]["messages"] == ["system:text", "user:text", "assistant:audio", "user:text",
                                                 "assistant:audio"]
    assert cfg["message_layout"]["voice_prompt"] == "assistant_turn"
    assert cfg["message_layout"]["trained_turns"] == ["target", "voice_prompt"]
    assert cfg["lora"]["r"] == 16 and cfg["lora"]["dropout"] == 0.1 and cfg["lora"]["task_type"] == "CAUSAL_LM"
    assert cfg["optimizer"]["class"].endswith("AdamW") and cfg["optimizer"]["lr"] == 5e-5
    assert cfg["schedule"] == {"type": "linear", "warmup_steps": 100, "max_steps": 20}
    assert cfg["precision"]["mode"] == "fp32"          # bf16 only on CUDA
    assert cfg["loss"] == stages.CONVENTIONS.loss.to_json()
    assert cfg["loss"]["audio_shift_scope"] == "stream" and cfg["loss"]["total"] == "sum_positive"
    assert cfg["distributed"]["find_unused_parameters"] is True
