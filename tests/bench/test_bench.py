"""bench on the CPU (tiny checkpoint): CLI, FLOP model, a smoke run, the target summary."""

from __future__ import annotations

import json

import pytest
import torch

from bench import single as bench
from bench.train import BatchShape, flop_model


@pytest.fixture(scope="module")
def items(records, ctx, tmp_path_factory):
    """The custom pipeline's dataset items of data/ (the bench's input)."""
    from custom_impl import stages as cs

    return cs.dataset(cs.write_native(records, tmp_path_factory.mktemp("bench_native")), ctx)


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    assert "--batch-sizes" in capsys.readouterr().out


def test_flop_model_lora_skips_weight_grads(ctx):
    shape = BatchShape(batch_size=2, padded_len=40, tokens=70, audio_out_positions=20, text_supervised=5,
                       audio_supervised=40, sum_sq_len=35 * 35 * 2)
    full = flop_model(ctx.model_config, shape, lora_params=0, full_ft=True)
    lora = flop_model(ctx.model_config, shape, lora_params=1000, full_ft=False)
    assert full["train_flops"] == 3 * full["forward_flops"]
    assert lora["train_flops"] == 2 * lora["forward_flops"] + 6 * 1000 * 70


def test_flop_model_counts_useful_work_only(ctx):
    """Issue 17: the text head counts at supervised rows only, tokens and attention at real positions
    only, so both pipelines are credited with the same work whatever each computes."""
    import dataclasses

    t = ctx.model_config.text_config
    shape = BatchShape(batch_size=2, padded_len=40, tokens=70, audio_out_positions=20, text_supervised=5,
                       audio_supervised=40, sum_sq_len=35 * 35 * 2)
    base = flop_model(ctx.model_config, shape, lora_params=0, full_ft=True)["forward_flops"]
    more_text = flop_model(ctx.model_config, dataclasses.replace(shape, text_supervised=6), lora_params=0,
                           full_ft=True)["forward_flops"]
    assert more_text - base == 2 * t.hidden_size * t.vocab_size                 # one more supervised row
    padded = flop_model(ctx.model_config, dataclasses.replace(shape, padded_len=400), lora_params=0,
                        full_ft=True)["forward_flops"]
    assert padded == base                                                       # padding is not work


def test_batch_shape_is_read_off_the_batch_as_the_model_merges_it(ctx, items):
    from custom_impl import loss as cl
    from custom_impl import stages as cs
    from bench.train import batch_shape

    batch = cs.collate(items[:3], ctx)
    with torch.no_grad():
        out = cs.forward(cs.build_model(ctx, cs.DEFAULT_TRAIN), batch, ctx)
    terms = cl.compute_terms(out, batch)
    shape = batch_shape(batch, ctx)
    mask = out.extra["attention_mask"]
    assert shape.padded_len == out.expanded_input_ids.shape[1] and shape.tokens == int(mask.sum())
    assert shape.audio_out_positions == int(out.extra["audio_out_mask"].sum())
    assert (shape.text_supervised, shape.audio_supervised) == (terms.text_count, int(terms.audio_counts.sum()))
    assert shape.sum_sq_len == sum(int(n) ** 2 for n in mask.sum(dim=1))


def test_batch_sizes_accept_a_final_max():
    assert bench.parse_batch_sizes("8,32,max") == ([8, 32], True)
    assert bench.parse_batch_sizes("8") == ([8], False)
    with pytest.raises(SystemExit):
        bench.parse_batch_sizes("max")


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
    assert {"device_info", "summary"} <= set(res)
    md = (tmp_path / "bench.md").read_text()
    assert "Training throughput" in md and "Data path" in md


@pytest.mark.slow
def test_sweep_searches_the_largest_batch_and_measures_variants(tmp_path, assets):
    code = bench.main(["--device", "cpu", "--sections", "train", "--configs", "lora-common",
                       "--batch-sizes", "2,max", "--max-batch", "4", "--steps", "1", "--warmup", "1",
                       "--no-flop-count", "--variants", "none;+index-ffn,+causal-attn", "--epoch-batch", "2",
                       "--out", str(tmp_path)])
    assert code == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    rows = res["train"]["rows"]
    main = [(r["pipeline"], r["batch_size"]) for r in rows if r["variant"] == "default" and r["batching"] == "fixed"]
    assert main == [("reference", 2), ("custom", 2), ("reference", 4), ("custom", 4)]
    assert res["train"]["largest_batch"] == {"reference": 4, "custom": 4}
    variants = [(r["variant"], r["speed"]) for r in rows if r["variant"] != "default" and r["batching"] == "fixed"]
    assert variants == [("none", "none"), ("+index-ffn,+causal-attn", "fast-head,index-ffn,causal-attn")]
    epoch = [(r["pipeline"], r["variant"]) for r in rows if r["batching"] == "epoch"]
    assert epoch == [("reference", "default"), ("custom", "default"), ("custom", "+group-by-length")]
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    assert res["summary"]["common_best"]["largest_batch"] == {"reference": 4, "custom": 4}


def test_deadline_skips_the_runs_left(ctx, items):
    from custom_impl.speed import SpeedOptions
    from bench.sweep import SweepPlan, run_sweep

    plan = SweepPlan(config_names=["lora-common"], batch_sizes=[2], deadline_s=-1.0)
    state = run_sweep(ctx, items, bench.train_configs(["lora-common"], ctx.device), plan, SpeedOptions(), peak=None)
    assert [(r["pipeline"], r["status"]) for r in state.rows] == [("reference", "skipped"), ("custom", "skipped")]


def test_summary_checks_targets():
    row = dict(status="ok", config="lora-common", batch_size=8, peak_memory_gib=10.0, mfu=0.42, samples_per_s=10.0)
    res = {"train": {"rows": [dict(row, pipeline="reference", tokens_per_s=100.0),
                              dict(row, pipeline="custom", tokens_per_s=120.0, peak_memory_gib=9.0),
                              dict(row, pipeline="custom", tokens_per_s=500.0, variant="-compile"),
                              dict(row, pipeline="custom", tokens_per_s=900.0, batching="epoch"),
                              dict(row, pipeline="custom", tokens_per_s=250.0, batch_size=32),
                              dict(row, pipeline="reference", tokens_per_s=110.0, batch_size=32)],
                     "largest_batch": {"reference": 32, "custom": 32}},
           "harness": {"diff_plus_report_over_compute": 0.05},
           "data": {"reference": {"samples_per_s": 60.0}, "custom": {"samples_per_s": 40.0}}}
    s = bench.summarise(res)
    assert s["common_b8"]["speedup_custom_over_reference"] == pytest.approx(1.2)
    assert s["common_b8"]["target_speedup_2.0_met"] is False                  # 1.2x at batch 8
    assert s["common_b32"]["target_speedup_2.0_met"] is True                  # 250 / 110 at batch 32
    best = s["common_best"]                                          # variant and epoch rows left out
    assert (best["custom_batch"], best["reference_batch"]) == (32, 32)
    assert best["speedup_custom_over_reference"] == pytest.approx(250 / 110) and best["target_speedup_2.0_met"]
    assert s["target_mfu_0.25_met"] is True and s["target_harness_0.10_met"] is True
    assert s["data_over_gpu_consumption"] == pytest.approx(4.0) and s["target_data_5x_met"] is False
    assert {"common_b8", "common_b32", "best_lora_mfu", "target_mfu_0.25_met", "harness_overhead"} <= set(s)
