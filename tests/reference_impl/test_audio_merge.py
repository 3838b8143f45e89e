"""Issue 15: reference_impl carries the reference's dtype cast in the audio-out merge; upstream stays unpatched.

On CUDA under bf16 autocast the audio-code embedding sum runs in float32 while the text embeddings
are bf16.  These CPU tests build the same dtype mismatch directly (a float32 audio embedding, bf16
text embeddings), which upstream 0.1.1 rejects with the error seen on the GPU.
"""

from __future__ import annotations

import pytest
import torch
from boson_multimodal.model.higgs_audio import HiggsAudioModel, modeling_higgs_audio
from boson_multimodal.model.higgs_audio import utils as upstream_utils

from reference_impl.audio_merge import UPSTREAM_MERGE, forward_with_reference_merge, merge_input_ids_with_audio_features
from reference_impl.model import HiggsAudioModelWithLoss

AUDIO_IN, AUDIO_OUT = 6, 7


def _merge_args(audio_dtype: torch.dtype) -> tuple:
    """One sample [t, <|AUDIO_OUT|>, t, t] with a 3-frame audio-out segment; text bf16, audio `audio_dtype`."""
    torch.manual_seed(0)
    input_ids = torch.tensor([[1, AUDIO_OUT, 2, 3]])
    inputs_embeds = torch.randn(1, 4, 8).to(torch.bfloat16)
    audio_out_embed = torch.randn(3, 8, dtype=audio_dtype)
    return (None, None, None, None, audio_out_embed, torch.tensor([0]), AUDIO_IN, AUDIO_OUT, inputs_embeds,
            input_ids, torch.ones(1, 4, dtype=torch.long), input_ids.clone())


def test_upstream_merge_fails_on_a_float32_audio_embedding_and_the_reference_merge_casts():
    args = _merge_args(torch.float32)
    with pytest.raises(RuntimeError, match="Index put requires the source and destination dtypes match"):
        UPSTREAM_MERGE(*args, pad_token_id=0, round_to=1, left_padding=False)
    merged = merge_input_ids_with_audio_features(*args, pad_token_id=0, round_to=1, left_padding=False)
    embeds = merged[0]                                                   # (1, 6, 8)
    assert embeds.dtype == torch.bfloat16 and embeds.shape == (1, 6, 8)
    torch.testing.assert_close(embeds[0, 1:4], args[4].to(torch.bfloat16), rtol=0, atol=0)   # the cast values
    same = _merge_args(torch.bfloat16)                                   # matching dtypes: exactly upstream
    for a, b in zip(UPSTREAM_MERGE(*same, pad_token_id=0, round_to=1, left_padding=False),
                    merge_input_ids_with_audio_features(*same, pad_token_id=0, round_to=1, left_padding=False)):
        assert (a is None and b is None) or torch.equal(a, b)


def test_audio_in_embedding_of_a_foreign_batch_is_cast_too():
    # [t, <|AUDIO|>, t, <|AUDIO_OUT|>]: a zero-shot batch of the custom collator (voice prompt in the
    # audio-in slot), as the benchmark feeds it to the reference; 2 audio-in frames, 3 audio-out frames
    torch.manual_seed(0)
    input_ids = torch.tensor([[1, AUDIO_IN, 2, AUDIO_OUT]])
    inputs_embeds = torch.randn(1, 4, 8).to(torch.bfloat16)
    audio_in, audio_out = torch.randn(2, 8), torch.randn(3, 8)          # float32, as under CUDA autocast
    args = (None, None, audio_in, torch.tensor([0]), audio_out, torch.tensor([0]), AUDIO_IN, AUDIO_OUT,
            inputs_embeds, input_ids, torch.ones(1, 4, dtype=torch.long), input_ids.clone())
    with pytest.raises(RuntimeError, match="Index put requires the source and destination dtypes match"):
        UPSTREAM_MERGE(*args, pad_token_id=0, round_to=1, left_padding=False)
    embeds = merge_input_ids_with_audio_features(*args, pad_token_id=0, round_to=1, left_padding=False)[0]
    assert embeds.dtype == torch.bfloat16 and embeds.shape == (1, 7, 8)   # 4 tokens - 2 placeholders + 5 frames
    torch.testing.assert_close(embeds[0, 1:3], audio_in.to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(embeds[0, 4:7], audio_out.to(torch.bfloat16), rtol=0, atol=0)


def test_upstream_module_is_not_patched():
    assert modeling_higgs_audio.merge_input_ids_with_audio_features is upstream_utils.merge_input_ids_with_audio_features
    assert upstream_utils.merge_input_ids_with_audio_features is UPSTREAM_MERGE
    assert forward_with_reference_merge.__code__ is HiggsAudioModel.forward.__code__
    assert forward_with_reference_merge.__globals__["merge_input_ids_with_audio_features"] \
        is merge_input_ids_with_audio_features


def _batch(ctx, records, tmp_path):
    import dataclasses

    import reference_impl.stages as R

    rctx = dataclasses.replace(ctx, options={"task_type": "zero_shot_voice_cloning"})
    items = R.dataset(R.write_native(records[:2], tmp_path / "native"), rctx)
    return {k: v for k, v in R._batch_fields(R.collate(items, rctx)).items() if v is not None}


def test_bf16_model_with_float32_audio_embedding(ctx, records, tmp_path):
    """What CUDA autocast does to the audio embedding, on CPU: upstream crashes, the reference's model runs."""
    batch = _batch(ctx, records, tmp_path)
    upstream = HiggsAudioModel.from_pretrained(str(ctx.model_path), torch_dtype=torch.bfloat16)
    upstream.audio_codebook_embeddings.float()
    with pytest.raises(RuntimeError, match="Index put requires the source and destination dtypes match"):
        upstream(**batch)
    ours = HiggsAudioModelWithLoss.from_pretrained(str(ctx.model_path), torch_dtype=torch.bfloat16)
    ours.audio_codebook_embeddings.float()
    out = ours(**batch)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)


def test_fp32_outputs_equal_upstream(ctx, records, tmp_path):
    batch = _batch(ctx, records, tmp_path)
    a = HiggsAudioModel.from_pretrained(str(ctx.model_path)).eval()(**batch)
    b = HiggsAudioModelWithLoss.from_pretrained(str(ctx.model_path)).eval()(**batch)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.audio_logits, b.audio_logits)
