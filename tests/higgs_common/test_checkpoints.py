"""higgs_common.checkpoints: config diff, refusal/override on resume, integrity, fallback, save errors."""

from __future__ import annotations

import errno
import io
import json

import pytest
import torch

from higgs_common.checkpoints import (CONFIG_FILE, OVERRIDES_FILE, CheckpointSaveError, NoUsableCheckpointError,
                                      ResumeConfigError, apply_learning_rate, check_resume_config, config_diff,
                                      resolve_resume, save_errors, verify_checkpoint, write_config, write_integrity)


def _ckpt(run, step, config=None):
    folder = run / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (folder / "done").write_text("1")
    if config is not None:
        write_config(folder, config)
    write_integrity(folder)
    return folder


def _complete(p):
    return (p / "done").is_file()


def test_config_diff_names_nested_keys_and_one_sided_ones():
    old = {"train": {"lr": 1e-3, "betas": (0.9, 0.999)}, "args": {"data": "a"}}
    new = {"train": {"lr": 2e-3, "betas": [0.9, 0.999]}, "args": {"data": "a", "fault": ["x"]}}
    assert config_diff(old, new) == [("args.fault", "<absent>", ["x"]), ("train.lr", 1e-3, 2e-3)]
    assert config_diff(old, old) == []


def test_resume_refuses_other_settings_unless_overridden(tmp_path):
    ckpt = _ckpt(tmp_path, 2, {"train": {"learning_rate": 0.005, "max_steps": 2}})
    new = {"train": {"learning_rate": 0.01, "max_steps": 2}}
    with pytest.raises(ResumeConfigError, match=r"train\.learning_rate: 0\.005 -> 0\.01.*--resume-override-config"):
        check_resume_config(ckpt, new, override=False, run_dir=tmp_path)
    assert not (tmp_path / OVERRIDES_FILE).exists()
    err = io.StringIO()
    assert check_resume_config(ckpt, new, override=True, run_dir=tmp_path, stream=err) == [
        ("train.learning_rate", 0.005, 0.01)]
    entry = json.loads((tmp_path / OVERRIDES_FILE).read_text())
    assert entry["checkpoint"] == str(ckpt) and entry["differences"] == [
        {"key": "train.learning_rate", "old": 0.005, "new": 0.01}]
    assert "changed settings" in err.getvalue()
    assert check_resume_config(ckpt, {"train": {"learning_rate": 0.005, "max_steps": 2}}, override=False,
                               run_dir=tmp_path) == []


def test_checkpoint_without_stored_config_resumes_with_a_note(tmp_path):
    ckpt = _ckpt(tmp_path, 1)
    err = io.StringIO()
    assert check_resume_config(ckpt, {"a": 1}, override=False, run_dir=tmp_path, stream=err) == []
    assert CONFIG_FILE in err.getvalue()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    _ckpt(tmp_path, 1)
    newest = _ckpt(tmp_path, 2)
    w = newest / "weights.bin"
    if damage == "truncate":
        w.write_bytes(w.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(w.read_bytes())
        data[10] ^= 0xFF
        w.write_bytes(bytes(data))
    else:
        w.unlink()
    assert verify_checkpoint(newest) is not None
    err = io.StringIO()
    assert resolve_resume(tmp_path, is_complete=_complete, stream=err) == tmp_path / "checkpoint-1"
    lines = err.getvalue().splitlines()
    assert lines[0].startswith(f"resume: skipping checkpoint {newest}: weights.bin")
    assert lines[1] == f"resume: using {tmp_path / 'checkpoint-1'} (step 1), the newest loadable checkpoint"
    with pytest.raises(NoUsableCheckpointError, match="checkpoint-2' is unusable: weights.bin"):
        resolve_resume(newest, is_complete=_complete)


def test_no_usable_checkpoint_names_every_candidate(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(NoUsableCheckpointError, match=r"no complete checkpoint.*checkpoint-3: its save did not finish"):
        resolve_resume(tmp_path, is_complete=_complete, stream=io.StringIO())


def test_save_errors_name_folder_step_and_previous(tmp_path):
    prev = _ckpt(tmp_path, 1)
    half = tmp_path / ".checkpoint-2.tmp"
    half.mkdir()
    with pytest.raises(CheckpointSaveError) as exc:
        with save_errors(tmp_path / "checkpoint-2", 2, previous=prev, cleanup=half):
            raise OSError(errno.ENOSPC, "No space left on device")
    msg = str(exc.value)
    assert "step 2" in msg and str(tmp_path / "checkpoint-2") in msg and "ENOSPC" in msg and str(prev) in msg
    assert not half.exists() and verify_checkpoint(prev) is None
    with pytest.raises(CheckpointSaveError, match="torch could not write the file .*unexpected pos 188416 vs 188304"):
        with save_errors(tmp_path / "checkpoint-3", 3, previous=prev):
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 188416 vs 188304")
    with pytest.raises(ValueError):                   # not a write failure: unchanged
        with save_errors(tmp_path / "checkpoint-4", 4, previous=prev):
            raise ValueError("a bug")


def test_apply_learning_rate_replaces_the_loaded_rate():
    from transformers import get_linear_schedule_with_warmup

    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = get_linear_schedule_with_warmup(opt, 0, 4)
    opt.step()
    sched.step()                                      # step 1 of 4: lr = base * 3/4
    state_o, state_s = opt.state_dict(), sched.state_dict()
    opt2 = torch.optim.AdamW([p], lr=1e-2)
    sched2 = get_linear_schedule_with_warmup(opt2, 0, 4)
    opt2.load_state_dict(state_o)
    sched2.load_state_dict(state_s)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.75e-3)       # the stored rate wins: the old bug
    apply_learning_rate(opt2, sched2, 1e-2)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.75e-2) and sched2.get_last_lr() == [pytest.approx(0.75e-2)]
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.5e-2)
