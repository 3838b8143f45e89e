"""The trace mutation catalogue is well formed (no mutant is run here: `python -m tests.mutation.run_trace`)."""

from __future__ import annotations

import collections

import pytest

from tests.mutation.catalog import apply, all_mutants
from tests.mutation.mutants_trace import MUTANTS
from tests.mutation.run import REPO
from tests.mutation.run_trace import interleaved, scores

PATHS = ("cli", "speed", "precision", "settings")
TOOLS = ("compare-traces", "check-resume", "check-flags", "compare")
STAGES = ("dataset", "collator", "forward", "loss", "backward", "step", "log", "run")


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m["id"] for m in MUTANTS])
def test_mutant_applies_exactly_once_and_is_complete(mutant):
    text = (REPO / mutant["file"]).read_text()
    mutated = apply(text, mutant)                       # raises unless `find` occurs exactly once
    assert mutated != text
    assert mutant["path"] in PATHS and mutant["tool"] in TOOLS
    assert mutant["stage"] in STAGES and mutant["mechanism"] and mutant["keywords"] and mutant["note"]
    assert all(k == k.lower() for k in mutant["keywords"])
    if mutant["tool"] == "check-flags":
        # the option that must be reported ignored is one of those exercised
        assert mutant["expect_stage"] in mutant["only"].split(",")
        assert f"\"--{mutant['expect_stage']}\"" in _help(mutant["command"])
    else:
        assert mutant["expect_stage"] in STAGES
    if mutant["tool"] != "compare":
        assert mutant["command"][:1] == ("-m",)


def _help(command: tuple[str, ...]) -> str:
    """The CLI module's source and the shared option declarations it uses: every option it parses is
    spelled there."""
    module = command[1]
    return (REPO / (module.replace(".", "/") + ".py")).read_text() + (REPO / "higgs_common" / "train_cli.py").read_text()


def test_ids_unique_and_distinct_from_the_stage_suite():
    ids = [m["id"] for m in MUTANTS]
    assert len(ids) == len(set(ids))
    assert not set(ids) & {m["id"] for m in all_mutants()}


def test_every_code_path_has_at_least_two_cpu_mutants():
    by_path = collections.Counter(m["path"] for m in MUTANTS if not m.get("gpu"))
    assert all(by_path[p] >= 2 for p in PATHS), by_path
    assert 20 <= len(MUTANTS) <= 34


def test_interleaving_keeps_every_mutant_once_and_starts_with_each_path():
    order = interleaved(list(MUTANTS))
    assert sorted(m["id"] for m in order) == sorted(m["id"] for m in MUTANTS)
    assert {m["path"] for m in order[:len(PATHS)]} == set(PATHS)


def test_scores_leave_gpu_mutants_and_the_control_out():
    rows = [dict(id="a", path="cli", tool="check-flags", gpu=False, at_stage=True, cause_right=False, exit=1),
            dict(id="b", path="speed", tool="compare-traces", gpu=True, at_stage=False, cause_right=False, exit=0),
            dict(id="control-clean-vs-clean", path="control", tool="compare-traces", gpu=False, at_stage=False,
                 cause_right=False, exit=0)]
    s = scores(rows)
    assert (s["cpu_mutants"], s["caught_at_stage"], s["explained"], s["control_exit"]) == (1, 1, 0, 0)


def test_judge_needs_the_stage_and_every_keyword():
    from tests.mutation.run_trace import judge

    base = dict(tool="compare-traces", expect_stage="log", keywords=["sum"], at_stage=True)
    assert judge(dict(base, cause="the logged loss is the sum of the micro-batch losses"))["cause_right"]
    assert not judge(dict(base, cause="the logged loss differs"))["cause_right"]
    assert not judge(dict(base, at_stage=False, cause="sum"))["cause_right"]
    flag = dict(tool="check-flags", expect_stage="lora-alpha", keywords=["alpha"], at_stage=True, cause="ignored")
    assert judge(flag)["cause_right"]          # the verdict is about that option: it names it
