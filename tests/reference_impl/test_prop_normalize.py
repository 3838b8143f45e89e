"""Properties of the reference's transcript normalisation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference_impl.normalize import CJK_PUNCTUATION, NO_PERIOD_AFTER, normalize_transcript
from tests.strategies import blank_transcripts, transcripts

pytestmark = pytest.mark.property

ANY_TEXT = st.one_of(transcripts(), blank_transcripts(), st.text(max_size=40))


@given(text=ANY_TEXT)
def test_normalisation_is_idempotent(text):
    once = normalize_transcript(text)
    assert normalize_transcript(once) == once


@given(text=transcripts())
def test_normalised_text_has_no_cjk_punctuation_parentheses_or_raw_tags(text):
    out = normalize_transcript(text)
    assert not any(src in out for src, _ in CJK_PUNCTUATION)
    assert "(" not in out and ")" not in out
    assert "°C" not in out and "°F" not in out
    assert "[laugh]" not in out and "[cough]" not in out
    assert out == out.strip() and "  " not in out
    assert not out or any(out.endswith(ch) for ch in NO_PERIOD_AFTER)


@given(text=blank_transcripts())
def test_blank_text_normalises_to_empty(text):
    assert normalize_transcript(text) == ""
