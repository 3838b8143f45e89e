"""scripts/gpu_trace_suite.py on the CPU (tiny checkpoint): the timed traced run of the custom CLI, its
per-step times, the recorder's own cost read from the trace, and the host profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_overhead_only_run_reports_step_times_recorder_cost_and_host_profile(assets, tmp_path):
    full = Path(assets.model).parent
    assert Path(assets.audio_tokenizer).parent == full          # the suite's --full layout
    out = tmp_path / "suite"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_trace_suite.py"), "--full", str(full),
                           "--out", str(out), "--steps", "2", "--warmup", "0", "--batch-size", "2",
                           "--custom-only", "--overhead-only", "--profile-host"],
                          cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    row = json.loads((out / "trace_suite.json").read_text())["custom"]
    # --overhead-only: 6 steps, the window 3-4 traced, 1-2 and 5-6 untraced around it
    assert sorted(row["step_s"], key=int) == ["1", "2", "3", "4", "5", "6"] and row["steps_timed"] == [4, 2]
    assert sorted(p.name for p in (out / "trace-custom" / "rank0").glob("step-*.json")) == [
        "step-0003.json", "step-0004.json"]
    assert row["recorder_host_s"] > 0 and 0 < row["recorder_host_share"] < 10
    assert "recorder host s per step" in (out / "trace_suite.md").read_text()
    profile = (out / "host-profile-custom.txt").read_text()
    assert "recorder.py" in profile and "optimizer_pre" in profile
    assert not (out / "host-profile-custom.prof").exists()      # the binary dump is replaced by the text
