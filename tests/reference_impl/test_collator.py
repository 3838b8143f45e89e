"""reference_impl.collator: labels := audio_out_ids, no in-place mutation, batch container protocol."""

from __future__ import annotations

import copy

import torch
from boson_multimodal.data_collator.higgs_audio_collator import HiggsAudioSampleCollator

from reference_impl.collator import COLLATOR_PARAMS, ExtendedHiggsAudioBatchInput, ExtendedHiggsAudioSampleCollator


def _collator(ctx):
    return ExtendedHiggsAudioSampleCollator.from_config(ctx.model_config, ctx.text_tokenizer)


def test_reference_parameters(ctx):
    col = _collator(ctx)
    assert col.params["use_delay_pattern"] is False
    assert col.params["return_audio_in_tokens"] is True
    assert col.params["encode_whisper_embed"] is False and col.params["whisper_processor"] is None
    assert col.params["round_to"] == 8
    assert col.params["mask_audio_out_token_label"] is True
    assert col.params["audio_num_codebooks"] == ctx.model_config.audio_num_codebooks
    assert COLLATOR_PARAMS["use_delay_pattern"] is False


def test_label_audio_ids_is_audio_out_ids(ctx, zero_shot_items):
    batch = _collator(ctx)([it.sample for it in zero_shot_items[:2]])
    assert batch.label_audio_ids is batch.audio_out_ids
    # 2 samples x (reference + target) segments, each [BOS, codes, EOS].
    starts = batch.audio_out_ids_start.tolist()
    assert len(starts) == 4
    bos, eos = ctx.model_config.audio_stream_bos_id, ctx.model_config.audio_stream_eos_id
    assert (batch.label_audio_ids[:, starts] == bos).all()            # QUIRK BOS-first labels
    ends = starts[1:] + [batch.audio_out_ids.shape[1]]
    assert (batch.label_audio_ids[:, [e - 1 for e in ends]] == eos).all()
    assert not (batch.label_audio_ids == -100).any()


def test_collating_twice_is_identical_and_inputs_unchanged(ctx, zero_shot_items):
    samples = [it.sample for it in zero_shot_items[:2]]
    before = copy.deepcopy(samples)
    col = _collator(ctx)
    a, b = col(samples), col(samples)
    for key in a.keys():
        va, vb = a[key], b[key]
        if isinstance(va, torch.Tensor):
            torch.testing.assert_close(va, vb, rtol=0, atol=0)
        else:
            assert va == vb
    for s, s0 in zip(samples, before):
        torch.testing.assert_close(s.label_ids, s0.label_ids, rtol=0, atol=0)
        torch.testing.assert_close(s.input_ids, s0.input_ids, rtol=0, atol=0)


def test_upstream_collator_mutates_labels_in_place(ctx, zero_shot_items):
    """Why the deep copy exists: upstream writes -100 into the caller's label_ids."""
    sample = copy.deepcopy(zero_shot_items[0].sample)
    before = sample.label_ids.clone()
    upstream = HiggsAudioSampleCollator(**_collator(ctx).params)
    upstream([sample])
    assert not torch.equal(sample.label_ids, before)


def test_batch_container_protocol():
    ids = torch.zeros(3, 5, dtype=torch.long)
    batch = ExtendedHiggsAudioBatchInput(input_ids=ids, label_ids=None)
    assert len(batch) == 3
    assert "input_ids" in batch and "labels" not in batch
    assert batch.keys() == ["input_ids", "label_ids"]
    assert batch["input_ids"] is ids

    def f(**kw):
        return kw
    assert set(f(**batch)) == {"input_ids", "label_ids"}
    assert len(ExtendedHiggsAudioBatchInput()) == 0
