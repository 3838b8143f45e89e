"""Fault (a) `reference-audio-as-label`: the logged audio loss collapses (issue 4's must-show).

The fault makes the label the clip the model was just shown as its voice prompt, so a model that
learns to look the prompt up drives the audio loss towards 0.  To see that on a random-init model,
the data must not let the *correct* run fall as well: the copy-probe set (speech windows in a random
order, one transcript for all, higgs_common.assets.copy_probe) leaves copying as the only way down.
The tiny model needs every weight trainable to learn the lookup (LoRA on frozen random embeddings
and heads does not), hence --full-finetune, and it runs on the `probe` assets (the tiny backbone
with a 4 x 32 codec, `python -m higgs_common.assets.build --size probe`): with the embedded 8 x 1024
codec the hidden-64 model has not begun to copy after 400 steps (audio 6.93 -> 4.33 with the fault,
4.34 without, measured), so the fault would not show in a test's time.

Measured on 2 CPU cores (400 steps, batch 8, lr 3e-3): audio loss 3.55 -> 0.15 with the fault (0.15-0.17 over seeds 0-2),
3.54 -> 2.46 without (what is left is the codes' entropy); both runs side by side take ~35 s once the
probe clips are encoded (the first encoding of the 512 clips takes a few minutes, cached after).
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
def probe_assets() -> tuple[str, ...]:
    """The probe checkpoint and codec, the copy-probe clips encoded once (the two runs only train)."""
    from higgs_common.assets import ensure_default_assets
    from higgs_common.context import build_context

    assets = ensure_default_assets("probe")
    ctx = build_context(assets.model, assets.audio_tokenizer, device="cpu")
    for r in load_manifest(ensure_copy_probe()):
        ctx.code_cache.codes(r.ref_audio, sample_id=r.id, field="ref_audio")
    return ("--model-path", str(assets.model), "--audio-tokenizer-path", str(assets.audio_tokenizer))


def test_reference_as_label_collapses_the_audio_loss_where_correct_training_cannot(
        tmp_path: Path, probe_assets: tuple[str, ...]) -> None:
    args = (*probe_assets, *ARGS)
    with ThreadPoolExecutor(2) as pool:
        faulty = pool.submit(run_train, tmp_path / "fault", *args, "--fault", "reference-audio-as-label",
                             nproc=1, timeout=900)
        correct = pool.submit(run_train, tmp_path / "correct", *args, nproc=1, timeout=900)
        faulty, correct = faulty.result(), correct.result()
    assert [r["step"] for r in faulty] == [r["step"] for r in correct] == list(range(1, STEPS + 1))
    for r in faulty + correct:
        assert math.isfinite(r["audio_loss"]) and r["audio_tokens"] > 0
    start = (faulty[0]["audio_loss"] + correct[0]["audio_loss"]) / 2
    assert start > 3.3                                       # ~ln(32 + 2): chance on the probe codec
    fault_end, correct_end = _tail_mean(faulty, "audio_loss"), _tail_mean(correct, "audio_loss")
    assert fault_end < 0.3, fault_end                        # collapsed: the label was in the prompt
    assert correct_end > 1.8, correct_end                    # the real task stays hard
    assert correct_end > 6 * fault_end
    # every codebook collapses, not one (the prompt holds all of them)
    assert max(sum(r["per_codebook"][c] for r in faulty[-25:]) / 25 for c in range(4)) < 0.4
