"""Issue 15: reserved special tokens and transcripts with nothing to say (higgs_common.transcripts)."""

from __future__ import annotations

import pytest

from higgs_common.stages import SampleError
from higgs_common.transcripts import (ReservedTokenError, TranscriptEmptyError, check_transcript,
                                      reserved_token_strings)
from reference_impl.normalize import normalize_transcript


def test_reserved_tokens_come_from_the_tokenizer(ctx):
    from higgs_common.assets.text_tokenizer import HIGGS_SPECIAL_TOKENS

    tok = ctx.text_tokenizer
    reserved = reserved_token_strings(tok)
    assert set(HIGGS_SPECIAL_TOKENS) <= set(reserved)
    assert set(tok.all_special_tokens) <= set(reserved)
    assert {t.content for t in tok.added_tokens_decoder.values() if t.special} <= set(reserved)


def test_every_reserved_token_is_rejected_naming_the_field(ctx):
    tok = ctx.text_tokenizer
    for token in reserved_token_strings(tok):
        with pytest.raises(ReservedTokenError) as err:
            check_transcript(f"Hello {token} world", tokenizer=tok, sample_id="s9", field="ref_text", path="m.jsonl")
        assert isinstance(err.value, SampleError) and token in str(err.value)
        assert err.value.field == "ref_text" and "s9" in str(err.value) and "m.jsonl" in str(err.value)


def test_tokens_added_as_ordinary_vocabulary_are_not_reserved(ctx):
    import copy

    tok = copy.deepcopy(ctx.text_tokenizer)
    tok.add_tokens(["<SE>"])                       # a non-special added token: ordinary text
    tok.add_special_tokens({"additional_special_tokens": ["<|my_reserved|>"]})
    reserved = reserved_token_strings(tok)
    assert "<|my_reserved|>" in reserved and "<SE>" not in reserved
    check_transcript("<SE>[Laughter]</SE> fine", tokenizer=tok, sample_id="s", field="text", path=None)
    with pytest.raises(ReservedTokenError, match="my_reserved"):
        check_transcript("a <|my_reserved|> b", tokenizer=tok, sample_id="s", field="text", path=None)


def test_a_token_made_by_normalisation_is_caught(ctx):
    raw = "say 《|AUDIO_OUT|》 now"                  # CJK brackets: the reference turns them into < >
    normalised = normalize_transcript(raw)
    assert "<|AUDIO_OUT|>" in normalised
    with pytest.raises(ReservedTokenError, match="normalised text"):
        check_transcript(raw, tokenizer=ctx.text_tokenizer, normalised=normalised, sample_id="s", field="text",
                         path=None)


@pytest.mark.parametrize("raw", ["()", "( )", "。", "...", "-", "\u200b", "（）"])
def test_nothing_to_say_after_normalisation(ctx, raw):
    normalised = normalize_transcript(raw)
    with pytest.raises(TranscriptEmptyError) as err:
        check_transcript(raw, tokenizer=ctx.text_tokenizer, normalised=normalised, sample_id="s3",
                         field="transcript_file", path="s3.txt")
    assert repr(normalised) in str(err.value) and "transcript_file" in str(err.value) and "s3.txt" in str(err.value)


@pytest.mark.parametrize("raw", ["(laughs)", "[laugh]", "25°C", "42", "好", "A."])
def test_short_real_transcripts_are_kept(ctx, raw):
    check_transcript(raw, tokenizer=ctx.text_tokenizer, normalised=normalize_transcript(raw), sample_id="s",
                     field="text", path=None)
