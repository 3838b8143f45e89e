"""reference_impl.normalize: the reference's transcript rules, one case per rule and quirk."""

from __future__ import annotations

import pytest

from reference_impl.normalize import SINGLE_SCRIPT_CJK_PUNCTUATION, normalize_cjk_punctuation, normalize_transcript


@pytest.mark.parametrize("raw, expected", [
    ("你好，世界。", "你好, 世界."),                                    # CJK comma gets a trailing space
    ("真的吗？！", "真的吗?!"),
    ("“引号”和‘单引号’", "\"引号\"和'单引号'"),                       # ends with "'" -> no period
    ("等等——好…", "等等-好..."),
    ("【注意】《书》", "[注意]<书>"),                                  # ends with '>' -> no period
    ("Leave the parcel (the small one) now", "Leave the parcel the small one now."),
    ("（括号）里", "括号 里."),                                         # full-width -> ASCII -> dropped
    ("It was 25°C today", "It was 25 degrees Celsius today."),
    ("About 80°F", "About 80 degrees Fahrenheit."),
    ("So funny [laugh]", "So funny <SE>[Laughter]</SE>"),
    ("Sorry [cough] where was I", "Sorry <SE>[Cough]</SE> where was I."),
    ("  many   spaces\tin it  ", "many spaces in it."),
    ("line one\n\n\n  line   two", "line one\nline two."),
    ("Already done!", "Already done!"),
    ("", ""),
])
def test_rules(raw, expected):
    assert normalize_transcript(raw) == expected


@pytest.mark.parametrize("ending", list("eESs_/<>;'\","))
def test_quirk_end_character_set_suppresses_period(ending):
    """QUIRK: any single character of '.!?,\";'</SE_e></SE>' ends the text without a period."""
    text = f"word{ending}"
    out = normalize_transcript(text)
    if ending == "s":   # lower-case s is NOT in the set (only 'S'), so it gets a period
        assert out == text + "."
    else:
        assert out == text


def test_quirk_word_ending_in_e_gets_no_period():
    assert normalize_transcript("I like the one I chose") == "I like the one I chose"
    assert normalize_transcript("The dog") == "The dog."


def test_single_script_table_is_the_mangled_one():
    """trainer.py's table maps the literal `: '"', ` to `"` and leaves curly quotes alone."""
    assert normalize_cjk_punctuation("“hi”", SINGLE_SCRIPT_CJK_PUNCTUATION) == "“hi”"
    assert normalize_cjk_punctuation("a: '\"', b", SINGLE_SCRIPT_CJK_PUNCTUATION) == "a\"b"
    assert normalize_cjk_punctuation("a--b", SINGLE_SCRIPT_CJK_PUNCTUATION) == "a-b"
    assert normalize_cjk_punctuation("“hi”") == '"hi"'
