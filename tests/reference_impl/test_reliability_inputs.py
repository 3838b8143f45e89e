"""Issue 9, reference pipeline: every kind of bad input is a typed error naming file, sample, field."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from higgs_common import audio_io
from higgs_common.assets.text_tokenizer import MissingSpecialTokenError
from higgs_common.converters import write_reference_folder
from higgs_common.stages import SampleError
from reference_impl.dataset import DEFAULT_REF_TRANSCRIPT, ReferenceDataset
from tests.reliability_cases import (WAV_BREAKS, WAV_ERRORS, assert_names, break_wav, copy_records,
                                     make_16k_stereo, tokenizer_without_specials)

ZS = "zero_shot_voice_cloning"


@pytest.fixture()
def folder(records, tmp_path) -> Path:
    return write_reference_folder(copy_records(records, tmp_path), tmp_path / "ref_data")


def _meta(folder: Path) -> dict:
    return json.loads((folder / "metadata.json").read_text())


def _edit(folder: Path, fn) -> None:
    meta = _meta(folder)
    fn(meta["samples"])
    (folder / "metadata.json").write_text(json.dumps(meta))


def _ds(folder, ctx, **kw):
    return ReferenceDataset(folder, ctx.text_tokenizer, ctx.code_cache, task_type=ZS, **kw)


@pytest.mark.parametrize("which", ["audio_file", "ref_audio_file"])
@pytest.mark.parametrize("how", WAV_BREAKS)
def test_bad_wav(folder, ctx, how, which):
    s0 = _meta(folder)["samples"][0]
    wav = folder / s0[which]
    break_wav(wav, how)
    with pytest.raises(SampleError) as err:
        _ds(folder, ctx).build(0)
    assert type(err.value).__name__ == WAV_ERRORS[how] or isinstance(err.value, getattr(audio_io, WAV_ERRORS[how],
                                                                                         SampleError))
    assert_names(err.value, sample_id=s0["id"], field=which, file=wav.name)
    assert err.value.sample_id == s0["id"] and err.value.field == which


def test_too_long(folder, ctx):
    s0 = _meta(folder)["samples"][0]
    with pytest.raises(audio_io.AudioTooLongError) as err:
        _ds(folder, ctx, max_audio_seconds=0.5).build(0)
    assert_names(err.value, sample_id=s0["id"], field="ref_audio_file")   # the reference clip comes first
    assert "max_seconds=0.5" in str(err.value)
    _ds(folder, ctx).build(0)                                             # the default (30 s) accepts it


def test_16k_stereo_is_resampled_downmixed_and_logged(folder, ctx, caplog):
    s0 = _meta(folder)["samples"][0]
    make_16k_stereo(folder / s0["audio_file"])
    with caplog.at_level(logging.WARNING, logger="higgs_common.audio"):
        built = _ds(folder, ctx).build(0)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("resampling 16000 Hz -> 24000 Hz" in m and s0["id"] in m and "audio_file" in m for m in msgs), msgs
    assert any("downmixing 2 channels" in m and s0["id"] in m for m in msgs), msgs
    assert built.sample.audio_ids_concat.shape[1] > 0


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_transcript(folder, ctx, text):
    s0 = _meta(folder)["samples"][0]
    (folder / s0["transcript_file"]).write_text(text)
    with pytest.raises(SampleError, match="empty or whitespace-only") as err:
        _ds(folder, ctx).build(0)
    assert_names(err.value, sample_id=s0["id"], field="transcript_file", file=s0["transcript_file"])


@pytest.mark.parametrize("edit", ["missing", "empty", "blank"])
def test_missing_ref_transcript_raises_unless_quirk_allowed(folder, ctx, edit):
    def change(samples):
        if edit == "missing":
            samples[0].pop("ref_transcript")
        else:
            samples[0]["ref_transcript"] = "" if edit == "empty" else "  "
    _edit(folder, change)
    sid = _meta(folder)["samples"][0]["id"]
    with pytest.raises(SampleError, match="allow-default-ref-transcript") as err:
        _ds(folder, ctx).build(0)
    assert_names(err.value, sample_id=sid, field="ref_transcript", file="metadata.json")
    quirk = _ds(folder, ctx, allow_default_ref_transcript=True).build(0)     # the documented quirk, opt-in
    expected = DEFAULT_REF_TRANSCRIPT if edit == "missing" else ("" if edit == "empty" else "  ")
    assert quirk.messages[1].content == expected


def test_missing_ref_clip_raises_unless_quirk_allowed(folder, ctx):
    _edit(folder, lambda s: s[0].pop("ref_audio_file"))
    sid = _meta(folder)["samples"][0]["id"]
    with pytest.raises(SampleError, match="no reference clip") as err:
        _ds(folder, ctx).build(0)
    assert_names(err.value, sample_id=sid, field="ref_audio_file", file="metadata.json")
    assert _ds(folder, ctx, allow_missing_ref_audio=True).build(0).audio_fields == ["audio_file"]


def test_metadata_not_json(folder, ctx):
    (folder / "metadata.json").write_text('{"samples": [ {"id": "x", ')
    with pytest.raises(SampleError, match="not valid JSON") as err:
        _ds(folder, ctx)
    assert "metadata.json" in str(err.value)


@pytest.mark.parametrize("key", ["audio_file", "transcript_file"])
def test_metadata_lacks_field(folder, ctx, key):
    _edit(folder, lambda s: s[1].pop(key))
    sid = _meta(folder)["samples"][1]["id"]
    with pytest.raises(SampleError) as err:
        _ds(folder, ctx)
    assert_names(err.value, sample_id=sid, field=key, file="metadata.json")


def test_tokenizer_without_special_tokens(folder, ctx):
    with pytest.raises(MissingSpecialTokenError, match="<\\|"):
        ReferenceDataset(folder, tokenizer_without_specials(), ctx.code_cache, task_type=ZS)


def test_skip_bad_samples_reports_each_and_keeps_the_rest(folder, ctx, caplog):
    s = _meta(folder)["samples"]
    break_wav(folder / s[0]["audio_file"], "nan")
    with pytest.raises(SampleError):                       # default: no skipping
        _ds(folder, ctx).build(0)
    with caplog.at_level(logging.WARNING):
        ds = _ds(folder, ctx, skip_bad_samples=True)
    assert [e.sample_id for e in ds.entries] == [s[1]["id"]]
    assert ds.skip_log.sample_ids == [s[0]["id"]] and len(ds.skip_log) == 1
    assert ds.skip_log.skipped[0].field == "audio_file" and ds.skip_log.skipped[0].error == "AudioNonFiniteError"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "skipped 1 bad sample(s)" in text and s[0]["id"] in text and "NaN" in text


def test_skip_with_nothing_left_is_an_error(folder, ctx):
    for s in _meta(folder)["samples"]:
        break_wav(folder / s["audio_file"], "silent")
    with pytest.raises(SampleError, match="all 2 samples are bad"):
        _ds(folder, ctx, skip_bad_samples=True)
