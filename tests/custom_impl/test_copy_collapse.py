"""Fault (a) `reference-audio-as-label`: the logged audio loss collapses (issue 4's must-show).

The fault makes the label the clip the model was just shown as its voice prompt, so a model that
learns to look the prompt up drives the audio loss towards 0.  To see that on a random-init model,
the data must not let the *correct* run fall as well: the copy-probe set (speech windows in a random
order, one transcript for all, higgs_common.assets.copy_probe) leaves copying as the only way down.
The tiny model needs every weight trainable to learn the lookup (LoRA on frozen random embeddings
and heads does not), hence --full-finetune.

Measured on 2 CPU cores (400 steps, batch 8, lr 3e-3): audio loss 3.54 -> 0.15 with the fault (0.15-0.17 over seeds 0-2),
3.54 -> 2.46 without (what is left is the codes' entropy); both runs side by side take ~35 s.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from higgs_common.assets.copy_probe import ensure_copy_probe
from higgs_common.manifest import load_manifest
from tests.custom_impl.train_runner import run_train

pytestmark = pytest.mark.slow

STEPS = 400
ARGS = ("--data", "copy-probe", "--full-finetune", "--batch-size", "8", "--grad-accum", "1",
        "--lr", "3e-3", "--max-steps", str(STEPS))


def _tail_mean(recs: list[dict], key: str, n: int = 25) -> float:
    return sum(r[key] for r in recs[-n:]) / n


@pytest.fixture(scope="module")
def probe_codes_cached(ctx) -> Path:
    """Build the probe and encode its clips once, so the two runs below only train."""
    manifest = ensure_copy_probe()
    for r in load_manifest(manifest):
        ctx.code_cache.codes(r.ref_audio, sample_id=r.id, field="ref_audio")
    return manifest


def test_reference_as_label_collapses_the_audio_loss_where_correct_training_cannot(
        tmp_path: Path, probe_codes_cached: Path) -> None:
    with ThreadPoolExecutor(2) as pool:
        faulty = pool.submit(run_train, tmp_path / "fault", *ARGS, "--fault", "reference-audio-as-label",
                             nproc=1, timeout=900)
        correct = pool.submit(run_train, tmp_path / "correct", *ARGS, nproc=1, timeout=900)
        faulty, correct = faulty.result(), correct.result()
    assert [r["step"] for r in faulty] == [r["step"] for r in correct] == list(range(1, STEPS + 1))
    for r in faulty + correct:
        assert math.isfinite(r["audio_loss"]) and r["audio_tokens"] > 0
    start = (faulty[0]["audio_loss"] + correct[0]["audio_loss"]) / 2
    assert start > 3.3                                       # ~ln(32 + 2): chance on the tiny codec
    fault_end, correct_end = _tail_mean(faulty, "audio_loss"), _tail_mean(correct, "audio_loss")
    assert fault_end < 0.3, fault_end                        # collapsed: the label was in the prompt
    assert correct_end > 1.8, correct_end                    # the real task stays hard
    assert correct_end > 6 * fault_end
    # every codebook collapses, not one (the prompt holds all of them)
    assert max(sum(r["per_codebook"][c] for r in faulty[-25:]) / 25 for c in range(4)) < 0.4
