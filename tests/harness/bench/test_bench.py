"""harness.bench on the CPU (tiny checkpoint): CLI, FLOP model, a smoke run, the target summary."""

from __future__ import annotations

import json

import pytest
import torch

from harness.bench import single as bench
from harness.bench.train import BatchShape, flop_model


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    assert "--batch-sizes" in capsys.readouterr().out


def test_flop_model_lora_skips_weight_grads(ctx):
    shape = BatchShape(batch_size=2, padded_len=40, tokens=70, audio_out_positions=20, text_supervised=5,
                       audio_supervised=40)
    full = flop_model(ctx.model_config, shape, lora_params=0, full_ft=True)
    lora = flop_model(ctx.model_config, shape, lora_params=1000, full_ft=False)
    assert full["train_flops"] == 3 * full["forward_flops"]
    assert lora["train_flops"] == 2 * lora["forward_flops"] + 6 * 1000 * 70
    t = ctx.model_config.text_config
    assert full["forward_flops"] > 2 * 70 * t.hidden_size * t.vocab_size   # the text head alone


def test_custom_lora_loads_frozen_base_in_bf16_on_cuda_only():
    from custom_impl.model import load_dtype
    from harness.engine.common_config import COMMON_TRAIN

    bf16 = COMMON_TRAIN.replace(precision="bf16")
    assert load_dtype(torch.device("cuda"), bf16) == torch.bfloat16
    assert load_dtype(torch.device("cpu"), bf16) == torch.float32
    assert load_dtype(torch.device("cuda"), bf16.replace(use_lora=False)) == torch.float32   # fp32 masters
    assert load_dtype(torch.device("cuda"), COMMON_TRAIN) == torch.float32


@pytest.mark.slow
def test_smoke_run_writes_json_and_markdown(tmp_path, assets):
    code = bench.main(["--device", "cpu", "--sections", "train,data", "--configs", "lora-common",
                       "--batch-sizes", "2", "--steps", "1", "--warmup", "0", "--no-flop-count",
                       "--data-repeats", "1", "--out", str(tmp_path)])
    assert code == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    rows = res["train"]["rows"]
    assert {r["pipeline"] for r in rows} == {"reference", "custom"}
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in rows), rows
    assert {"reference", "custom"} <= set(res["data"])
    assert res["device_info"]["torch"] == torch.__version__
    md = (tmp_path / "bench.md").read_text()
    assert "Training throughput" in md and "Data path" in md


def test_summary_checks_targets():
    row = dict(status="ok", config="lora-common", batch_size=8, peak_memory_gib=10.0, mfu=0.42, samples_per_s=10.0)
    res = {"train": {"rows": [dict(row, pipeline="reference", tokens_per_s=100.0),
                              dict(row, pipeline="custom", tokens_per_s=120.0, peak_memory_gib=9.0)]},
           "harness": {"diff_plus_report_over_compute": 0.05},
           "data": {"reference": {"samples_per_s": 60.0}, "custom": {"samples_per_s": 40.0}}}
    s = bench.summarise(res)
    assert s["common_b8"]["speedup_custom_over_reference"] == pytest.approx(1.2)
    assert s["common_b8"]["target_speedup_1.15_met"] is True
    assert s["target_mfu_0.40_met"] is True and s["target_harness_0.10_met"] is True
    assert s["data_over_gpu_consumption"] == pytest.approx(4.0) and s["target_data_5x_met"] is False
