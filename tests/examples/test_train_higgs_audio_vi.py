"""The worked example of docs/adapters.md: an adapter around thucth-qt/train-higgs-audio-vi's
script trainer.  It implements the contract (check_adapter), and compare runs on it against
train-higgs-audio and reports what its code does differently.

Needs clones: HIGGS_DIFF_EXAMPLE_TRAINER (github.com/thucth-qt/train-higgs-audio-vi) and, for the
comparison, HIGGS_DIFF_TRAIN_HIGGS_AUDIO (github.com/JimmyMa99/train-higgs-audio).
"""

from __future__ import annotations

import os

import pytest

from harness.adapters.conformance import run_checks

EXAMPLE = os.environ.get("HIGGS_DIFF_EXAMPLE_TRAINER")
REFERENCE = os.environ.get("HIGGS_DIFF_TRAIN_HIGGS_AUDIO")
SPEC = f"examples/train_higgs_audio_vi/stages.py={EXAMPLE}"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not EXAMPLE, reason="set HIGGS_DIFF_EXAMPLE_TRAINER to a clone of "
                                                     "github.com/thucth-qt/train-higgs-audio-vi")]


def test_the_example_adapter_implements_the_contract():
    results = {c.name: c for c in run_checks(SPEC)}
    contract = [n for n in results if n != "conventions"]
    assert all(results[n].passed for n in contract), {n: results[n].reason for n in contract if not results[n].passed}


@pytest.mark.skipif(not REFERENCE, reason="set HIGGS_DIFF_TRAIN_HIGGS_AUDIO to a clone of "
                                          "github.com/JimmyMa99/train-higgs-audio")
def test_compare_runs_and_finds_its_loss_differs():
    from harness.api import compare
    report = compare(f"train-higgs-audio={REFERENCE}", SPEC, stage="all", ddp_world_size=0)
    assert all(st.status != "error" for st in report.stages), [(st.stage, st.status) for st in report.stages]
    loss = next(st for st in report.stages if st.stage == "loss")
    # its wrapper drops the text labels and its audio CE has no shift: the loss cannot agree
    assert loss.status == "diverged" and report.verdict == "diverged"
