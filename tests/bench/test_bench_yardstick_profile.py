"""The speed bench's yardstick, repeats and profile on the CPU (tiny checkpoint)."""

from __future__ import annotations

import json

import pytest
import torch

from bench import single as bench
from bench.profile import Kernel, busy_us, category, render_profile, summarise_kernels
from bench.yardstick import Yardstick, YardstickBatch, lora_targets_of
from harness.engine.common_config import common_train_config


@pytest.fixture(scope="module")
def items(records, ctx, tmp_path_factory):
    from custom_impl import stages as cs

    return cs.dataset(cs.write_native(records, tmp_path_factory.mktemp("bench_native")), ctx)


# ------------------------------------------------------------------------------ yardstick

def test_yardstick_trains_the_same_adapters_as_the_custom_pipeline(ctx):
    """Same LoRA (r16 on every decoder linear layer of both FFNs): the same trainable parameter count."""
    from custom_impl import stages as cs

    train = common_train_config("cpu")
    r, alpha, targets = lora_targets_of(train)
    model = Yardstick(ctx.model_config, lora_r=r, lora_alpha=alpha, lora_targets=targets, dtype=torch.float32,
                      device="cpu")
    custom = cs.build_model(ctx, train)
    n_yard = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_yard == sum(p.numel() for p in custom.parameters() if p.requires_grad) > 0
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_yardstick_batch_has_the_batch_layout(ctx):
    lengths, padded = [30, 40, 25], 40
    b = YardstickBatch.like(lengths, padded, audio_out_positions=20, text_supervised=6, config=ctx.model_config,
                            device="cpu")
    assert b.input_ids.shape == (3, padded) and int(b.audio_mask.sum()) == 20 == b.audio_idx.numel()
    assert b.text_rows.numel() == 6 and b.audio_codes.shape == (20, ctx.model_config.audio_num_codebooks)
    assert b.text_idx.numel() + b.audio_idx.numel() == 3 * padded
    rows = b.text_rows // padded, b.text_rows % padded
    assert all(int(j) < lengths[int(i)] for i, j in zip(*rows))              # supervised rows are real positions
    assert not bool(b.audio_mask.view(-1)[b.text_rows].any())
    with pytest.raises(ValueError, match="do not fit"):
        YardstickBatch.like([4, 4], 8, audio_out_positions=6, text_supervised=4, config=ctx.model_config, device="cpu")


def test_yardstick_step_learns_only_the_adapters(ctx):
    train = common_train_config("cpu")
    r, alpha, targets = lora_targets_of(train)
    torch.manual_seed(0)
    model = Yardstick(ctx.model_config, lora_r=r, lora_alpha=alpha, lora_targets=targets, dtype=torch.float32,
                      device="cpu")
    batch = YardstickBatch.like([20, 16], 24, 10, 4, ctx.model_config, "cpu")
    loss = model.loss(batch)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    assert any(float(g.abs().sum()) > 0 for n, g in grads.items() if n.endswith("lora_b"))
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_run_yardstick_measures_like_the_pipelines(ctx, items):
    from bench.sweep import fixed_batches
    from bench.yardstick import run_yardstick

    batches, shapes = fixed_batches(ctx, items, 2)
    m = run_yardstick(ctx, common_train_config("cpu"), batches, shapes, config_name="lora-common", steps=2,
                      warmup=1, count=True)
    assert m.status == "ok", m.error
    assert m.pipeline == "yardstick" and len(m.step_seconds) == 2 and len(m.losses) == 3
    assert len(m.host_op_us) == len(m.host_steal) == 2 and all(x > 0 for x in m.host_op_us)   # beside each timed step
    assert m.counted_flops_per_step and m.counted_flops_per_step > 0
    row = m.to_json(peak=None)
    assert row["tokens_per_s"] > 0 and row["tokens_per_step"] == shapes[0].tokens
    assert row["host_op_us_median"] > 0


# ------------------------------------------------------------------------------ repeats

def test_repeat_spread_reports_each_repeat_and_the_ratios():
    rows = [dict(pipeline=p, repeat=k, tokens_per_s=v)
            for p, vals in (("reference", (100, 110, 90)), ("custom", (300, 330, 240)), ("yardstick", (200, 200, 200)))
            for k, v in enumerate(vals, 1)]
    s = bench.repeat_spread(rows)
    assert s["custom"]["tokens_per_s"] == [300, 330, 240] and s["custom"]["median"] == 300
    assert s["custom"]["spread"] == pytest.approx(90 / 300)
    assert s["custom_over_reference"]["per_repeat"] == pytest.approx([3.0, 3.0, 240 / 90])
    assert s["custom_over_yardstick"]["min"] == pytest.approx(1.2)
    # the ratio's range: its spread, and which side's own repeats moved more
    assert s["custom_over_reference"]["spread"] == pytest.approx((3.0 - 240 / 90) / 3.0)
    assert s["custom_over_reference"]["follows"] == "custom"          # custom 30% > reference 20%
    assert s["custom_over_yardstick"]["follows"] == "custom"          # the yardstick did not move
    steady = [dict(r, tokens_per_s=300) if r["pipeline"] == "custom" else r for r in rows]
    assert bench.repeat_spread(steady)["custom_over_reference"]["follows"] == "reference"
    assert bench.repeat_spread([dict(pipeline="custom", repeat=1, tokens_per_s=1.0)]) is None
    assert "host_op_us" not in s["custom"]                            # rows without host readings


