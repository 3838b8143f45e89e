"""The failure this project was started for: a model call without text labels and audio-out ids.

`tests/fixtures/seed_failure_stages.py` calls the model without label_ids, label_audio_ids and
audio_out_ids and reduces missing labels to a detached 0.0 loss.  The report must say so in its first
line (audio loss 0.0, trainable parameters without gradient) and the harness must not raise.
"""

from __future__ import annotations

import json

import pytest

from harness import compare as compare_cli

SEED_ADAPTER = "tests/fixtures/seed_failure_stages.py"


@pytest.mark.slow
def test_seed_failure_is_named_in_the_first_line(tmp_path):
    out = tmp_path / "report"
    code = compare_cli.main(["--custom", SEED_ADAPTER, "--stage", "all", "--samples", "2", "--ddp-world-size", "0",
                             "--quiet", "--out", str(out)])
    assert code == 1
    first_line = (out / "report.md").read_text().splitlines()[0]
    assert "audio loss is exactly 0.0" in first_line
    assert "trainable parameters receives a gradient" in first_line or "receive no gradient" in first_line
    report = json.loads((out / "report.json").read_text())
    kinds = {s["kind"] for s in report["symptoms"] if s["run"].startswith("custom")}
    assert {"zero_loss", "no_gradient", "detached_loss"} <= kinds
    zero = next(s for s in report["symptoms"] if s["kind"] == "zero_loss")
    assert "audio-out ids" in zero["mechanism"]
    # the harness's own code never raised: the only stage error is the side's own backward
    errors = [st for st in report["stages"] if st["status"] == "error"]
    assert [st["stage"] for st in errors] == ["backward"]
    assert "the custom side's backward raised" in errors[0]["error"]
