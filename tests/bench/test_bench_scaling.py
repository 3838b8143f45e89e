"""bench.scaling's arithmetic and table (the GPU runs themselves are in reports/bench/)."""

from __future__ import annotations

import pytest

from bench import scaling as bs


def _run(pipeline, gpus, step, variant="default"):
    return {"pipeline": pipeline, "variant": variant, "gpus": gpus, "mean_step_s": step}


def test_efficiency_is_tokens_per_second_over_n_times_one_gpu():
    runs = [_run("custom", 1, 0.5), _run("custom", 2, 0.625), _run("custom", 2, 0.5, "b"),
            _run("reference", 1, 0.4), {"pipeline": "reference", "variant": "default", "gpus": 2}]
    rows = bs.summarise(runs, batch=8, tps=100)
    one, two, two_b, ref1, ref2 = rows
    assert one["tokens_per_s"] == pytest.approx(8 * 100 / 0.5) and one["scaling_efficiency"] == 1.0
    assert two["global_batch"] == 16 and two["scaling_efficiency"] == pytest.approx(0.8)   # 0.5 / 0.625
    assert two_b["pipeline"] == "custom (b)" and two_b["scaling_efficiency"] == pytest.approx(1.0)
    assert ref2 == {"pipeline": "reference", "gpus": 2, "error": True}


def test_markdown_names_the_device_and_judges_the_target_on_the_best_custom_variant():
    rows = bs.summarise([_run("custom", 1, 0.5), _run("custom", 2, 0.625), _run("custom", 2, 0.52, "b")], 8, 100)
    md = bs.render_markdown({"device": {"torch": "x", "gpu_count": 2, "name": "NVIDIA H100"}, "batch_size": 8,
                             "steps": 10, "warmup": 3, "tokens_per_sample": 100, "rows": rows})
    assert "2 x NVIDIA H100" in md and "| custom | 2 | 16 |" in md
    assert "96.2% with `custom (b)` (met)" in md
    cpu = bs.render_markdown({"device": {"torch": "x", "gpu_count": 0}, "batch_size": 8, "steps": 1, "warmup": 0,
                              "tokens_per_sample": 1, "rows": rows[:1]})
    assert "smoke run" in cpu and "Target" not in cpu