def test_repeat_spread_relates_each_pipelines_steps_to_the_host():
    """A host-bound pipeline's step times follow the probe (r near 1), a graphed one's do not."""
    probes = [[1.0, 1.4, 1.1], [1.2, 1.0, 1.6], [1.1, 1.3, 1.0]]
    rows = []
    for k, p in enumerate(probes, 1):
        rows.append(dict(pipeline="reference", repeat=k, tokens_per_s=100.0, host_op_us=p,
                         step_seconds=[0.3 * x for x in p], host_op_us_median=sorted(p)[1],
                         host_steal_median=0.01 * k))
        rows.append(dict(pipeline="custom", repeat=k, tokens_per_s=500.0, host_op_us=p,
                         step_seconds=[0.08, 0.08, 0.08], host_op_us_median=sorted(p)[1], host_steal_median=None))
    s = bench.repeat_spread(rows)
    assert s["reference"]["step_host_r"] == pytest.approx(1.0)
    assert s["reference"]["host_op_us"] == [1.1, 1.2, 1.1] and s["reference"]["host_steal"] == [0.01, 0.02, 0.03]
    assert s["custom"]["step_host_r"] is None                          # constant step time
    text = bench.render_markdown({"device_info": {"name": "x", "device": "cpu", "torch": "t", "python": "p"},
                                  "settings": {"model": "m", "model_parameters": 1, "steps": 3, "warmup": 1,
                                               "repeats": 3}, "summary": {"repeats_b8": s}})
    assert "| reference | 100, 100, 100 | 100 | 100 | 100 | 0.0% | 1.10, 1.20, 1.10 | 1.0%, 2.0%, 3.0% | 1.00 |" in text
    assert "| custom | 500, 500, 500 | 500 | 500 | 500 | 0.0% | 1.10, 1.20, 1.10 | -, -, - | - |" in text


def test_summary_uses_the_median_repeat_and_compares_the_yardstick():
    row = dict(status="ok", config="lora-common", batch_size=8, peak_memory_gib=1.0, mfu=0.1, samples_per_s=1.0)
    rows = ([dict(row, pipeline="reference", repeat=k, tokens_per_s=v) for k, v in ((1, 100.0), (2, 300.0), (3, 200.0))]
            + [dict(row, pipeline="custom", repeat=k, tokens_per_s=v) for k, v in ((1, 400.0), (2, 500.0), (3, 600.0))]
            + [dict(row, pipeline="yardstick", repeat=1, tokens_per_s=250.0, mfu=0.9)])
    s = bench.summarise({"train": {"rows": rows, "largest_batch": {}}})
    assert s["common_b8"]["speedup_custom_over_reference"] == pytest.approx(500 / 200)   # medians
    assert s["common_b8"]["speedup_custom_over_yardstick"] == pytest.approx(2.0)
    assert s["repeats_b8"]["reference"]["tokens_per_s"] == [100.0, 300.0, 200.0]
    assert s["best_lora_mfu"] == pytest.approx(0.1)                      # the yardstick is not a pipeline


