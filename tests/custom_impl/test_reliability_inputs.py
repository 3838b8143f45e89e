"""Issue 9, custom pipeline: every kind of bad input is a typed error naming file, sample, field."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from custom_impl.dataset import load_dataset
from higgs_common import audio_io
from higgs_common.assets.text_tokenizer import MissingSpecialTokenError
from higgs_common.converters import write_chatml_json
from higgs_common.skipping import SkipLog
from higgs_common.stages import SampleError
from tests.reliability_cases import (WAV_BREAKS, WAV_ERRORS, assert_names, break_wav, copy_records,
                                     make_16k_stereo, tokenizer_without_specials)

TARGET_FIELD = "messages[2].content[0].audio_url"
REF_FIELD = "messages[1].content[1].audio_url"


@pytest.fixture()
def native(records, tmp_path) -> Path:
    return write_chatml_json(copy_records(records, tmp_path), tmp_path / "train.json")


def _data(path: Path) -> list:
    return json.loads(path.read_text())


def _edit(path: Path, fn) -> None:
    data = _data(path)
    fn(data)
    path.write_text(json.dumps(data))


def _opts(ctx, **options):
    return dataclasses.replace(ctx, options={**ctx.options, **options})


@pytest.mark.parametrize("which", ["target", "ref"])
@pytest.mark.parametrize("how", WAV_BREAKS)
def test_bad_wav(native, ctx, how, which):
    e0 = _data(native)[0]
    fld = TARGET_FIELD if which == "target" else REF_FIELD
    wav = Path(e0["messages"][2]["content"][0]["audio_url"] if which == "target"
               else e0["messages"][1]["content"][1]["audio_url"])
    break_wav(wav, how)
    with pytest.raises(SampleError) as err:
        load_dataset(native, ctx)
    assert isinstance(err.value, getattr(audio_io, WAV_ERRORS[how], SampleError))
    sid = e0["misc"]["sample_id"]
    assert err.value.sample_id == sid and err.value.field == fld
    assert_names(err.value, sample_id=sid, field=fld)
    assert wav.name in str(err.value)


def test_too_long(native, ctx):
    sid = _data(native)[0]["misc"]["sample_id"]
    with pytest.raises(audio_io.AudioTooLongError) as err:
        load_dataset(native, _opts(ctx, max_audio_seconds=0.5))
    assert_names(err.value, sample_id=sid, field=REF_FIELD)
    assert "max_seconds=0.5" in str(err.value)
    assert len(load_dataset(native, ctx)) == 2                         # default 30 s accepts them


def test_16k_stereo_is_resampled_downmixed_and_logged(native, ctx, caplog):
    e0 = _data(native)[0]
    make_16k_stereo(Path(e0["messages"][2]["content"][0]["audio_url"]))
    with caplog.at_level(logging.WARNING, logger="higgs_common.audio"):
        items = load_dataset(native, ctx)
    msgs = [r.getMessage() for r in caplog.records]
    sid = e0["misc"]["sample_id"]
    assert any("resampling 16000 Hz -> 24000 Hz" in m and sid in m and TARGET_FIELD in m for m in msgs), msgs
    assert any("downmixing 2 channels" in m and sid in m for m in msgs), msgs
    assert items[0].sample.audio_ids_concat.shape[1] > 0


@pytest.mark.parametrize("text", ["", "  \n "])
@pytest.mark.parametrize("which,fld", [(2, "user.content[text:target]"), (0, "user.content[text:ref]")])
def test_empty_transcript(native, ctx, text, which, fld):
    _edit(native, lambda d: d[0]["messages"][1]["content"][which].update(text=text))
    with pytest.raises(SampleError, match="transcript") as err:
        load_dataset(native, ctx)
    assert_names(err.value, sample_id=_data(native)[0]["misc"]["sample_id"], field=fld, file=native.name)


def test_missing_ref_clip(native, ctx):
    _edit(native, lambda d: d[0]["messages"][1]["content"].pop(1))
    with pytest.raises(SampleError, match="no reference audio") as err:
        load_dataset(native, ctx)
    assert_names(err.value, sample_id=_data(native)[0]["misc"]["sample_id"], field="user.content[audio]",
                 file=native.name)


def test_json_does_not_parse(native, ctx):
    native.write_text('[{"messages": [')
    with pytest.raises(SampleError, match="not valid JSON") as err:
        load_dataset(native, ctx)
    assert native.name in str(err.value)


def test_entry_lacks_messages(native, ctx):
    _edit(native, lambda d: d[1].pop("messages"))
    with pytest.raises(SampleError) as err:
        load_dataset(native, ctx)
    assert_names(err.value, sample_id="#1", field="messages", file=native.name)


def test_tokenizer_without_special_tokens(native, ctx):
    with pytest.raises(MissingSpecialTokenError, match="<\\|"):
        load_dataset(native, dataclasses.replace(ctx, text_tokenizer=tokenizer_without_specials()))


def test_skip_bad_samples_reports_each_and_keeps_the_rest(native, ctx, caplog):
    data = _data(native)
    break_wav(Path(data[1]["messages"][2]["content"][0]["audio_url"]), "silent")
    with pytest.raises(audio_io.AudioSilentError):               # default: no skipping
        load_dataset(native, ctx)
    log = SkipLog(where="test")
    with caplog.at_level(logging.WARNING, logger="higgs_common.skipping"):
        items = load_dataset(native, ctx, skip_bad_samples=True, skip_log=log)
    assert [i.sample_id for i in items] == [data[0]["misc"]["sample_id"]]
    assert log.sample_ids == [data[1]["misc"]["sample_id"]] and log.skipped[0].field == TARGET_FIELD
    assert "skipped 1 bad sample(s)" in log.summary()
    assert any("AudioSilentError" in r.getMessage() for r in caplog.records)


def test_skip_with_nothing_left_is_an_error(native, ctx):
    for e in _data(native):
        break_wav(Path(e["messages"][2]["content"][0]["audio_url"]), "garbage")
    with pytest.raises(SampleError, match="no usable samples"):
        load_dataset(native, ctx, skip_bad_samples=True, skip_log=SkipLog())
