"""reference_impl.train (HF Trainer): a resume with other settings refuses (or, with
--resume-override-config, continues with the new ones and records them); a corrupt newest checkpoint is
skipped by path; a full disk while saving names the folder and the step and leaves the previous
checkpoint intact."""

from __future__ import annotations

import errno
import json

import pytest

from higgs_common.checkpoints import OVERRIDES_FILE, verify_checkpoint
from reference_impl import trainer as tr
from reference_impl.train import cli

BASE = ("--save-steps", "1", "--report-to", "none", "--logging-steps", "1", "--device", "cpu")


@pytest.mark.slow
def test_resume_refuses_other_settings_then_overrides_past_a_corrupt_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli([*BASE, "--max-steps", "2", "--output-dir", str(run)]) == 0        # lr 1e-3 (tiny default)
    capsys.readouterr()
    assert cli([*BASE, "--max-steps", "2", "--learning-rate", "1e-2", "--output-dir", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "ResumeConfigError" in err and "train.learning_rate: 0.001 -> 0.01" in err and "checkpoint-2" in err
    weights = run / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert cli([*BASE, "--max-steps", "3", "--learning-rate", "1e-2", "--output-dir", str(run), "--resume",
                "--resume-override-config"]) == 0
    err = capsys.readouterr().err
    assert f"resume: skipping checkpoint {run / 'checkpoint-2'}: model.safetensors has 1000 bytes" in err
    assert f"resume: using {run / 'checkpoint-1'} (step 1)" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] == str(run / "checkpoint-1")
    entry = json.loads((run / OVERRIDES_FILE).read_text().splitlines()[-1])
    assert summary["resume_overrides"] == entry["differences"]
    assert {d["key"] for d in entry["differences"]} == {"train.learning_rate", "train.max_steps"}
    # the new rate is used: linear decay, no warmup; the Trainer logs the rate after step 2 of 3: 0.01 * 1/3
    lr = {m["step"]: m["learning_rate"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert lr[2] == pytest.approx(0.01 / 3)
    assert tr.is_complete_checkpoint(run / "checkpoint-3") and verify_checkpoint(run / "checkpoint-3") is None


@pytest.mark.slow
def test_disk_full_while_saving_names_folder_and_step(tmp_path, capsys, monkeypatch):
    import transformers.modeling_utils as mu

    run = tmp_path / "run"
    real = mu.safe_save_file          # what PreTrainedModel.save_pretrained writes model.safetensors with

    def full_disk(tensors, filename, *args, **kwargs):
        if "checkpoint-2" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(mu, "safe_save_file", full_disk)
    assert cli([*BASE, "--max-steps", "2", "--output-dir", str(run)]) == 1
    marker = "reference_impl.train: checkpoint not saved: "   # one line (a progress bar may precede it on that line)
    lines = [x[x.index(marker):] for x in capsys.readouterr().err.splitlines() if marker in x]
    assert len(lines) == 1, lines
    assert f"step 2 to '{run / 'checkpoint-2'}'" in lines[0] and "ENOSPC" in lines[0]
    assert f"previous checkpoint '{run / 'checkpoint-1'}' is intact" in lines[0]
    assert not (run / "checkpoint-2").exists()
    assert tr.is_complete_checkpoint(run / "checkpoint-1") and verify_checkpoint(run / "checkpoint-1") is None
