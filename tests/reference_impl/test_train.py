"""`python -m reference_impl.train` / `reference_impl.merge` end to end on the tiny default (slow)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _step_logs(out: Path) -> list[dict]:
    state = json.loads((out / "checkpoint-20" / "trainer_state.json").read_text())
    return [h for h in state["log_history"] if "loss" in h]


@pytest.mark.slow
def test_default_run_learns(tmp_path):
    out = tmp_path / "run"
    proc = _run("reference_impl.train", "--max-steps", "20", "--output-dir", str(out))
    steps = _step_logs(out)
    assert [h["step"] for h in steps] == list(range(1, 21))
    for h in steps:
        assert math.isfinite(h["audio_loss"]) and h["audio_loss"] > 0
        assert math.isfinite(h["llm_loss"]) and h["llm_loss"] > 0
    assert steps[-1]["loss"] < steps[0]["loss"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "fp32" and summary["use_lora"] is False
    assert "step 20/20" in (out / "train.log").read_text()
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert "%|" in proc.stderr            # tqdm progress bar
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 21))
    assert all(0 < m["step_seconds"] < 60 for m in metrics)   # per-step time (bench.scaling)


@pytest.mark.slow
def test_lora_run_adapter_reload_and_merge(tmp_path, ctx):
    from boson_multimodal.model.higgs_audio import HiggsAudioModel
    from peft import PeftModel

    from reference_impl.model import HiggsAudioModelWithLoss

    out = tmp_path / "lora"
    _run("reference_impl.train", "--max-steps", "20", "--use-lora", "--output-dir", str(out))
    steps = _step_logs(out)
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert (out / "checkpoint-20" / "adapter_model.safetensors").is_file()
    adapters = out / "lora_adapters"
    reloaded = PeftModel.from_pretrained(HiggsAudioModelWithLoss.from_pretrained(str(ctx.model_path)), str(adapters))
    lora_b = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)      # trained (B starts at zero)

    merged_dir = tmp_path / "merged"
    _run("reference_impl.merge", "--adapter", str(adapters), "--out", str(merged_dir))
    merged = HiggsAudioModel.from_pretrained(str(merged_dir))
    base = HiggsAudioModel.from_pretrained(str(ctx.model_path))
    name = next(n for n, _ in merged.named_parameters() if n.endswith("self_attn.q_proj.weight"))
    assert not torch.equal(dict(merged.named_parameters())[name], dict(base.named_parameters())[name])
    folded = reloaded.merge_and_unload()
    torch.testing.assert_close(dict(merged.named_parameters())[name], dict(folded.named_parameters())[name])


def test_several_gpus_outside_torchrun_train_on_one():
    # HF Trainer would wrap the model in nn.DataParallel and scatter (num_codebooks, T) audio tensors
    # along codebooks (seen on a 2-GPU H200 host: "size of tensor a (4) must match ... b (8)").
    from types import SimpleNamespace

    from reference_impl.trainer import one_gpu_outside_torchrun

    args = SimpleNamespace(n_gpu=2, _n_gpu=2, device="cuda:0")
    assert one_gpu_outside_torchrun(args) is args and args._n_gpu == 1
    one = SimpleNamespace(n_gpu=1, _n_gpu=1, device="cuda:0")
    assert one_gpu_outside_torchrun(one)._n_gpu == 1
