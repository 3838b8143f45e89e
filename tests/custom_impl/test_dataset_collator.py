"""Dataset roles, the reference-vs-label guard, error paths, and the collator's copy boundary."""

import copy
import json

import pytest
import torch

from custom_impl import stages as S
from higgs_common.stages import SampleError


def test_items_name_reference_and_target_explicitly(items, records, ctx):
    assert [it.sample_id for it in items] == [r.id for r in records]
    for it, rec in zip(items, records):
        assert (it.reference_audio_index, it.target_audio_index, it.label_audio_indices) == (0, 1, (1,))
        tgt = it.sample.get_audio_codes(it.target_audio_index)
        ref = it.sample.get_audio_codes(it.reference_audio_index)
        assert torch.equal(tgt, ctx.code_cache.codes(rec.audio, sample_id=rec.id, field="audio"))
        assert torch.equal(ref, ctx.code_cache.codes(rec.ref_audio, sample_id=rec.id, field="ref_audio"))
    ids = items[0].sample.input_ids
    cfg = ctx.model_config
    assert int((ids == cfg.audio_in_token_idx).sum()) == 1 and int((ids == cfg.audio_out_token_idx).sum()) == 1


def _rewrite(native_path, tmp_path, edit):
    data = json.loads(native_path.read_text())[:2]
    edit(data[0])
    p = tmp_path / "edited.json"
    p.write_text(json.dumps(data))
    return p


def test_label_audio_equal_to_reference_is_a_sample_error(native_path, tmp_path, ctx, items):
    def same_audio(entry):
        entry["messages"][2]["content"][0]["audio_url"] = entry["messages"][1]["content"][1]["audio_url"]
    p = _rewrite(native_path, tmp_path, same_audio)
    with pytest.raises(SampleError) as err:
        S.dataset(p, ctx)
    assert items[0].sample_id in str(err.value) and "messages[2].content[0].audio_url" in str(err.value)


def test_reference_as_label_fault_puts_reference_codes_in_the_label_slot(native_path, with_faults):
    faulty = S.dataset(native_path, with_faults("reference-audio-as-label"))
    for it in faulty:
        assert torch.equal(it.sample.get_audio_codes(it.target_audio_index),
                           it.sample.get_audio_codes(it.reference_audio_index))
    batch = S.collate(faulty[:2], with_faults("reference-audio-as-label"))
    sup = batch.label_audio_ids != -100
    assert sup.any()   # labels exist - they are just the prompt's codes


@pytest.mark.parametrize("edit, field", [
    (lambda e: e["messages"][1]["content"].pop(0), "ref"),                       # no ref transcript
    (lambda e: e["messages"][1]["content"].pop(1), "reference audio"),           # no ref clip
    (lambda e: e["messages"][1]["content"][1].update(audio_url="/nope.wav"), "not found"),
    (lambda e: e["messages"][1]["content"][0].update(bogus=1), "prepare_chatml_sample"),  # upstream -> Nones
])
def test_bad_samples_raise_naming_sample_and_field(native_path, tmp_path, ctx, items, edit, field):
    p = _rewrite(native_path, tmp_path, edit)
    with pytest.raises(SampleError) as err:
        S.dataset(p, ctx)
    msg = str(err.value)
    assert items[0].sample_id in msg and field in msg and "field=" in msg


def test_collate_does_not_mutate_items_and_is_repeatable(items, ctx):
    before = copy.deepcopy([it.sample.label_ids for it in items[:3]])
    a = S.collate(items[:3], ctx)
    b = S.collate(items[:3], ctx)
    assert torch.equal(a.label_audio_ids, b.label_audio_ids) and torch.equal(a.label_ids, b.label_ids)
    assert all(torch.equal(x, it.sample.label_ids) for x, it in zip(before, items[:3]))
    assert a.audio_in_ids.shape[1] > 0                                        # reference as codes
    assert int((a.label_audio_ids != -100).sum()) > 0
    # delay pattern from the config: codebook k starts k frames later
    assert a.audio_out_ids.shape[1] == sum(
        it.sample.get_audio_codes(1).shape[1] + 2 + ctx.model_config.audio_num_codebooks - 1 for it in items[:3])


def test_unmapped_labels_fault_leaves_only_minus_100(items, with_faults):
    batch = S.collate(items[:3], with_faults("unmapped-audio-labels"))
    assert batch.audio_out_ids.shape[1] > 0 and bool((batch.label_audio_ids == -100).all())


def test_effective_config_reports_real_settings(ctx):
    cfg = S.effective_config(ctx, S.DEFAULT_TRAIN)
    assert cfg["collator"]["mask_audio_out_token_label"] is False
    assert cfg["collator"]["return_audio_in_tokens"] is True
    assert cfg["collator"]["use_delay_pattern"] == bool(ctx.model_config.use_delay_pattern)
    assert cfg["lora"]["r"] == 32 and cfg["lora"]["alpha"] == 64 and "down_proj" in cfg["lora"]["target_modules"]
    assert cfg["optimizer"]["betas"] == [0.9, 0.95] and cfg["schedule"]["type"] == "cosine"


def test_random_extra_layers_fault_loads_missing_keys(ctx, with_faults):
    good = S.build_model(ctx, S.DEFAULT_TRAIN)
    bad = S.build_model(with_faults("random-extra-layers"), S.DEFAULT_TRAIN)
    assert good.higgs_missing_keys == []
    assert any("audio_out_embed_projector" in k for k in bad.higgs_missing_keys)
    assert any("audio_attn" in k or "audio_" in k for k in bad.higgs_missing_keys)
