"""compare-traces: the first step, stage and field where two runs of one program part, with the code
location; degenerate trace contents are findings, never a harness traceback (hypothesis)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.trace import cli
from harness.trace.compare import compare_traces
from harness.trace.load import StepTrace, Trace


def run_cli(a: Path, b: Path, out: Path, *extra: str) -> tuple[int, dict]:
    code = cli.main([str(a), str(b), "--out", str(out), "--quiet", *extra])
    return code, json.loads((out / "report.json").read_text())


def test_two_clean_runs_agree(toy_trace, tmp_path):
    code, report = run_cli(toy_trace(), toy_trace("--seed", "0"), tmp_path)
    assert code == 0 and report["verdict"] == "pass" and report["first_divergence"] is None


@pytest.mark.parametrize("bug, stage, field_part, words", [
    ("label-shift", "loss", ".target", "targets"),
    ("unscored-audio", "loss", "symptom.unscored_head", "no cross-entropy scores the audio logits"),
    ("ignore-wd", "step", "weight_decay", "weight_decay"),
])
def test_bug_is_found_at_its_stage_with_its_code_location(toy_trace, tmp_path, bug, stage, field_part, words):
    extra = ("--weight-decay", "0.05")
    code, report = run_cli(toy_trace(*extra), toy_trace(*extra, "--bug", bug), tmp_path)
    first = report["first_divergence"]
    assert code == 1 and first["stage"] == stage, first
    assert field_part in first["field"]
    assert words in first["cause"]["mechanism"]
    assert "toy_train.py:" in first["cause"]["mechanism"]          # the line in run B that made the diverging tensor


def test_a_precision_change_is_named_in_the_first_divergence(toy_trace, tmp_path):
    """B's forward under bf16 autocast: the first divergence's cause opens with the tensor held at
    another precision, whatever field diverges first."""
    code, report = run_cli(toy_trace(), toy_trace("--autocast"), tmp_path)
    mech = report["first_divergence"]["cause"]["mechanism"]
    assert code == 1
    assert mech.startswith("B computes at another precision:") and "bf16 (bfloat16) in B, fp32 (float32) in A" in mech
    code, report = run_cli(toy_trace(), toy_trace("--bug", "label-shift"), tmp_path / "same-dtype")
    assert "another precision" not in report["first_divergence"]["cause"]["mechanism"]


def test_a_cross_entropy_on_detached_logits_is_named(toy_trace, tmp_path):
    code, report = run_cli(toy_trace(), toy_trace("--bug", "detached-text"), tmp_path)
    first = report["first_divergence"]
    assert code == 1 and first["field"] == "step1.cross_entropy_calls", first
    assert "B computes its text cross-entropy on logits that do not require a gradient" in first["cause"]["mechanism"]


def test_the_same_samples_in_another_order_are_named(toy_trace, tmp_path):
    code, report = run_cli(toy_trace(), toy_trace("--bug", "micro-order-reversed"), tmp_path)
    first = report["first_divergence"]
    assert code == 1 and first["field"] == "step1.mb0.input_ids", first
    assert first["cause"]["mechanism"].startswith(
        "B feeds samples A's run also feeds, in another order (2 of 2 rows of this micro-batch are A's at step 1 "
        "micro-batch 1)")


def test_a_logged_value_of_one_micro_batch_is_named(toy_trace, tmp_path):
    code, report = run_cli(toy_trace(), toy_trace("--bug", "log-last-micro-text"), tmp_path)
    first = report["first_divergence"]
    assert code == 1 and first["stage"] == "log" and first["field"] == "step1.logged.tensorboard:train/text"
    assert "B's value is the 32-class cross-entropy of micro-batch 1 alone (of 2)" in first["cause"]["mechanism"]


def test_summed_logging_is_a_log_divergence_with_symptom(toy_trace, tmp_path):
    code, report = run_cli(toy_trace(), toy_trace("--bug", "summed-log"), tmp_path)
    assert code == 1
    assert report["first_divergence"]["stage"] == "log"
    logged = [f for st in report["stages"] if st["stage"] == "log" for f in st["fields"]
              if f["field"].startswith("step2.logged.") and f.get("cause")]
    assert logged and "is the sum of A's train/loss over steps 1-2: an accumulator that is never reset" in \
        logged[0]["cause"]["mechanism"]
    assert any(s["kind"] == "logged_loss" and s["run"] == "B" for s in report["symptoms"])
    assert report["summary"].startswith("diverged")


def test_not_a_trace_is_bad_usage(tmp_path, toy_trace):
    assert cli.main([str(tmp_path), str(toy_trace()), "--out", str(tmp_path / "r"), "--quiet"]) == 2


def test_different_programs_compare_structure_only(toy_trace, tmp_path):
    a = Trace.load(toy_trace())
    b = Trace.load(toy_trace())
    b.index = dict(b.index, command=["python", "other_train.py"])
    report = compare_traces(a, b)
    assert report.verdict == "pass"
    assert "different programs" in report.config["note"]


# ------------------------------------------------------------------------------ degenerate contents
_desc = st.one_of(
    st.none(), st.just({}), st.just({"key": "missing", "stored": True, "shape": [2, 3], "dtype": "float32"}),
    st.fixed_dictionaries({"key": st.just("x"), "stored": st.booleans(),
                           "shape": st.lists(st.integers(0, 3), max_size=3), "dtype": st.just("float32")},
                          optional={"sum": st.floats(allow_nan=True, allow_infinity=True),
                                    "abs_sum": st.floats(allow_nan=True), "nonfinite": st.integers(0, 5)}),
    st.text(max_size=3), st.integers())
_call = st.fixed_dictionaries({}, optional={
    "inputs": st.one_of(st.none(), st.dictionaries(st.sampled_from(["input_ids", "label_ids", "audio_out_ids"]), _desc)),
    "outputs": st.one_of(st.none(), st.dictionaries(st.sampled_from(["logits", "audio_logits", "loss"]), _desc)),
    "call_site": st.one_of(st.none(), st.just([]), st.just([{"file": "f.py", "line": 1, "function": "g"}]))})
_ce = st.fixed_dictionaries({}, optional={
    "classes": st.one_of(st.none(), st.integers(0, 40)), "requires_grad": st.booleans(), "result": _desc,
    "target": _desc, "per_position": _desc, "supervised": st.integers(0, 3), "reduction": st.sampled_from(["mean", None]),
    "call_site": st.none()})
_opt = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "grads": st.dictionaries(st.sampled_from(["a.weight", "module.a.weight", "b.lora_A.default.weight"]), _desc),
    "params_after": st.dictionaries(st.sampled_from(["a.weight", "c"]), _desc),
    "param_groups": st.lists(st.dictionaries(st.sampled_from(["lr", "weight_decay", "betas", "initial_lr"]),
                                             st.one_of(st.floats(allow_nan=True), st.none(), st.text(max_size=2))),
                             max_size=2),
    "state": st.dictionaries(st.just("a.weight"), st.dictionaries(st.just("step"), _desc)),
    "seq": st.integers(0, 9)}))
_step = st.fixed_dictionaries({"complete": st.booleans()}, optional={
    "model_calls": st.lists(_call, max_size=2), "cross_entropy": st.lists(_ce, max_size=3),
    "backward": st.lists(st.fixed_dictionaries({}, optional={"value": _desc, "requires_grad": st.booleans(),
                                                               "error": st.one_of(st.none(), st.text(max_size=5))}),
                         max_size=2),
    "optimizer": _opt, "logged": st.lists(st.fixed_dictionaries({"values": st.dictionaries(
        st.sampled_from(["loss", "train/loss", "x"]), st.floats(allow_nan=True))}), max_size=2),
    "scheduler": st.lists(st.fixed_dictionaries({"seq": st.integers(0, 9), "last_lr": st.just([0.1])}), max_size=2),
    "clip_grad_norm": st.lists(st.fixed_dictionaries({"max_norm": st.floats(0, 2)}), max_size=1)})


def _trace(path: Path, metas: list[dict], ranks: int, command: list[str]) -> Trace:
    steps = {r: [StepTrace(i + 1, r, dict(m, step=i + 1), None) for i, m in enumerate(metas)] for r in range(ranks)}
    return Trace(path, {"command": command, "exit_code": 0}, steps, {r: [] for r in range(ranks)})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=st.lists(_step, max_size=3), b=st.lists(_step, max_size=3), ranks=st.integers(1, 2), same=st.booleans())
def test_degenerate_traces_are_findings_never_a_traceback(tmp_path_factory, a, b, ranks, same):
    """None labels, empty logits, missing records, NaN losses, unknown keys: compare_traces returns a report
    (the 'comparison' field of the run stage records anything it could not read) and never raises."""
    cmd = ["python", "-m", "train"]
    ta = _trace(Path("A"), a, ranks, cmd)
    tb = _trace(Path("B"), b, ranks, cmd if same else ["python", "x.py"])
    report = compare_traces(ta, tb)
    assert report.verdict in ("pass", "diverged", "error")
    crashed = [f for s in report.stages for f in s.fields if f.field == "comparison"]
    assert not crashed, crashed[0].note
    report.to_json()
    report.to_markdown()


# ------------------------------------------------------------------ speed paths: bf16 tolerance and drift
def test_bf16_rounding_path_agrees_at_bf16_and_not_exactly(toy_trace, tmp_path):
    """A speed path whose logits come out rounded to bf16 is a divergence for an exact comparison and
    agrees at --precision bf16; a bug on a path only a later batch takes is still found at that step."""
    plain, fast = toy_trace(steps=4), toy_trace("--bf16-head", steps=4)
    assert run_cli(plain, fast, tmp_path / "exact")[0] == 1
    code, report = run_cli(plain, fast, tmp_path / "bf16", "--precision", "bf16")
    assert code == 0, report["summary"]
    code, report = run_cli(plain, toy_trace("--bf16-head", "--bug", "late-loss-scale", steps=4), tmp_path / "late",
                           "--precision", "bf16")
    assert code == 1 and report["first_divergence"]["field"] == "step2.backward0.loss"


def _collector(fields: list[tuple[str, str, str]]):
    from harness.engine.diff import FieldDiff
    from harness.trace.compare import Tolerance, _Collector

    c = _Collector(None, None, Tolerance.for_precision("bf16"))   # type: ignore[arg-type]
    for stage, field, status in fields:
        c.fields[stage].append(FieldDiff(stage, field, status))
    return c


def test_adamw_update_drift_is_expected_only_where_everything_else_agrees():
    from harness.trace.compare import _mark_drift

    # first step: gradients agree, one parameter after AdamW's update differs -> drift
    c = _collector([("backward", "step1.grad.w", "equal"), ("step", "step1.param.w", "mismatch"),
                    ("loss", "step1.backward0.loss", "equal")])
    _mark_drift(c, 1, 1)
    assert not c.unexpected() and "AdamW" in c.fields["step"][0].expected_reason
    # first step: a gradient differs -> nothing is drift
    c = _collector([("backward", "step1.grad.w", "mismatch"), ("step", "step1.param.w", "mismatch")])
    _mark_drift(c, 1, 1)
    assert all(f.unexpected for st in c.fields.values() for f in st)
    # later step: gradients and outputs may drift while the loss, logs and settings agree ...
    c = _collector([("forward", "step2.mb0.out.logits", "mismatch"), ("backward", "step2.grad.w", "mismatch"),
                    ("loss", "step2.backward0.loss", "equal"), ("log", "step2.logged.loss", "equal"),
                    ("step", "step2.group0.lr", "equal")])
    _mark_drift(c, 2, 1)
    assert not c.unexpected()
    # ... but not when the loss handed to backward() or a setting differs
    for bad in (("loss", "step2.backward0.loss"), ("step", "step2.group0.lr"), ("log", "step2.logged.loss")):
        c = _collector([("backward", "step2.grad.w", "mismatch"), (*bad, "mismatch")])
        _mark_drift(c, 2, 1)
        assert c.fields["backward"][0].unexpected, bad
    # a shape difference is never drift
    c = _collector([("forward", "step2.mb0.out.logits", "shape")])
    _mark_drift(c, 2, 1)
    assert c.unexpected()


def test_lower_precision_relation_needs_every_element_moved_by_rounding_sized_amounts():
    from harness.trace.compare import lower_precision

    a = torch.randn(256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rel = lower_precision(a, a.to(torch.bfloat16).double() * (1 + 1e-4))   # bf16 rounding, nudged everywhere
    assert rel is not None and rel.kind == "lower_precision" and "bf16" in rel.words
    assert lower_precision(a, a * 1.5) is None                               # a change of what is computed
    b = a.clone()
    b[:3] += 1e-3
    assert lower_precision(a, b) is None                                     # a few elements moved
    assert lower_precision(a, a) is None


def test_two_runs_that_fail_the_same_way_are_an_error_not_a_pass(toy_trace, tmp_path):
    """Both commands raised in step 2: what agreed before says nothing about the training run; the verdict
    is "error" (exit 1, as for any verdict but pass), naming both failures."""
    crashed = toy_trace("--bug", "crash")
    code, report = run_cli(crashed, crashed, tmp_path / "cmp")
    assert code == 1 and report["verdict"] == "error"
    run = next(s for s in report["stages"] if s["stage"] == "run")
    assert run["error"].startswith("both runs failed") and "simulated crash" in run["error"]


def test_a_failure_in_one_run_only_is_still_a_divergence(toy_trace, tmp_path):
    code, report = run_cli(toy_trace(), toy_trace("--bug", "crash"), tmp_path / "cmp")
    assert code == 1 and report["verdict"] == "diverged"


def test_layers_localise_a_divergence_to_the_layer_and_its_forward(toy_trace, tmp_path):
    """--layers: the first divergence is the first layer or branch whose output differs (in the first micro-batch
    of step 1, before the model's output shows it), located at its forward and, for a dual-FFN branch, at the
    layer forward that feeds it."""
    code, report = run_cli(toy_trace(layers=True), toy_trace("--bug", "layer-drift", layers=True), tmp_path / "cmp")
    fd = report["first_divergence"]
    assert code == 1 and fd["stage"] == "forward" and fd["field"] == "step1.mb0.layer.layer.mlp", fd
    mech = fd["cause"]["mechanism"]
    assert mech.startswith("dual-FFN branch layer.mlp outputs differ")
    assert "toy_train.py" in mech and "in forward" in mech and "layer forward that feeds it its rows" in mech


# ------------------------------------------------------------------ random draws
def test_a_path_that_moves_the_random_draws_is_named_in_the_cause(toy_trace, tmp_path):
    """With dropout on, a run that draws one extra random seed per step (as torch.compile's kernels do)
    computes the same arithmetic on other dropout masks: the divergence stays one, and its cause says
    the random draws parted, at which step and in which generator.  Without dropout the same extra
    draw changes no value (pass), and a divergence whose runs drew alike gets no such words."""
    plain, drawn = toy_trace("--dropout", "0.3", steps=2), toy_trace("--dropout", "0.3", "--own-seed-draw", steps=2)
    code, report = run_cli(plain, drawn, tmp_path / "dropout")
    assert code == 1
    assert "drew different random numbers by step 1 (rank 0: the state of cpu" in \
        report["first_divergence"]["cause"]["mechanism"]
    assert "host-side draws" in report["first_divergence"]["cause"]["mechanism"]
    assert run_cli(toy_trace(steps=2), toy_trace("--own-seed-draw", steps=2), tmp_path / "no-dropout")[0] == 0
    code, report = run_cli(toy_trace(steps=2), toy_trace("--bug", "label-shift", steps=2), tmp_path / "bug")
    assert code == 1 and "random numbers" not in report["first_divergence"]["cause"]["mechanism"]
    # a data-order fault whose run also draws otherwise: the data is the cause, no words on randomness
    code, report = run_cli(plain, toy_trace("--dropout", "0.3", "--own-seed-draw", "--bug", "micro-order-reversed",
                                            steps=2), tmp_path / "order")
    assert code == 1 and report["first_divergence"]["stage"] in ("dataset", "collator")
    assert "random numbers" not in json.dumps(report["first_divergence"])


def test_random_streams_part_reads_the_fingerprints_of_each_step():
    from harness.trace.compare import random_streams_part

    class _St:
        def __init__(self, step, rng):
            self.step, self.optimizer = step, ({"rng": rng} if rng is not None else None)

    class _Tr:
        ranks = [0]

        def __init__(self, *steps):
            self.steps = list(steps)

        def rank_steps(self, rank):
            return self.steps

    a = _Tr(_St(1, {"cpu": "x", "cuda:0": "0:4"}), _St(2, {"cpu": "y", "cuda:0": "0:8"}))
    b = _Tr(_St(1, {"cpu": "x", "cuda:0": "0:4"}), _St(2, {"cpu": "y", "cuda:0": "0:12"}))
    assert random_streams_part(a, b, upto=2) == (2, 0, ["cuda:0"])
    assert random_streams_part(a, b, upto=1) is None                  # apart only after the divergence
    assert random_streams_part(a, _Tr(_St(1, None), _St(2, None)), upto=2) is None   # an older trace
    c = _Tr(_St(1, {"cpu": "x", "cuda:0": "0:4"}), _St(2, {"cpu": "y", "cuda:0": "unreadable"}))
    assert random_streams_part(a, c, upto=2) is None                  # an unreadable entry proves nothing
