"""Issue 9, reference training (HF Trainer): SIGKILL + --resume is bit-exact, saves are crash-safe,
guards stop the run on a non-finite loss/gradient or a silent zero audio loss."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from higgs_common.guards import NonFiniteGradientError, NonFiniteLossError, ZeroAudioLossError
from reference_impl import trainer as tr
from reference_impl.model import HiggsAudioModelWithLoss

REPO = Path(__file__).resolve().parents[2]
# 28 samples / batch 4 = 7 steps per epoch: the resume at step 8 is mid-way through epoch 2.
ARGS = ("--max-steps", "10", "--save-steps", "2", "--report-to", "none", "--logging-steps", "1", "--seed", "7")


def _train(out: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("HIGGS_DIFF_KILL_AT", None)
    if kill_at:
        env["HIGGS_DIFF_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "reference_impl.train", *ARGS, "--output-dir", str(out), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _steps(out: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["llm_loss"], r["audio_loss"], r["learning_rate"])
            for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path):
    ref = tmp_path / "uninterrupted"
    p = _train(ref)
    assert p.returncode == 0, p.stderr[-3000:]
    run = tmp_path / "killed"
    # 1) killed inside the save of checkpoint-4: weights written, optimizer/RNG/state not, no marker
    p = _train(run, kill_at="in_save:4")
    assert p.returncode == -signal.SIGKILL
    assert (run / "checkpoint-4" / "model.safetensors").is_file()
    assert not tr.is_complete_checkpoint(run / "checkpoint-4")
    assert tr.last_complete_checkpoint(run) == run / "checkpoint-2"
    # 2) --resume removes the half-written folder, continues from 2, and is killed after step 9
    p = _train(run, "--resume", kill_at="after_step:9")
    assert p.returncode == -signal.SIGKILL
    assert "removing incomplete checkpoint" in p.stderr and "resuming from" in p.stderr
    assert tr.last_complete_checkpoint(run) == run / "checkpoint-8"
    # 3) --resume from 8 (mid-epoch) to the end
    p = _train(run, "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["resumed_from"] == str(run / "checkpoint-8")
    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _steps(run) == _steps(ref) and [s[0] for s in _steps(run)] == list(range(1, 11))


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    from higgs_common.stages import HiggsDiffError
    from reference_impl.train import RESUME_LATEST, resolve_resume

    (tmp_path / "checkpoint-3").mkdir()          # incomplete: no marker, no trainer_state.json
    with pytest.raises(HiggsDiffError, match="no complete checkpoint"):
        resolve_resume(RESUME_LATEST, tmp_path)


def test_epoch_seeded_sampler_is_a_function_of_seed_and_epoch():
    s = tr.EpochSeededRandomSampler(10, seed=1)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1
    fresh = tr.EpochSeededRandomSampler(10, seed=1)
    fresh.set_epoch(1)
    assert list(fresh) == e1


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def _patch_outputs(monkeypatch, change):
    real = HiggsAudioModelWithLoss.forward

    def forward(self, *a, **k):
        out = real(self, *a, **k)
        if self.training:
            change(out)
        return out
    monkeypatch.setattr(HiggsAudioModelWithLoss, "forward", forward)


@pytest.fixture()
def run_main(tmp_path):
    """reference_impl.train.main in-process (2 steps), restoring the root logging handlers after."""
    from reference_impl.train import main

    root = logging.getLogger()
    before = list(root.handlers)
    yield lambda *extra: main(["--max-steps", "2", "--report-to", "none", "--save-steps", "100",
                               "--output-dir", str(tmp_path / "run"), "--device", "cpu", *extra])
    for h in root.handlers[len(before):]:
        root.removeHandler(h)
        h.close()


def test_zero_audio_loss_stops_training(run_main, monkeypatch):
    def zero(out):
        out.audio_loss = out.audio_loss * 0.0
    _patch_outputs(monkeypatch, zero)
    with pytest.raises(ZeroAudioLossError) as err:
        run_main()
    msg = str(err.value)
    assert "step 1" in msg and "exactly 0.0" in msg and "samples ['" in msg and "text:" in msg


def test_nan_loss_term_stops_training(run_main, monkeypatch):
    def nan(out):
        out.audio_loss = out.audio_loss * float("nan")     # the reference's total drops NaN terms silently
    _patch_outputs(monkeypatch, nan)
    with pytest.raises(NonFiniteLossError, match=r"step 1 on samples \['.*audio: nan"):
        run_main()


def test_nan_gradient_stops_training(run_main, monkeypatch):
    def nan_grad(out):
        out.loss = _NanGrad.apply(out.loss)
    _patch_outputs(monkeypatch, nan_grad)
    with pytest.raises(NonFiniteGradientError) as err:
        run_main()
    msg = str(err.value)
    assert "step 1" in msg and "samples ['" in msg and "parameter(s)" in msg and "audio:" in msg


def test_skip_bad_samples_cli(run_main, records, tmp_path):
    from higgs_common.converters import write_reference_folder
    from tests.reliability_cases import break_wav, copy_records

    folder = write_reference_folder(copy_records(records, tmp_path, n=6), tmp_path / "data")
    meta = json.loads((folder / "metadata.json").read_text())
    break_wav(folder / meta["samples"][2]["audio_file"], "truncated")
    summary = run_main("--data-dir", str(folder), "--skip-bad-samples", "--per-device-train-batch-size", "2")
    assert [s["sample_id"] for s in summary["skipped_samples"]] == [meta["samples"][2]["id"]]
    assert summary["skipped_samples"][0]["error"] == "AudioDecodeError" and summary["steps"] == 2
