"""The reference trains under torchrun the way the HF Trainer does it (gloo on CPU)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_trainer_run_logs_finite_losses(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(_free_port()), "-m", "reference_impl.train", "--max-steps", "3", "--output-dir", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "audio_loss" in s]
    assert [s["step"] for s in steps] == [1, 2, 3]          # written once (rank 0), not once per rank
    assert all(0 < s["audio_loss"] < 100 and 0 < s["llm_loss"] < 100 for s in steps)
    assert (out / "checkpoint-3").is_dir()
