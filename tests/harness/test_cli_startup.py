"""`python -m harness.compare --help` and its usage errors answer without importing torch (or any
pipeline): argument parsing comes first, the heavy imports only when a comparison runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import json, runpy, sys
sys.argv = ["harness.compare", *json.loads(sys.argv[1])]
try:
    runpy.run_module("harness.compare", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "transformers", "boson_multimodal", "reference_impl.stages", "custom_impl.stages")
               if m in sys.modules)
print("PROBE" + json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def probe(*argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(argv))], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    line = next((ln for ln in res.stderr.splitlines() if ln.startswith("PROBE")), None)
    assert line is not None, res.stderr[-3000:]
    return {**json.loads(line[len("PROBE"):]), "stdout": res.stdout, "stderr": res.stderr}


def test_help_does_not_import_torch():
    got = probe("--help")
    assert got["code"] == 0, got["stderr"][-3000:]
    assert got["heavy"] == [], f"--help imported {got['heavy']}"
    assert "--fault" in got["stdout"] and "reference-audio-as-label" in got["stdout"]


@pytest.mark.parametrize("argv", [("--stage", "no-such-stage"), ("--samples", "many"), ("--no-such-option",)])
def test_usage_error_does_not_import_torch(argv):
    got = probe(*argv)
    assert got["code"] == 2, got["stderr"][-3000:]
    assert got["heavy"] == [], f"{argv} imported {got['heavy']}"
    assert "usage:" in got["stderr"]
