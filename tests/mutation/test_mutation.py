"""The mutation suite stays runnable and its committed table matches the catalogue.

The full run (`python -m tests.mutation.run`, ~10 min on 2 cores) produces reports/mutation/;
CI runs a sample of three mutants of different stages through `python -m harness.compare` in
throw-away copies of the repository.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.mutation.catalog import EQUIVALENT, STAGE_OVERRIDES, STAGES, all_mutants, apply
from tests.mutation.run import REPO, run_one

SAMPLE = ("custom-dataset-labels-include-prompt", "custom-loss-audio-sum-over-codebooks", "custom-step-clip-after-step",
          "custom-backward-zero-grad-per-micro-batch", "custom-config-lora-target-typo")


def test_every_mutant_applies_once_and_names_its_stage():
    mutants = all_mutants()
    assert len(mutants) >= 30
    for m in mutants:
        apply((REPO / m["file"]).read_text(), m)            # raises unless the snippet occurs exactly once
        assert m["stage"] in STAGES and m["mechanism"] and m["keywords"]
    by_stage = {s: sum(1 for m in mutants if m["stage"] == s) for s in STAGES if s != "config"}
    assert all(n >= 3 for n in by_stage.values()), by_stage
    assert {m["author"] for m in mutants} == {"helper", "core", "fresh"}
    assert set(STAGE_OVERRIDES) | set(EQUIVALENT) <= {m["id"] for m in mutants}


def test_committed_table_covers_the_catalogue_and_meets_the_targets():
    results = REPO / "reports" / "mutation" / "results.json"
    data = json.loads(results.read_text())
    assert {r["id"] for r in data["rows"]} == {m["id"] for m in all_mutants()}
    assert data["scores"]["detection_score"] >= 0.9
    assert data["scores"]["explanation_score"] >= 0.8


@pytest.mark.slow
@pytest.mark.parametrize("mutant_id", SAMPLE)
def test_sampled_mutant_is_caught_at_its_stage_and_explained(mutant_id):
    mutant = next(m for m in all_mutants() if m["id"] == mutant_id)
    row = run_one(mutant, timeout=600)
    assert row["exit"] == 1 and row["at_stage"], row
    assert row["cause_right"], row["cause"]