def test_bench_refuses_an_out_folder_holding_results(tmp_path, capsys):
    (tmp_path / "bench.json").write_text("{}")
    assert bench.main(["--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "already holds a bench.json" in capsys.readouterr().err
    assert (tmp_path / "bench.json").read_text() == "{}"
    assert bench.default_out(0).name == "bench-19700101T000000Z" and bench.default_out(0).parent.name == "bench"


# ------------------------------------------------------------------------------ profile

@pytest.mark.parametrize("name, expected", [
    ("nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNN", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("triton_tem_fused_mm_0", "matmul"),
    ("aten::mm", "matmul"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4> >", "attention"),
    ("fmha_cutlassB_bf16_aligned_64x64_k128_sm80", "attention"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0", "norm"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("void at::native::lpnorm_cleanup<float, (at::native::NormType)1, float>", "optimizer"),   # grad clipping
    ("triton_poi_fused_add_mul_silu_3", "elementwise"),
    ("Memcpy DtoD (Device -> Device)", "elementwise"),
])
def test_kernel_categories(name, expected):
    assert category(name) == expected


def test_summary_counts_overlaps_once_and_the_rest_as_idle():
    kernels = [Kernel("nvjet_gemm", 0, 400), Kernel("flash_fwd_kernel", 300, 200),   # overlap 300-400
               Kernel("triton_poi_fused_add", 1000, 100), Kernel("multi_tensor_apply_kernel", 1500, 100)]
    assert busy_us(kernels) == 500 + 100 + 100
    p = summarise_kernels(kernels, wall_s=2e-3, steps=1)                 # 2 ms wall, 0.7 ms busy
    assert p["gpu_busy_ms_per_step"] == pytest.approx(0.7) and p["idle_share"] == pytest.approx(0.65)
    assert p["categories"]["matmul"]["ms_per_step"] == pytest.approx(0.4)
    assert p["categories"]["attention"]["ms_per_step"] == pytest.approx(0.2)
    assert p["categories"]["optimizer"]["share_of_step"] == pytest.approx(0.05)
    assert p["categories"]["idle (host gaps)"]["ms_per_step"] == pytest.approx(1.3)
    assert [k["name"] for k in p["top_kernels"]][0] == "nvjet_gemm"
    md = render_profile(p | dict(batch_size=32, device="cuda", speed="compile", unprofiled_step_ms=1.5,
                                 host_syncs_per_step=14))
    assert "| matmul | 0.40 | 20.0% |" in md and "65.0%" in md and "Host syncs per step: 14" in md
    with pytest.raises(ValueError, match="at least one step"):
        summarise_kernels(kernels, wall_s=1.0, steps=0)


def test_profile_custom_runs_on_the_cpu(ctx, items):
    from custom_impl.speed import SpeedOptions
    from bench.profile import profile_custom
    from bench.sweep import fixed_batches

    (batch,), _ = fixed_batches(ctx, items, 2)
    p = profile_custom(ctx, common_train_config("cpu"), batch, SpeedOptions.defaults("cpu"), warmup=1, steps=1)
    assert p["batch_size"] == 2 and p["steps"] == 1 and p["unprofiled_step_ms"] > 0
    assert p["categories"]["matmul"]["ms_per_step"] > 0                 # aten::mm / addmm self time
    assert 0 <= p["idle_share"] <= 1 and p["top_kernels"]
    assert p["host_syncs_per_step"] is None                            # counted on CUDA only


@pytest.mark.slow
def test_speed_suite_smoke_run(tmp_path, assets):
    """What `scripts/gpu.sh speed` runs, at tiny size on the CPU: three pipelines, repeats, profile."""
    code = bench.main(["--device", "cpu", "--sections", "train", "--configs", "lora-common", "--batch-sizes", "1,2",
                       "--repeats", "2", "--repeat-steps", "2", "--yardstick", "--profile-batch", "1",
                       "--profile-steps", "1", "--steps", "1",
                       "--warmup", "0", "--no-flop-count", "--out", str(tmp_path)])
    assert code == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    main = [(r["pipeline"], r["batch_size"], r["repeat"]) for r in res["train"]["rows"]]
    pipes = ("reference", "custom", "yardstick")
    assert main == [(p, 1, k) for k in (1, 2) for p in pipes] + [(p, 2, 1) for p in pipes]   # repeats back to back
    timed = [len(r["step_seconds"]) for r in res["train"]["rows"]]
    assert timed == [2] * 6 + [1] * 3                              # --repeat-steps for the repeated batch size only
    assert all(r["status"] == "ok" for r in res["train"]["rows"]), [r["error"] for r in res["train"]["rows"]]
    assert res["profile"]["status"] == "ok" and res["summary"]["repeats_b1"]["custom"]["tokens_per_s"]
    md = (tmp_path / "bench.md").read_text()
    assert "Run-to-run spread at batch 1 (2 repeats, each a fresh model, median of 2 timed steps)" in md and "## Profile: custom pipeline, batch 1" in md


def test_summary_puts_the_compare_run_against_training_steps():
    row = dict(status="ok", config="lora-common", batch_size=4, peak_memory_gib=1.0, mfu=0.1, samples_per_s=1.0)
    res = {"train": {"rows": [dict(row, pipeline="reference", tokens_per_s=1.0, step_s_median=0.5),
                              dict(row, pipeline="custom", tokens_per_s=2.0, step_s_median=0.25)], "largest_batch": {}},
           "harness": {"diff_plus_report_over_compute": 0.05, "total_s": 100.0, "samples": 4}}
    s = bench.summarise(res)
    assert s["harness_total_in_train_steps"] == {"reference": 200.0, "custom": 400.0}


def test_frozen_heap_freezes_the_heap_for_the_timed_steps_and_gives_it_back():
    import gc

    from bench import train as tb

    before = gc.get_freeze_count()
    with tb.frozen_heap():
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == before
