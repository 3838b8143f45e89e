"""Declared prompts rendered through upstream prepare_chatml_sample equal what each pipeline builds."""

from __future__ import annotations

import importlib

import pytest
import torch

from harness.semantics import prompt as T

SPECS = ("reference_impl.stages", "custom_impl.stages", "examples.upstream_defaults.stages")


@pytest.fixture(scope="module", params=SPECS)
def side(request, records, ctx, tmp_path_factory):
    mod = importlib.import_module(request.param)
    native = mod.write_native(records, tmp_path_factory.mktemp("native"))
    return mod, mod.dataset(native, ctx)


def test_declared_rendering_equals_each_pipelines_dataset(side, records, ctx):
    mod, items = side
    for record, item in zip(records, items):
        r = T.render_declared(record, mod.CONVENTIONS, ctx.text_tokenizer)
        assert torch.equal(r.input_ids, item.sample.input_ids), record.id
        assert torch.equal(r.label_ids, item.sample.label_ids), record.id
        assert r.audio_roles.index("target") == item.target_audio_index


def test_transcripts_are_read_back_as_declared(side, records, ctx):
    mod, items = side
    ids = T.SpecialIds.from_tokenizer(ctx.text_tokenizer, ctx.model_config)
    conv = mod.CONVENTIONS
    for record, item in zip(records, items):
        got = T.prompt_transcripts(item.sample.input_ids, ids=ids, tokenizer=ctx.text_tokenizer,
                                   voice_prompt=conv.voice_prompt, reference_audio=item.reference_audio_index,
                                   system_text=conv.system_message(record))
        assert got["target_transcript"] == conv.normalize_transcript(record.text)
        assert got["reference_transcript"] == conv.normalize_reference_transcript(record.ref_text)


def test_supervised_text_by_turn(side, records, ctx):
    mod, items = side
    ids = T.SpecialIds.from_tokenizer(ctx.text_tokenizer, ctx.model_config)
    item = items[0]
    sup = T.supervised_text(item.sample.input_ids, item.sample.label_ids, ids=ids, tokenizer=ctx.text_tokenizer,
                            target_audio=item.target_audio_index, reference_audio=item.reference_audio_index)
    assert sup["target"] == "<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|><|eot_id|>"
    assert sup["prompt"] == "" and sup["other_assistant"] == ""
    assert bool(sup["voice_prompt"]) is mod.CONVENTIONS.trains_voice_prompt


def test_shifted_and_prompt_labels_show_in_the_supervised_text(records, ctx):
    mod = importlib.import_module("custom_impl.stages")
    r = T.render_declared(records[0], mod.CONVENTIONS, ctx.text_tokenizer)
    ids = T.SpecialIds.from_tokenizer(ctx.text_tokenizer, ctx.model_config)
    shifted = torch.cat([r.label_ids[1:], torch.tensor([-100])])
    sup = T.supervised_text(r.input_ids, shifted, ids=ids, tokenizer=ctx.text_tokenizer, target_audio=1,
                            reference_audio=0)
    assert "[label" in sup["target"]
    sup = T.supervised_text(r.input_ids, r.input_ids.clone(), ids=ids, tokenizer=ctx.text_tokenizer, target_audio=1,
                            reference_audio=0)
    assert "user" in sup["prompt"] or sup["prompt"]
