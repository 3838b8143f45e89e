"""The recorder, injected into an unmodified training script, records what its steps really do."""

from __future__ import annotations

import json

import torch

from harness.trace.load import Trace


def test_every_step_is_recorded_with_its_pieces(toy_trace):
    trace = Trace.load(toy_trace())
    assert trace.exit_code == 0 and trace.ranks == [0]
    steps = trace.rank_steps(0)
    assert [s.step for s in steps] == [1, 2, 3] and all(s.complete for s in steps)
    st = steps[0]
    # two micro-batches (grad accumulation 2): the batch reaching the model, and its outputs
    assert len(st.model_calls) == 2
    call = st.model_calls[0]
    assert call["module_class"] == "TwoHead"
    assert set(call["inputs"]) == {"input_ids", "audio_out_ids"}
    assert st.tensor(call["inputs"]["input_ids"]).shape == (2, 12)
    assert call["outputs"]["audio_logits"]["shape"] == [2, 4, 10]
    assert len(call["row_hashes"]["input_ids"]) == 2
    # cross-entropy: text (32 classes) and audio (10), with targets, per-position CE and the calling line
    ce = st.ce_calls
    assert [c["classes"] for c in ce] == [32, 10, 32, 10]
    assert ce[0]["call_site"][0]["file"].endswith("toy_train.py")
    per = st.tensor(ce[1]["per_position"])
    res = st.tensor(ce[1]["result"])
    torch.testing.assert_close(per.mean(), res)
    # the back-propagated loss has a graph; gradients, hyperparameters, parameters after the step
    assert [b["requires_grad"] for b in st.backward] == [True, True]
    grads = st.grads()
    assert set(grads) == {"embed.weight", "body.weight", "body.bias", "text_head.weight", "text_head.bias",
                          "audio_head.weight", "audio_head.bias"}
    assert st.param_groups()[0]["lr"] == 0.01
    before = st.tensors()["param_before.body.weight"]
    after = st.tensor(st.params_after()["body.weight"])
    assert not torch.equal(before, after)
    assert st.meta["clip_grad_norm"][0]["max_norm"] == 1.0
    # the scheduler stepped after the optimizer, inside the same step record; the logged loss
    assert st.meta["scheduler"][-1]["seq"] > st.optimizer["seq"]
    assert "tensorboard:train/loss" in st.logged()


def test_index_and_log_are_written(toy_trace):
    path = toy_trace()
    index = json.loads((path / "trace.json").read_text())
    assert index["exit_code"] == 0 and index["ranks"] == {"rank0": [1, 2, 3]}
    assert (path / "command.log").is_file()


def test_only_the_requested_steps_are_recorded(toy_trace):
    trace = Trace.load(toy_trace("--max-steps", "4", steps=2))
    assert [s.step for s in trace.rank_steps(0)] == [1, 2]


def test_large_tensors_are_kept_as_summaries(tmp_path):
    from harness.trace.run import run_traced
    from tests.harness.trace.conftest import toy_command

    out = tmp_path / "t"
    assert run_traced(toy_command("--output-dir", str(tmp_path / "run")), out, steps=1, max_numel=0, echo=False) == 0
    st = Trace.load(out).rank_steps(0)[0]
    desc = st.grads()["body.weight"]
    assert desc["stored"] is False and desc["shape"] == [16, 16]
    assert desc["abs_sum"] > 0 and desc["nonfinite"] == 0
    # the recorder books its own cost in every step: host time in its hooks and the summaries' read-back
    cost = st.meta["recorder"]
    assert cost["host_s"] > 0 and cost["readback_s"] >= 0


def test_summaries_follow_a_tensor_whose_shape_or_dtype_changes_under_the_same_key(tmp_path):
    """keep_many caches each key's metadata across steps; a new shape or dtype under an old key is re-read."""
    from harness.trace.recorder import Recorder

    rec = Recorder(str(tmp_path), steps=2, layers=False, max_numel=0)
    first = rec.keep_many(["grad.w"], [torch.ones(2, 3)])
    second = rec.keep_many(["grad.w"], [-torch.ones(4)])
    third = rec.keep_many(["grad.w"], [torch.full((4,), 2.0, dtype=torch.bfloat16)])   # cast mid-run
    rec._fill_summaries()
    assert first[0]["shape"] == [2, 3] and first[0]["abs_sum"] == 6.0 and first[0]["max_abs"] == 1.0
    assert second[0]["shape"] == [4] and second[0]["abs_sum"] == 4.0
    assert third[0]["dtype"] == "bfloat16" and third[0]["abs_sum"] == 8.0


def test_a_window_later_in_the_run_is_recorded_as_those_steps_of_the_whole_run(toy_trace, tmp_path):
    """--start-step: steps before the window run untraced; the window's steps equal the same steps of a
    trace of the whole run (same batches, weights, gradients, updates)."""
    from harness.trace.compare import compare_traces
    from harness.trace.run import run_traced
    from tests.harness.trace.conftest import toy_command

    whole = Trace.load(toy_trace("--max-steps", "4", steps=4))
    out = tmp_path / "window"
    assert run_traced(toy_command("--max-steps", "4", "--output-dir", str(tmp_path / "run")), out, steps=2,
                      start_step=3, echo=False) == 0
    window = Trace.load(out)
    assert [s.step for s in window.rank_steps(0)] == [3, 4]
    assert json.loads((out / "trace.json").read_text())["start_step"] == 3
    first = window.rank_steps(0)[0]
    assert any(k.startswith("param_before.") for k in first.tensors())     # weights entering the window
    report = compare_traces(whole, window, common_steps_only=True)
    assert report.verdict == "pass", report.first_divergence


def test_rng_fingerprint_follows_the_generator_and_never_raises(monkeypatch):
    from harness.trace.recorder import UNREADABLE, rng_fingerprint

    torch.manual_seed(5)
    first = rng_fingerprint()
    torch.manual_seed(5)
    assert rng_fingerprint() == first                      # the same state, the same fingerprint
    torch.rand(3)
    assert rng_fingerprint()["cpu"] != first["cpu"]        # a draw moves it

    def broken():
        raise RuntimeError("state not readable now")
    monkeypatch.setattr(torch, "get_rng_state", broken)
    assert rng_fingerprint()["cpu"] == UNREADABLE
