"""Issue 15, reference training CLI: bad input exits 2 with one line naming sample, field and file,
before training starts; training stops when gradients miss trainables or a codebook's loss is silent."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from higgs_common.guards import MissingGradientError, ZeroAudioLossError
from reference_impl import trainer as tr
from tests.reliability_cases import issue15_manifest

REPO = Path(__file__).resolve().parents[2]
ZS = ("--task-type", "zero_shot_voice_cloning")
SMALL = ("--max-steps", "1", "--report-to", "none", "--save-steps", "100", "--device", "cpu",
         "--per-device-train-batch-size", "1")

# case -> (error class, field named, file named relative to <output-dir>/data: "<id>.wav" etc.)
CASES = {
    "short": ("AudioTooShortError", "audio_file", "{id}.wav"),
    "short_ref": ("AudioTooShortError", "ref_audio_file", "ref/ref_{id}.wav"),
    "hiss": ("AudioNoSpeechError", "audio_file", "{id}.wav"),
    "token": ("ReservedTokenError", "transcript_file", "{id}.txt"),
    "token_ref": ("ReservedTokenError", "ref_transcript", "metadata.json"),
    "empty_norm": ("TranscriptEmptyError", "transcript_file", "{id}.txt"),
}


@pytest.fixture()
def cli(monkeypatch):
    """reference_impl.train.cli in-process; fails the test if the Trainer ever starts; restores logging."""
    from reference_impl.train import cli as run_cli

    started = []
    real_train = tr.HiggsAudioTrainer.train
    monkeypatch.setattr(tr.HiggsAudioTrainer, "train", lambda self, *a, **k: (started.append(1),
                                                                              real_train(self, *a, **k))[1])
    root = logging.getLogger()
    before = list(root.handlers)
    run_cli.started = started
    yield run_cli
    for h in root.handlers[len(before):]:
        root.removeHandler(h)
        h.close()


def _bad_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("reference_impl.train: bad input:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_before_training(records, tmp_path, capsys, cli, case):
    error, field, file = CASES[case]
    data, bad = issue15_manifest(records, tmp_path, case)
    out = tmp_path / "run"
    assert cli(["--data", str(data), "--output-dir", str(out), *ZS, *SMALL]) == 2
    line = _bad_line(capsys.readouterr().err)
    path = out / "data" / file.format(id=bad.id)
    assert error in line and f"sample='{bad.id}'" in line and f"field='{field}'" in line and f"file='{path}'" in line
    assert not cli.started and not (out / "metrics.jsonl").exists()


def test_a_bad_sample_late_in_the_data_is_rejected_before_step_one(records, tmp_path, capsys, cli):
    """The reference would fail only at the step that draws it; here the whole dataset is built first."""
    data, bad = issue15_manifest(records, tmp_path, "short")
    assert cli(["--data", str(data), "--output-dir", str(tmp_path / "run"), *SMALL, "--max-steps", "50"]) == 2
    assert f"sample='{bad.id}'" in _bad_line(capsys.readouterr().err) and not cli.started


@pytest.mark.parametrize("case", ["short", "token", "hiss"])
def test_skip_bad_samples_trains_on_the_rest(records, tmp_path, cli, case):
    data, bad = issue15_manifest(records, tmp_path, case)
    out = tmp_path / "run"
    assert cli(["--data", str(data), "--output-dir", str(out), "--skip-bad-samples", *ZS, *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [s["sample_id"] for s in summary["skipped_samples"]] == [bad.id]
    assert summary["skipped_samples"][0]["error"] == CASES[case][0] and summary["steps"] == 1


def test_speech_floor_options(records, tmp_path, capsys, cli):
    data, _ = issue15_manifest(records, tmp_path, "hiss")
    assert cli(["--data", str(data), "--output-dir", str(tmp_path / "a"), "--allow-no-speech", *SMALL]) == 0
    assert cli(["--data", str(data), "--output-dir", str(tmp_path / "b"), "--speech-floor-dbfs", "-90", *SMALL]) == 0
    assert cli(["--data", str(data), "--output-dir", str(tmp_path / "c"), "--speech-floor-dbfs", "-70", *SMALL]) == 2
    assert "-70.0 dBFS" in _bad_line(capsys.readouterr().err)


def test_data_folder(records, tmp_path, capsys, cli):
    from higgs_common.manifest import write_manifest
    from tests.reliability_cases import copy_records

    folder = tmp_path / "data"
    write_manifest(copy_records(records, folder, n=2), folder / "manifest.jsonl")
    assert cli(["--data", str(folder), "--output-dir", str(tmp_path / "run"), *SMALL]) == 0
    assert cli(["--data-dir", str(folder), "--output-dir", str(tmp_path / "run2"), *SMALL]) == 0   # as people type it
    (tmp_path / "empty").mkdir()
    assert cli(["--data", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "run3"), *SMALL]) == 2
    line = _bad_line(capsys.readouterr().err)
    assert "holds no manifest.jsonl" in line and str(tmp_path / "empty") in line


def test_cli_subprocess_prints_one_line_and_no_traceback(records, tmp_path):
    data, bad = issue15_manifest(records, tmp_path, "short")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "reference_impl.train", "--data", str(data), "--output-dir", str(out),
                           *SMALL], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Kernel size" not in proc.stderr
    line = _bad_line(proc.stderr)
    assert f"sample='{bad.id}'" in line and "field='audio_file'" in line and str(out / "data" / f"{bad.id}.wav") in line


# ----------------------------------------------------------------------------- training guards

@pytest.fixture()
def run_main(tmp_path):
    """reference_impl.train.main in-process (2 steps), restoring the root logging handlers after."""
    from reference_impl.train import main

    root = logging.getLogger()
    before = list(root.handlers)
    yield lambda out, *extra: main(["--max-steps", "2", "--report-to", "none", "--save-steps", "100",
                                    "--output-dir", str(tmp_path / out), "--device", "cpu", *extra])
    for h in root.handlers[len(before):]:
        root.removeHandler(h)
        h.close()


def _checkpoint_first_decoder_layer(model: torch.nn.Module) -> torch.nn.Module:
    layers = next(m for n, m in model.named_modules() if n.endswith("layers") and isinstance(m, torch.nn.ModuleList))
    layer, inner = layers[0], layers[0].forward

    def forward(hidden_states, *args, **kwargs):
        if not layer.training:
            return inner(hidden_states, *args, **kwargs)
        return torch.utils.checkpoint.checkpoint(functools.partial(inner, **kwargs), hidden_states, *args,
                                                 use_reentrant=True)
    layer.forward = forward
    return model


def test_reentrant_checkpoint_without_grad_stops_training(run_main, monkeypatch, tmp_path):
    apply = tr.apply_lora
    monkeypatch.setattr(tr, "apply_lora", lambda model, train: _checkpoint_first_decoder_layer(apply(model, train)))
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad"):
        with pytest.raises(MissingGradientError) as err:
            run_main("run", "--use-lora")
    msg = str(err.value)
    assert "step 1" in msg and "received no gradient (grad is None)" in msg and "samples ['" in msg
    assert "layers.0.self_attn.q_proj.lora_B" in msg and "layers.1." not in msg
    # Switched off, the run "succeeds" and every layer-0 adapter B is still exactly 0.
    run_main("allowed", "--use-lora", "--allow-frozen-trainables")
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "allowed" / "lora_adapters" / "adapter_model.safetensors"))
    layer0_b = [w for n, w in weights.items() if ".layers.0." in n and "lora_B" in n]
    assert layer0_b and all(bool((w == 0).all()) for w in layer0_b)


def test_never_supervised_codebook_stops_training(run_main, monkeypatch):
    from reference_impl.collator import ExtendedHiggsAudioSampleCollator

    call = ExtendedHiggsAudioSampleCollator.__call__

    def drop_codebook_3(self, samples):
        batch = call(self, samples)
        batch.label_audio_ids[3] = -100            # codebook 3 is never a target: the reference's CE gives NaN
        return batch
    monkeypatch.setattr(ExtendedHiggsAudioSampleCollator, "__call__", drop_codebook_3)
    with pytest.raises(ZeroAudioLossError, match=r"codebook 3: no supervised frame") as err:
        run_main("run")
    assert "step 1" in str(err.value) and "samples ['" in str(err.value)


def test_zero_codebook_loss_with_supervised_frames_stops_training(run_main, monkeypatch):
    from reference_impl.model import HiggsAudioModelWithLoss

    real = HiggsAudioModelWithLoss.forward

    def forward(self, *a, **k):
        out = real(self, *a, **k)
        if self.training:
            out.codebook_losses = out.codebook_losses.clone()
            out.codebook_losses[0] = 0.0
        return out
    monkeypatch.setattr(HiggsAudioModelWithLoss, "forward", forward)
    with pytest.raises(ZeroAudioLossError, match=r"codebook 0: loss exactly 0.0 over \d+ supervised frames"):
        run_main("run")
