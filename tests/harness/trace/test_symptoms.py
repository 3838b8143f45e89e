"""What a user would see in training, read off one trace of a buggy run."""

from __future__ import annotations

import pytest

from harness.trace.load import Trace
from harness.trace.symptoms import symptoms


def kinds(path) -> dict[str, str]:
    return {s.kind: s.text for s in symptoms(Trace.load(path))}


def test_clean_run_has_no_symptom(toy_trace):
    assert kinds(toy_trace()) == {}


@pytest.mark.parametrize("bug, kind, words", [
    ("unscored-audio", "unscored_head", "audio loss 0.0"),
    ("detached", "no_gradient", "receive no gradient"),
    ("summed-log", "logged_loss", "logged train/loss"),
])
def test_bug_shows_as_its_symptom(toy_trace, bug, kind, words):
    found = kinds(toy_trace("--bug", bug))
    assert kind in found, found
    assert words in found[kind]


def test_detached_loss_is_named(toy_trace):
    found = kinds(toy_trace("--bug", "detached"))
    assert "never_moves" in found or "no_gradient" in found


def test_ignored_weight_decay_is_a_hyperparameter_symptom(toy_trace):
    found = kinds(toy_trace("--bug", "ignore-wd", "--weight-decay", "0.05"))
    assert "hyperparameter" in found and "weight decay" in found["hyperparameter"]
    assert "hyperparameter" not in kinds(toy_trace("--weight-decay", "0.05"))


def test_asked_learning_rate_reaches_the_optimizer(toy_trace):
    assert "hyperparameter" not in kinds(toy_trace("--lr", "0.003"))


def test_failed_run_is_a_symptom_and_keeps_its_steps(toy_trace):
    trace = Trace.load(toy_trace("--bug", "crash"))
    assert trace.exit_code != 0
    assert [st.complete for st in trace.rank_steps(0)] == [True, False]
    found = kinds(toy_trace("--bug", "crash"))
    assert "stopped during step 2" in found["run_error"] and "simulated crash" in found["run_error"]
