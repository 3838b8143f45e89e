"""custom_impl.train: a resume with other settings refuses (or, with --resume-override-config, continues
with the new ones and records them); a corrupt newest checkpoint is skipped by path; a full disk while
saving names the folder and the step and leaves the previous checkpoint intact."""

from __future__ import annotations

import errno
import json
import math

import pytest
import torch

from custom_impl import train as T
from higgs_common.checkpoints import OVERRIDES_FILE, verify_checkpoint

BASE = ("--batch-size", "1", "--grad-accum", "1", "--cpu", "--speed", "none", "--save-every", "1")


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_resume_refuses_other_settings_then_overrides_past_a_corrupt_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert T.main([*BASE, "--max-steps", "2", "--output-dir", str(run)]) == 0       # lr 5e-3 (tiny default)
    capsys.readouterr()
    # 1) another --lr: refused before anything is loaded, naming the key old -> new
    assert T.main([*BASE, "--max-steps", "2", "--lr", "1e-2", "--output-dir", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "ResumeConfigError" in err and "train.learning_rate: 0.005 -> 0.01" in err and "checkpoint-2" in err
    # 2) the newest checkpoint is corrupt: reported by path, checkpoint-1 used; the override is recorded and applied
    weights = run / "checkpoint-2" / "trainable.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    assert T.main([*BASE, "--max-steps", "3", "--lr", "1e-2", "--output-dir", str(run), "--resume",
                   "--resume-override-config"]) == 0
    err = capsys.readouterr().err
    assert f"resume: skipping checkpoint {run / 'checkpoint-2'}: trainable.pt has 100 bytes" in err
    assert f"resume: using {run / 'checkpoint-1'} (step 1)" in err and "resuming from" in err
    entry = json.loads((run / OVERRIDES_FILE).read_text().splitlines()[-1])
    assert {d["key"]: (d["old"], d["new"]) for d in entry["differences"]} == {
        "train.learning_rate": (0.005, 0.01), "train.max_steps": (2, 3)}
    assert json.loads((run / "run_config.json").read_text())["resume_overrides"] == entry["differences"]
    # the new rate is used: cosine schedule, no warmup (min(100, 3 // 10) = 0), step 2 runs at 0.01 * cos-factor(1/3)
    lr2 = [m["lr"] for m in _metrics(run) if m["step"] == 2][0]
    assert lr2 == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi / 3)))
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3] and verify_checkpoint(run / "checkpoint-3") is None


@pytest.mark.slow
def test_disk_full_while_saving_names_folder_and_step(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if ".checkpoint-2.tmp" in str(f) and str(f).endswith("optimizer.pt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    assert T.main([*BASE, "--max-steps", "2", "--output-dir", str(run)]) == 1
    marker = "custom_impl.train: checkpoint not saved: "   # one line (a progress bar may precede it on that line)
    lines = [x[x.index(marker):] for x in capsys.readouterr().err.splitlines() if marker in x]
    assert len(lines) == 1, lines
    assert f"step 2 to '{run / 'checkpoint-2'}'" in lines[0] and "ENOSPC" in lines[0]
    assert f"previous checkpoint '{run / 'checkpoint-1'}' is intact" in lines[0]
    assert not (run / ".checkpoint-2.tmp").exists() and not (run / "checkpoint-2").exists()
    assert T.is_complete_checkpoint(run / "checkpoint-1") and verify_checkpoint(run / "checkpoint-1") is None
