"""Run `custom_impl.train` in a subprocess (optionally under torchrun) and read its metrics.jsonl."""

import json
import os
import subprocess
import sys
from pathlib import Path

from custom_impl.distributed import free_port

REPO = Path(__file__).resolve().parents[2]


def run_train(out: Path, *extra: str, nproc: int = 2, check: bool = True, timeout: float = 300) -> list[dict]:
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(free_port()), "-m", "custom_impl.train"]
    else:
        cmd = [sys.executable, "-m", "custom_impl.train"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # start_new_session: a timeout kills the whole group (torchrun AND its workers), by group id.
    proc = subprocess.Popen(cmd + ["--output-dir", str(out), *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise
    if check:
        assert proc.returncode == 0, stderr[-4000:]
    metrics = out / "metrics.jsonl"
    return [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
