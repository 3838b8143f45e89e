"""`python -m harness.compare` talks through one channel: each progress line once (not once from rich
and again from logging), and with --quiet no progress, no library warning and no temporary path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def _run(*args: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-m", "harness.compare", "--stage", "collator", "--samples", "1",
                           "--dataset-samples", "2", "--ddp-world-size", "0", "--out", str(out), *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False)


@pytest.mark.slow
def test_quiet_prints_only_the_summary(tmp_path):
    proc = _run("--quiet", out=tmp_path / "q")
    both = proc.stdout + proc.stderr
    assert proc.returncode == 0, both
    assert "verdict: pass" in proc.stdout
    assert "Warning" not in both and "warnings.warn" not in both, both
    assert "/tmp/higgs-diff-" not in both and "stage dataset" not in both, both
    assert proc.stderr == "", proc.stderr


@pytest.mark.slow
def test_progress_lines_appear_once(tmp_path):
    proc = _run(out=tmp_path / "p")
    both = proc.stdout + proc.stderr
    assert proc.returncode == 0, both
    for stage in ("dataset", "collator"):
        assert both.count(f"stage {stage}") == 1, both
    assert proc.stderr == "", proc.stderr      # logging goes through the same rich console, not a second channel
