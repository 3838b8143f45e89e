"""reference_impl.dataset: message layouts of the four tasks, bookkeeping, quirks, errors."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from higgs_common.stages import SampleError
from reference_impl import dataset as rd
from reference_impl.dataset import DEFAULT_REF_TRANSCRIPT, ReferenceDataset, describe_layout

ZERO_SHOT = ["system:text", "user:text", "assistant:audio", "user:text", "assistant:audio"]
SINGLE = ["system:text", "user:text", "assistant:audio"]


def _copy(ref_folder, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(ref_folder, dst)
    return dst


def _edit_meta(folder, fn):
    meta_path = folder / "metadata.json"
    meta = json.loads(meta_path.read_text())
    fn(meta["samples"])
    meta_path.write_text(json.dumps(meta))


def _texts(messages):
    return [m.content if isinstance(m.content, str) else None for m in messages]


def test_zero_shot_layout(ref_folder, ctx, records):
    ds = ReferenceDataset(ref_folder, ctx.text_tokenizer, ctx.code_cache, task_type="zero_shot_voice_cloning")
    b = ds.build(0)
    assert describe_layout(b.messages) == ZERO_SHOT
    assert b.messages[0].content == ("Generate audio following instruction.\n\n<|scene_desc_start|>\n"
                                     f"Audio is recorded from {records[0].scene}.\n<|scene_desc_end|>")
    assert b.messages[2].content.audio_url.endswith(f"ref/{records[0].ref_audio.name}")
    assert b.messages[4].content.audio_url.endswith(f"{records[0].id}.wav")
    assert b.audio_fields == ["ref_audio_file", "audio_file"]
    # Both assistant audios are labels (no start_index): the reference turn is trained.
    assert b.label_audio_indices == (0, 1)
    ref_codes = ctx.code_cache.codes(records[0].ref_audio, sample_id="t", field="ref_audio")
    tgt_codes = ctx.code_cache.codes(records[0].audio, sample_id="t", field="audio")
    torch.testing.assert_close(b.sample.audio_ids_concat, torch.cat([ref_codes, tgt_codes], dim=1))
    assert b.sample.audio_ids_start.tolist() == [0, ref_codes.shape[1]]
    torch.testing.assert_close(b.label_audio_ids, b.sample.audio_ids_concat)
    # Two <|AUDIO_OUT|> placeholders, no <|AUDIO|>.
    ids = b.sample.input_ids
    assert int((ids == ctx.model_config.audio_out_token_idx).sum()) == 2
    assert int((ids == ctx.model_config.audio_in_token_idx).sum()) == 0


def test_quirk_ref_transcript_not_normalised(ref_folder, ctx, records):
    rec = next(i for i, r in enumerate(records[:4]) if "(" in r.ref_text)
    ds = ReferenceDataset(ref_folder, ctx.text_tokenizer, ctx.code_cache, task_type="zero_shot_voice_cloning")
    b = ds.build(rec)
    assert b.messages[1].content == records[rec].ref_text           # raw, parentheses kept
    assert "(" not in b.messages[3].content                          # target normalised


def test_single_speaker_is_cli_default(ref_folder, ctx, records):
    ds = ReferenceDataset(ref_folder, ctx.text_tokenizer, ctx.code_cache)
    assert ds.task_type == "single_speaker_smart_voice"
    b = ds.build(0)
    assert describe_layout(b.messages) == SINGLE
    assert b.label_audio_indices == (0,)
    assert b.sample.audio_ids_start.tolist() == [0]


def test_multi_speaker_smart_voice_layouts(ref_folder, ctx, tmp_path):
    folder = _copy(ref_folder, tmp_path)
    (folder / "us_male_000.txt").write_text("[SPEAKER0] Hello there. [SPEAKER1] Hi!")
    ds = ReferenceDataset(folder, ctx.text_tokenizer, ctx.code_cache, task_type="multi_speaker_smart_voice")
    b = ds.build(0)
    assert describe_layout(b.messages) == SINGLE
    sys_text = b.messages[0].content
    assert sys_text.startswith(rd.MULTISPEAKER_SYSTEM_MESSAGE)
    assert "SPEAKER0: feminine\nSPEAKER1: masculine\n<|scene_desc_end|>" in sys_text
    # One speaker tag only: falls back to the single-speaker system message.
    b1 = ds.build(1)
    assert b1.messages[0].content.startswith(rd.SYSTEM_INSTRUCTION)


def test_multi_speaker_voice_cloning_layout(ref_folder, ctx, tmp_path, records):
    folder = _copy(ref_folder, tmp_path)
    _edit_meta(folder, lambda s: s[0].update(ref_speakers=[
        {"speaker_tag": "[SPEAKER0]", "ref_audio_file": s[1]["audio_file"], "ref_transcript": "one"},
        {"ref_audio_file": s[2]["audio_file"]}]))
    ds = ReferenceDataset(folder, ctx.text_tokenizer, ctx.code_cache, task_type="multi_speaker_voice_cloning")
    b = ds.build(0)
    assert describe_layout(b.messages) == ["system:text", "user:text", "assistant:audio", "user:text",
                                           "assistant:audio", "user:text", "assistant:audio"]
    assert _texts(b.messages)[1] == "[SPEAKER0] one"
    assert _texts(b.messages)[3] == f"[SPEAKER1] {rd.DEFAULT_MULTI_REF_TRANSCRIPT}"
    assert b.label_audio_indices == (0, 1, 2)
    # Without ref_speakers: the multi-speaker default system message, no reference turns.
    b1 = ds.build(1)
    assert describe_layout(b1.messages) == SINGLE
    assert b1.messages[0].content == rd.MULTISPEAKER_SYSTEM_MESSAGE


def test_quirk_missing_ref_transcript_default(ref_folder, ctx, tmp_path, caplog):
    folder = _copy(ref_folder, tmp_path)
    _edit_meta(folder, lambda s: (s[0].pop("ref_transcript"), s[1].update(ref_transcript="")))
    ds = ReferenceDataset(folder, ctx.text_tokenizer, ctx.code_cache, task_type="zero_shot_voice_cloning",
                          allow_default_ref_transcript=True)   # opt-in since issue 9
    with caplog.at_level(logging.WARNING, logger="reference_impl.dataset"):
        b = ds.build(0)
    assert b.messages[1].content == DEFAULT_REF_TRANSCRIPT == "This is a voice sample for cloning."
    assert any("ref_transcript" in r.getMessage() and "us_male_000" in r.getMessage() for r in caplog.records)
    assert ds.build(1).messages[1].content == ""          # present but empty: kept as is


def test_quirk_zero_shot_without_ref_audio_degrades(ref_folder, ctx, tmp_path, caplog):
    folder = _copy(ref_folder, tmp_path)
    _edit_meta(folder, lambda s: s[0].pop("ref_audio_file"))
    ds = ReferenceDataset(folder, ctx.text_tokenizer, ctx.code_cache, task_type="zero_shot_voice_cloning",
                          allow_missing_ref_audio=True)   # opt-in since issue 9
    with caplog.at_level(logging.WARNING, logger="reference_impl.dataset"):
        b = ds.build(0)
    assert describe_layout(b.messages) == SINGLE
    assert b.messages[0].content == "Generate audio following instruction."     # no scene either
    assert caplog.records


def test_folder_scan_without_metadata(ref_folder, ctx, tmp_path):
    folder = _copy(ref_folder, tmp_path)
    (folder / "metadata.json").unlink()
    ds = ReferenceDataset(folder, ctx.text_tokenizer, ctx.code_cache)
    assert rd.sample_ids(ds) == sorted(p.stem for p in folder.glob("*.wav"))
    b = ds.build(0)
    assert "Audio is recorded from a quiet room." in b.messages[0].content     # default scene


def test_missing_transcript_names_file_sample_field(ref_folder, ctx, tmp_path):
    folder = _copy(ref_folder, tmp_path)
    (folder / "us_male_001.txt").unlink()
    ds = ReferenceDataset(folder, ctx.text_tokenizer, ctx.code_cache)
    with pytest.raises(SampleError) as err:
        ds.build(1)
    msg = str(err.value)
    assert "us_male_001" in msg and "transcript_file" in msg and "us_male_001.txt" in msg


def test_missing_ref_audio_names_field(ref_folder, ctx, tmp_path):
    folder = _copy(ref_folder, tmp_path)
    _edit_meta(folder, lambda s: s[0].update(ref_audio_file="ref/nope.wav"))
    ds = ReferenceDataset(folder, ctx.text_tokenizer, ctx.code_cache, task_type="zero_shot_voice_cloning")
    with pytest.raises(SampleError, match="ref_audio_file") as err:
        ds.build(0)
    assert "nope.wav" in str(err.value) and "us_male_000" in str(err.value)


def test_swallowed_prepare_error_becomes_sample_error(ref_folder, ctx, monkeypatch):
    monkeypatch.setattr(rd, "prepare_chatml_sample", lambda *a, **k: (None, None, None, None))
    ds = ReferenceDataset(ref_folder, ctx.text_tokenizer, ctx.code_cache)
    with pytest.raises(SampleError, match="returned None") as err:
        ds.build(0)
    assert err.value.sample_id == "us_male_000" and err.value.field == "messages"


def test_invalid_task_type(ref_folder, ctx):
    with pytest.raises(ValueError, match="task_type"):
        ReferenceDataset(ref_folder, ctx.text_tokenizer, ctx.code_cache, task_type="tts")
