"""Conventions for real layouts: instruction templates around the transcript, trained text next to
the target audio, and values a pipeline decides at run time (FromConfig)."""

from __future__ import annotations

import dataclasses

import pytest

from harness.semantics import prompt as T
from higgs_common.conventions import Conventions, ConventionsError, FromConfig


def _conv(**changes):
    import custom_impl.stages as base

    return dataclasses.replace(base.CONVENTIONS, **changes)


def test_templates_and_target_turn_text_render_and_read_back(records, ctx):
    rec = records[0]
    conv = _conv(voice_prompt="assistant_turn", transcript_template="Please read aloud: {text}",
                 target_turn_text="before_audio", target_turn_template="Sure: {text}")
    msgs, _start, _roles = T.declared_messages(rec, conv)
    text = conv.normalize_transcript(rec.text)
    assert msgs[-2].content == f"Please read aloud: {text}"
    said, audio = msgs[-1].content
    assert said.text == f"Sure: {text}" and audio.type == "audio"
    r = T.render_declared(rec, conv, ctx.text_tokenizer)
    ids = T.SpecialIds.from_tokenizer(ctx.text_tokenizer, ctx.model_config)
    sup = T.supervised_text(r.input_ids, r.label_ids, ids=ids, tokenizer=ctx.text_tokenizer, target_audio=1,
                            reference_audio=0)
    assert sup["target"].startswith(f"Sure: {text}")
    trans = T.prompt_transcripts(r.input_ids, ids=ids, tokenizer=ctx.text_tokenizer, voice_prompt="assistant_turn",
                                 reference_audio=0)
    assert T.untemplate(trans["target_transcript"], conv.transcript_template) == text
    after = _conv(target_turn_text="after_audio")
    assert T.declared_messages(rec, after)[0][-1].content[0].type == "audio"


def test_untemplate_keeps_text_that_does_not_fit():
    assert T.untemplate("Say: hi there.", "Say: {text}.") == "hi there"
    assert T.untemplate("hi there", "Say: {text}.") == "hi there"
    assert T.untemplate(None, "Say: {text}") is None


def test_values_decided_at_run_time_are_read_from_the_effective_config():
    conv = _conv(mask_audio_out_token_label=FromConfig("collator.mask_audio_out_token_label"),
                 target_turn_text=FromConfig("message_layout.assistant_text"))
    got = conv.resolved({"collator": {"mask_audio_out_token_label": False},
                         "message_layout": {"assistant_text": "after_audio"}})
    assert got.mask_audio_out_token_label is False and got.target_turn_text == "after_audio"
    assert conv.to_json()["target_turn_text"] == {"from_config": "message_layout.assistant_text"}
    with pytest.raises(ConventionsError, match="no 'collator.mask_audio_out_token_label'"):
        conv.resolved({})
    with pytest.raises(ConventionsError, match="target_turn_text"):
        conv.resolved({"collator": {"mask_audio_out_token_label": True}, "message_layout": {"assistant_text": "x"}})
    with pytest.raises(ConventionsError, match="exactly one"):
        _conv(transcript_template="no placeholder")
    assert isinstance(conv, Conventions)


def test_a_different_target_turn_text_is_an_expected_difference(ctx):
    from harness.semantics.expectations import derive

    ref = _conv()
    cus = _conv(target_turn_text="before_audio")
    ids = {e.id for e in derive(ref, cus, model_config=ctx.model_config)}
    assert "target-turn-text" in ids and "target-turn-text" not in {
        e.id for e in derive(ref, ref, model_config=ctx.model_config)}
