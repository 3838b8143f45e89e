"""Issue 9, neutral pieces: manifest errors, codec/checkpoint mismatch, guards, crash hook, skipping."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from higgs_common.context import CodecMismatchError, build_context, check_codec_matches, codec_codebooks
from higgs_common.guards import (NonFiniteGradientError, NonFiniteLossError, ZeroAudioLossError,
                                 check_audio_loss_nonzero, check_grads_finite, check_losses_finite)
from higgs_common.manifest import ManifestError, load_manifest
from higgs_common.skipping import SkipLog, build_or_skip
from higgs_common.stages import HiggsDiffError, SampleError


def _good_line(**over) -> str:
    d = dict(id="a", speaker="s", scene="a quiet room", text="hi.", audio="a.wav", ref_text="yo.", ref_audio="b.wav")
    d.update(over)
    return json.dumps(d)


def test_manifest_error_is_a_sample_error_naming_line_sample_field(tmp_path):
    m = tmp_path / "m.jsonl"
    bad = json.loads(_good_line(id="b"))
    bad.pop("ref_text")
    m.write_text(_good_line() + "\n" + json.dumps(bad) + "\n" + "{oops\n")
    with pytest.raises(SampleError) as err:
        load_manifest(m)
    assert isinstance(err.value, ManifestError)
    assert err.value.sample_id == "b" and err.value.field == "ref_text" and err.value.path == str(m)
    assert "m.jsonl:2" in str(err.value)


def test_manifest_skip_bad_records_every_skipped_line(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text(_good_line() + "\n{oops\n" + _good_line(id="c", text=3) + "\n" + _good_line(id="d") + "\n")
    skipped: list = []
    recs = load_manifest(m, skip_bad=True, skipped=skipped)
    assert [r.id for r in recs] == ["a", "d"]
    assert [(e.sample_id, e.field) for e in skipped] == [("<line 2>", None), ("c", "text")]


def test_missing_manifest_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "nope.jsonl")


def test_codec_codebooks_of_default_assets(assets, ctx):
    assert codec_codebooks(assets.audio_tokenizer) == (ctx.model_config.audio_num_codebooks,
                                                        ctx.model_config.audio_codebook_size)


@pytest.mark.parametrize("field,value", [("audio_num_codebooks", 4), ("audio_codebook_size", 32)])
def test_checkpoint_codec_mismatch(assets, tmp_path, field, value):
    model = tmp_path / "model"
    shutil.copytree(assets.model, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg[field] = value
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CodecMismatchError) as err:
        build_context(model, assets.audio_tokenizer)
    msg = str(err.value)
    assert field in msg and str(value) in msg and str(model) in msg and str(assets.audio_tokenizer) in msg
    assert isinstance(err.value, HiggsDiffError)


def test_check_codec_matches_unreadable_config(tmp_path):
    with pytest.raises(CodecMismatchError, match="cannot read n_q/bins"):
        check_codec_matches(SimpleNamespace(audio_num_codebooks=4, audio_codebook_size=32), tmp_path, tmp_path)


def test_guards():
    check_losses_finite({"total": 1.0, "audio": 0.5}, step=3, sample_ids=["x"])
    with pytest.raises(NonFiniteLossError, match=r"step 3 on samples \['x', 'y'\].*audio: nan"):
        check_losses_finite({"total": 1.0, "audio": float("nan")}, step=3, sample_ids=["x", "y"])
    check_audio_loss_nonzero(0.0, has_target_audio=False, step=1, sample_ids=["x"], losses={})
    with pytest.raises(ZeroAudioLossError, match=r"exactly 0.0 at step 2 on samples \['x'\]"):
        check_audio_loss_nonzero(0.0, has_target_audio=True, step=2, sample_ids=["x"], losses={"audio": 0.0})
    lin = torch.nn.Linear(2, 2)
    lin(torch.ones(1, 2)).sum().backward()
    check_grads_finite(lin.named_parameters(), step=1, sample_ids=["x"], losses={})
    lin.bias.grad[0] = float("inf")
    with pytest.raises(NonFiniteGradientError, match=r"step 5 .*\['x'\] in 1 parameter\(s\): bias"):
        check_grads_finite(lin.named_parameters(), step=5, sample_ids=["x"], losses={"total": 1.0})


def test_build_or_skip_only_catches_sample_errors():
    def build(k):
        if k == 1:
            raise SampleError("bad", sample_id="s1", field="audio", path="f.wav")
        if k == 2:
            raise RuntimeError("a bug")
        return k
    log = SkipLog(where="t")
    assert build_or_skip([0, 1], build, skip=True, skip_log=log) == [0]
    assert log.to_json()[0] == {"sample_id": "s1", "field": "audio", "path": "f.wav", "error": "SampleError",
                                "reason": "bad [sample='s1' field='audio' file='f.wav']"}
    with pytest.raises(SampleError):
        build_or_skip([1], build, skip=False, skip_log=log)
    with pytest.raises(RuntimeError):
        build_or_skip([2], build, skip=True, skip_log=log)


def test_crashpoint_sigkills_only_at_the_named_point():
    code = ("from higgs_common.crashpoints import maybe_kill\n"
            "maybe_kill('in_save', 3); maybe_kill('after_step', 4); print('alive', flush=True)\n"
            "maybe_kill('in_save', 4); print('not reached')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"HIGGS_DIFF_KILL_AT": "in_save:4,after_step:9", "PATH": ""})
    assert proc.returncode == -signal.SIGKILL and proc.stdout == "alive\n"
