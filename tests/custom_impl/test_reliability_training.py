"""Issue 9, custom training loop: SIGKILL + --resume is bit-exact, saves are atomic, guards stop the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from custom_impl import train as T
from higgs_common.guards import NonFiniteGradientError, ZeroAudioLossError

REPO = Path(__file__).resolve().parents[2]
ARGS = ("--max-steps", "10", "--save-every", "2", "--batch-size", "2", "--grad-accum", "2", "--seed", "5")


def _train(out: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HIGGS_DIFF_KILL_AT", None)
    if kill_at:
        env["HIGGS_DIFF_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "custom_impl.train", *ARGS, "--output-dir", str(out), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _losses(out: Path) -> list[tuple[int, float, float]]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["audio_loss"]) for r in recs]


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path):
    ref = tmp_path / "uninterrupted"
    assert _train(ref).returncode == 0
    run = tmp_path / "killed"
    # 1) killed while checkpoint-4 is half written: only .checkpoint-4.tmp exists, checkpoint-2 is intact
    p = _train(run, kill_at="in_save:4")
    assert p.returncode == -signal.SIGKILL
    assert (run / ".checkpoint-4.tmp").is_dir() and not (run / "checkpoint-4").exists()
    assert T.last_complete_checkpoint(run) == run / "checkpoint-2"
    # 2) resume (from 2), killed again after step 9, between saves
    p = _train(run, "--resume", kill_at="after_step:9")
    assert p.returncode == -signal.SIGKILL and "resuming from" in p.stderr and "checkpoint-2" in p.stderr
    assert T.last_complete_checkpoint(run) == run / "checkpoint-8"
    # 3) resume (from 8) to the end
    p = _train(run, "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "checkpoint-8 (step 8)" in p.stderr
    a = torch.load(ref / "checkpoint-10" / "trainable.pt")
    b = torch.load(run / "checkpoint-10" / "trainable.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(run) == _losses(ref) and [s for s, _, _ in _losses(run)] == list(range(1, 11))
    oa = torch.load(ref / "checkpoint-10" / "optimizer.pt")["state"]
    ob = torch.load(run / "checkpoint-10" / "optimizer.pt")["state"]
    assert all(torch.equal(oa[k]["exp_avg_sq"], ob[k]["exp_avg_sq"]) for k in oa)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    from higgs_common.stages import HiggsDiffError

    with pytest.raises(HiggsDiffError, match="no complete checkpoint"):
        T.resolve_resume(T.RESUME_LATEST, tmp_path)


def _run_inprocess(tmp_path, *extra):
    return T.run(T.parse_args(["--max-steps", "2", "--output-dir", str(tmp_path / "run"), "--cpu", *extra]))


def test_non_finite_gradient_stops_the_run(tmp_path, monkeypatch):
    real = T.accumulate

    def nan_grads(model, batches, ctx, **kw):
        out = real(model, batches, ctx, **kw)
        next(p for _, p in T._model.trainable_named_parameters(model)).grad.view(-1)[0] = float("nan")
        return out
    monkeypatch.setattr(T, "accumulate", nan_grads)
    with pytest.raises(NonFiniteGradientError) as err:
        _run_inprocess(tmp_path)
    msg = str(err.value)
    assert "step 1" in msg and "samples [" in msg and "lora" in msg and "text:" in msg and "audio:" in msg


def test_silent_zero_audio_loss_is_an_error_in_training(tmp_path):
    """The fault that reproduces "audio loss is always 0.0" is stopped by the loop's guard at step 1."""
    with pytest.raises(ZeroAudioLossError) as err:
        _run_inprocess(tmp_path, "--fault", "silent-zero-audio-loss")
    msg = str(err.value)
    assert "step 1" in msg and "exactly 0.0" in msg and "audio_tokens: 0" in msg
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "error" and events[-1]["error"] == "ZeroAudioLossError"


def test_skip_bad_samples_cli(tmp_path, records):
    from higgs_common.converters import write_chatml_json
    from tests.reliability_cases import break_wav, copy_records

    recs = copy_records(records, tmp_path, n=5)
    data = write_chatml_json(recs, tmp_path / "d.json")
    break_wav(recs[3].audio, "silent")
    with pytest.raises(Exception, match="silent"):
        _run_inprocess(tmp_path, "--data", str(data), "--batch-size", "1", "--grad-accum", "1")
    out = _run_inprocess(tmp_path, "--data", str(data), "--batch-size", "1", "--grad-accum", "1",
                         "--skip-bad-samples")
    skipped = json.loads((out / "skipped_samples.json").read_text())
    assert [s["sample_id"] for s in skipped] == [recs[3].id] and skipped[0]["error"] == "AudioSilentError"
