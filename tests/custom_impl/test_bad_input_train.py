"""Issue 15, custom training CLI: bad input exits 2 with one line naming sample, field and file;
training stops when gradients miss trainables or a codebook's loss is silently 0.0."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from custom_impl import stages as S
from custom_impl import train as T
from higgs_common.guards import MissingGradientError, ZeroAudioLossError
from tests.reliability_cases import issue15_manifest

REPO = Path(__file__).resolve().parents[2]
TARGET_AUDIO = "messages[2].content[0].audio_url"
REF_AUDIO = "messages[1].content[1].audio_url"
SMALL = ("--max-steps", "1", "--cpu", "--batch-size", "1", "--grad-accum", "1")

# case -> (error class, field named, the file named: "wav" | "ref_wav" | "chatml")
CASES = {
    "short": ("AudioTooShortError", TARGET_AUDIO, "wav"),
    "short_ref": ("AudioTooShortError", REF_AUDIO, "ref_wav"),
    "hiss": ("AudioNoSpeechError", TARGET_AUDIO, "wav"),
    "token": ("ReservedTokenError", "user.content[text:target]", "chatml"),
    "token_ref": ("ReservedTokenError", "user.content[text:ref]", "chatml"),
    "empty_norm": ("TranscriptEmptyError", "user.content[text:target]", "chatml"),
}


def _bad_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("custom_impl.train: bad input:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_before_training(records, tmp_path, capsys, case):
    error, field, which = CASES[case]
    data, bad = issue15_manifest(records, tmp_path, case)
    out = tmp_path / "run"
    assert T.main(["--data", str(data), "--output-dir", str(out), *SMALL]) == 2
    line = _bad_line(capsys.readouterr().err)
    file = {"wav": bad.audio, "ref_wav": bad.ref_audio, "chatml": out / S.NATIVE_FILE}[which]
    assert error in line and f"sample='{bad.id}'" in line and f"field='{field}'" in line and f"file='{file}'" in line
    assert not (out / "metrics.jsonl").exists()


@pytest.mark.parametrize("case", ["short", "token", "hiss"])
def test_skip_bad_samples_trains_on_the_rest(records, tmp_path, case):
    data, bad = issue15_manifest(records, tmp_path, case)
    out = tmp_path / "run"
    assert T.main(["--data", str(data), "--output-dir", str(out), "--skip-bad-samples", *SMALL]) == 0
    skipped = json.loads((out / "skipped_samples.json").read_text())
    assert [s["sample_id"] for s in skipped] == [bad.id] and skipped[0]["error"] == CASES[case][0]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_allow_no_speech_only_warns(records, tmp_path, capsys):
    data, bad = issue15_manifest(records, tmp_path, "hiss")
    assert T.main(["--data", str(data), "--output-dir", str(tmp_path / "a"), "--allow-no-speech", *SMALL]) == 0
    assert T.main(["--data", str(data), "--output-dir", str(tmp_path / "b"), "--speech-floor-dbfs", "-90",
                   *SMALL]) == 0
    assert T.main(["--data", str(data), "--output-dir", str(tmp_path / "c"), "--speech-floor-dbfs", "-70",
                   *SMALL]) == 2
    assert "-70.0 dBFS" in _bad_line(capsys.readouterr().err)


def test_data_folder(records, tmp_path, capsys):
    from higgs_common.manifest import write_manifest
    from tests.reliability_cases import copy_records

    folder = tmp_path / "data"
    write_manifest(copy_records(records, folder, n=2), folder / "manifest.jsonl")
    assert T.main(["--data", str(folder), "--output-dir", str(tmp_path / "run"), *SMALL]) == 0
    (tmp_path / "empty").mkdir()
    assert T.main(["--data", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "r2"), *SMALL]) == 2
    line = _bad_line(capsys.readouterr().err)
    assert "holds no manifest.jsonl" in line and str(tmp_path / "empty") in line


def test_cli_subprocess_prints_one_line_and_no_traceback(records, tmp_path):
    data, bad = issue15_manifest(records, tmp_path, "short")
    proc = subprocess.run([sys.executable, "-m", "custom_impl.train", "--data", str(data), "--output-dir",
                           str(tmp_path / "run"), *SMALL], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Kernel size" not in proc.stderr
    line = _bad_line(proc.stderr)
    assert f"sample='{bad.id}'" in line and f"field='{TARGET_AUDIO}'" in line and str(bad.audio) in line


# ----------------------------------------------------------------------------- training guards

def checkpoint_first_decoder_layer(model: torch.nn.Module) -> torch.nn.Module:
    """Run decoder layer 0 under re-entrant activation checkpointing in training mode (the bug report)."""
    layers = next(m for n, m in model.named_modules() if n.endswith("layers") and isinstance(m, torch.nn.ModuleList))
    layer, inner = layers[0], layers[0].forward

    def forward(hidden_states, *args, **kwargs):
        if not layer.training:
            return inner(hidden_states, *args, **kwargs)
        return torch.utils.checkpoint.checkpoint(functools.partial(inner, **kwargs), hidden_states, *args,
                                                 use_reentrant=True)
    layer.forward = forward
    return model


def _run(tmp_path, *extra):
    return T.run(T.parse_args(["--max-steps", "2", "--output-dir", str(tmp_path / "run"), "--cpu", *extra]))


def test_reentrant_checkpoint_without_grad_stops_training(tmp_path, monkeypatch):
    build = S.build_model
    monkeypatch.setattr(S, "build_model", lambda ctx, train: checkpoint_first_decoder_layer(build(ctx, train)))
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad"):
        with pytest.raises(MissingGradientError) as err:
            _run(tmp_path)
    msg = str(err.value)
    assert "step 1" in msg and "received no gradient (grad is None)" in msg
    assert "layers.0.self_attn.q_proj.lora_B" in msg and "layers.1." not in msg
    # What the guard prevents: with it switched off the run "succeeds" with every layer-0 adapter B still 0.
    out = _run(tmp_path / "allowed", "--allow-frozen-trainables")
    weights = torch.load(out / "checkpoint-2" / "trainable.pt")
    layer0_b = [w for n, w in weights.items() if ".layers.0." in n and "lora_B" in n]
    layer1_b = [w for n, w in weights.items() if ".layers.1." in n and "lora_B" in n]
    assert layer0_b and all(bool((w == 0).all()) for w in layer0_b)
    assert any(bool(w.ne(0).any()) for w in layer1_b)


def test_never_supervised_codebook_stops_training(tmp_path, monkeypatch):
    collate = S.collate

    def drop_codebook_2(items, ctx):
        batch = collate(items, ctx)
        batch.label_audio_ids[2] = -100            # codebook 2 is never a target
        return batch
    monkeypatch.setattr(S, "collate", drop_codebook_2)
    with pytest.raises(ZeroAudioLossError, match=r"codebook 2: no supervised frame \(every label -100\), loss 0") as err:
        _run(tmp_path)
    assert "step 1" in str(err.value) and "cb2: 0" in str(err.value)


def test_zero_codebook_loss_with_supervised_frames_stops_training(tmp_path, monkeypatch):
    accumulate = T.accumulate

    def zero_cb1(model, batches, ctx, **kw):
        lbs = accumulate(model, batches, ctx, **kw)
        for lb in lbs:
            lb.per_codebook[1] = 0.0
        return lbs
    monkeypatch.setattr(T, "accumulate", zero_cb1)
    with pytest.raises(ZeroAudioLossError, match=r"codebook 1: loss exactly 0.0 over \d+ supervised frames"):
        _run(tmp_path)


def test_the_silent_zero_fault_still_reaches_the_loss_function(ctx, records, tmp_path):
    """The guards live in the loop: the fault's loss function itself still returns 0.0 for the harness."""
    import dataclasses

    fctx = dataclasses.replace(ctx, faults=frozenset({"silent-zero-audio-loss"}))
    items = S.dataset(S.write_native(records[:2], tmp_path / "n"), fctx)
    batch = S.collate(items, fctx)
    model = S.build_model(fctx, S.DEFAULT_TRAIN)
    lb = S.loss(S.forward(model, batch, fctx), batch, fctx)
    assert float(lb.audio) == 0.0 and lb.has_target_audio and lb.per_codebook.numel() == 0
