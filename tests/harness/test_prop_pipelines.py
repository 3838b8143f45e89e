"""Properties over both pipelines: drawn samples -> each side's dataset/collator/forward/loss.

Every property is a plain `check_*` function (raising AssertionError when it does not hold) so
that `tests/custom_impl/test_prop_faults.py` can run the same body with a fault switched on and
let hypothesis shrink the counterexample.  `faults` only ever reaches the custom side: the
reference defines none (and rejects any).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Sequence

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custom_impl import collator as custom_collator
from custom_impl import stages as C
from harness.semantics import projections as P
from reference_impl import stages as R
from reference_impl.collator import COLLATOR_PARAMS as REFERENCE_COLLATOR_PARAMS
from tests.strategies import DrawnSample, batches, context_with, materialised_context

pytestmark = pytest.mark.property

SIDES = {"reference": R, "custom": C}
IGNORE = -100
MODEL_MAX_SECONDS = 8.0       # model properties: long enough for many frames, cheap on 2 cores
# Property examples that run the model are a few times dearer than collator-only ones.
# Scaled from the active profile (ci 25 -> 12, thorough 500 -> 250).
MODEL_SETTINGS = settings(max_examples=max(5, settings.default.max_examples // 2), deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
COLLATE_SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- helpers

def side_ctx(ctx, side: str, faults: Sequence[str] = ()):
    """The context one side runs under: faults (custom only) and the harness's zero-shot task."""
    if side == "reference":
        return context_with(ctx, faults=(), options={"task_type": ctx.options.get("task_type",
                                                                                   R.HARNESS_TASK_TYPE)})
    return context_with(ctx, faults=faults)


def items_of(side: str, records, ctx, root: Path, faults: Sequence[str] = ()):
    mod = SIDES[side]
    native = mod.write_native(records, root / "native" / side)
    return mod.dataset(native, side_ctx(ctx, side, faults))


def is_delayed(side: str, ctx) -> bool:
    """Whether `side`'s collator applies the delay pattern (read from its own settings)."""
    if side == "reference":
        return bool(REFERENCE_COLLATOR_PARAMS["use_delay_pattern"])
    return bool(custom_collator.collator_kwargs(ctx.model_config)["use_delay_pattern"])


def supervised(side: str, batch, ctx) -> torch.Tensor:
    cfg = ctx.model_config
    return P.supervised_audio_codes(P.batch_field(batch, "label_audio_ids"),
                                    P.batch_field(batch, "audio_out_ids_start"),
                                    delayed=is_delayed(side, ctx), bos=int(cfg.audio_stream_bos_id),
                                    eos=int(cfg.audio_stream_eos_id))


def expected_targets(source: str, samples: Sequence[DrawnSample], task_type: str) -> torch.Tensor:
    """The codes a correct pipeline trains on, in batch order: (C, sum T).

    Custom items: the target clip only.  Reference items: every assistant audio, i.e. in zero-shot
    the reference clip (an earlier assistant turn, trained by design) and then the target.
    """
    parts = []
    for s in samples:
        if source == "reference" and task_type == "zero_shot_voice_cloning":
            parts.append(s.ref_codes)
        parts.append(s.target_codes)
    return torch.cat(parts, dim=1)


@functools.lru_cache(maxsize=8)
def _model(side: str, model_path: str, faults: frozenset[str]):
    from higgs_common.context import build_context

    ctx = context_with(build_context(Path(model_path)), faults=faults)
    torch.manual_seed(0)
    model = SIDES[side].build_model(ctx, SIDES[side].DEFAULT_TRAIN)
    model.eval()   # no dropout: outputs must be a function of the batch
    return model


def model_for(side: str, ctx, faults: Sequence[str] = ()):
    """One model per (side, faults), built once per test session."""
    return _model(side, str(ctx.model_path), frozenset(faults) if side == "custom" else frozenset())


def forward(side: str, items, ctx, faults: Sequence[str] = ()):
    """`side` collates `items` and runs its own forward; returns (batch, outputs)."""
    sctx = side_ctx(ctx, side, faults)
    batch = SIDES[side].collate(items, sctx)
    with torch.no_grad():
        outputs = SIDES[side].forward(model_for(side, ctx, faults), batch, sctx)
    return batch, outputs


def _tensor_fields(obj) -> dict:
    fields = getattr(obj, "__dataclass_fields__", None) or vars(obj)
    return {k: getattr(obj, k, None) for k in fields}


def assert_same(a, b, what: str) -> None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{what}: {type(a)} vs {type(b)}"
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
        assert torch.equal(a, b), f"{what} differs"
    else:
        assert a == b, f"{what}: {a!r} vs {b!r}"


# ----------------------------------------------------------------------------- property bodies

def check_supervised_codes_agree(samples: Sequence[DrawnSample], ctx, *, source: str = "custom",
                                 task_type: str = "zero_shot_voice_cloning", faults: Sequence[str] = ()) -> None:
    """(1) Both collators, fed the same items, supervise the same audio codes (after projection),
    and those are the codes a correct pipeline trains on."""
    with materialised_context(ctx, samples, options={"task_type": task_type}) as (records, c, root):
        items = items_of(source, records, c, root, faults)
        sup = {side: supervised(side, SIDES[side].collate(items, side_ctx(c, side, faults)), c) for side in SIDES}
    want = expected_targets(source, samples, task_type)
    assert sup["custom"].shape == want.shape and torch.equal(sup["custom"], want), (
        f"custom supervises {tuple(sup['custom'].shape)} codes, expected {tuple(want.shape)}")
    assert torch.equal(sup["reference"], sup["custom"]), "reference and custom supervise different audio codes"


def check_reference_never_target(samples: Sequence[DrawnSample], ctx, *, faults: Sequence[str] = ()) -> None:
    """(2) In the custom pipeline the voice prompt is audio-in only, never an audio label."""
    with materialised_context(ctx, samples) as (records, c, root):
        items = items_of("custom", records, c, root, faults)
        batch = C.collate(items, side_ctx(c, "custom", faults))
        sup = supervised("custom", batch, c)
    for item in items:
        assert item.reference_audio_index is not None
        assert item.reference_audio_index not in item.label_audio_indices, f"{item.sample_id}: reference is a label"
        ref = P.audio_codes(item, item.reference_audio_index)
        target = P.audio_codes(item, item.target_audio_index)
        assert not (ref.shape == target.shape and torch.equal(ref, target)), f"{item.sample_id}: target == reference"
    starts = P.batch_field(batch, "audio_out_ids_start")
    assert starts.numel() == len(samples), "one audio-out segment per sample"
    want = torch.cat([s.target_codes for s in samples], dim=1)
    assert sup.shape == want.shape and torch.equal(sup, want), "supervised codes are not exactly the targets"
    audio_in = P.undelayed_segments(P.batch_field(batch, "audio_in_ids"), P.batch_field(batch, "audio_in_ids_start"),
                                    delayed=is_delayed("custom", c))
    assert torch.equal(audio_in[:, _non_special(audio_in, c)], torch.cat([s.ref_codes for s in samples], dim=1)), (
        "audio-in slots do not hold exactly the reference clips")


def _non_special(codes: torch.Tensor, ctx) -> torch.Tensor:
    cfg = ctx.model_config
    return ((codes != cfg.audio_stream_bos_id) & (codes != cfg.audio_stream_eos_id) & (codes != IGNORE)).all(dim=0)


def check_audio_loss_positive(samples: Sequence[DrawnSample], ctx, *, source: str = "custom",
                              faults: Sequence[str] = ()) -> None:
    """(3) A batch with target audio gets a finite audio loss > 0 from both sides' loss."""
    with materialised_context(ctx, samples) as (records, c, root):
        items = items_of(source, records, c, root, faults if source == "custom" else ())
        batch, outputs = forward(source, items, c, faults if source == "custom" else ())
        for side in SIDES:
            loss = SIDES[side].loss(outputs, batch, side_ctx(c, side, faults))
            assert loss.has_target_audio, f"{side}: batch with target audio reported as without"
            audio = float(loss.audio)
            assert math.isfinite(audio) and audio > 0, f"{side}: audio loss {audio} on a batch with target audio"
            assert loss.audio_supervised_tokens > 0, f"{side}: 0 supervised audio tokens"


# --- (4) the oracle: explicit loops, plain PyTorch, no code shared with either pipeline

def _ce(row: torch.Tensor, target: int) -> float:
    """Cross-entropy of one logit row (V,) against one class."""
    row = row.double()
    return float(torch.logsumexp(row, dim=0) - row[target])


def oracle_text(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float | None, int]:
    """Mean over (b, t >= 1) with labels[b, t] != -100 of CE(logits[b, t - 1], labels[b, t])."""
    total, n = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            y = int(labels[b, t])
            if y != IGNORE:
                total += _ce(logits[b, t - 1], y)
                n += 1
    return (total / n if n else None), n


def oracle_audio(audio_logits: torch.Tensor, labels: torch.Tensor,
                 segments: list[tuple[int, int]]) -> tuple[list[float | None], int]:
    """Per codebook: mean over label columns j (j-1 in the same segment) of CE(logits[j-1, c], labels[c, j])."""
    per_cb, count = [], 0
    for c in range(labels.shape[0]):
        total, n = 0.0, 0
        for a, b in segments:
            for j in range(a + 1, b):
                y = int(labels[c, j])
                if y != IGNORE:
                    total += _ce(audio_logits[j - 1, c], y)
                    n += 1
        per_cb.append(total / n if n else None)
        count += n
    return per_cb, count


def oracle_losses(side: str, outputs, batch) -> dict:
    labels = P.batch_field(batch, "label_audio_ids")
    n_frames = labels.shape[1]
    if side == "reference":     # one segment: the shift runs over the whole concatenated stream
        segments = [(0, n_frames)]
    else:                       # the shift stays inside each audio-out segment
        segments = P.segment_bounds(P.batch_field(batch, "audio_out_ids_start"), n_frames)
    text, n_text = oracle_text(outputs.logits, outputs.expanded_labels)
    per_cb, n_audio = oracle_audio(outputs.audio_logits, labels, segments)
    present = [x for x in per_cb if x is not None]
    audio = sum(present) / len(present) if present else 0.0
    if side == "reference":     # a term joins the total only if it is > 0
        total = (text if text and text > 0 else 0.0) + (audio if audio > 0 else 0.0)
        cb = [math.nan if x is None else x for x in per_cb]
    else:
        total = (text or 0.0) + audio
        cb = [0.0 if x is None else x for x in per_cb]
    return {"text": text or 0.0, "audio": audio, "total": total, "per_codebook": cb,
            "text_supervised_tokens": n_text, "audio_supervised_tokens": n_audio}


def check_loss_matches_oracle(samples: Sequence[DrawnSample], ctx, *, source: str = "custom", noise_seed: int = 0,
                              faults: Sequence[str] = ()) -> None:
    """(4) Each side's loss equals the oracle of its documented reduction (on noised logits)."""
    with materialised_context(ctx, samples) as (records, c, root):
        items = items_of(source, records, c, root, faults if source == "custom" else ())
        batch, outputs = forward(source, items, c, faults if source == "custom" else ())
        g = torch.Generator().manual_seed(noise_seed)
        outputs.logits = outputs.logits + torch.randn(outputs.logits.shape, generator=g)
        outputs.audio_logits = outputs.audio_logits + torch.randn(outputs.audio_logits.shape, generator=g)
        for side in SIDES:
            got = SIDES[side].loss(outputs, batch, side_ctx(c, side, faults))
            want = oracle_losses(side, outputs, batch)
            assert got.text_supervised_tokens == want["text_supervised_tokens"], f"{side}: text token count"
            assert got.audio_supervised_tokens == want["audio_supervised_tokens"], f"{side}: audio token count"
            for key in ("text", "audio", "total"):
                value = float(getattr(got, key).detach())
                assert math.isclose(value, want[key], rel_tol=1e-4, abs_tol=1e-5), (
                    f"{side} {key} loss {value} != oracle {want[key]}")
            torch.testing.assert_close(got.per_codebook.detach().double().cpu(),
                                       torch.tensor(want["per_codebook"], dtype=torch.float64),
                                       rtol=1e-4, atol=1e-5, equal_nan=True, msg=lambda m: f"{side} per_codebook: {m}")


def check_collate_pure(samples: Sequence[DrawnSample], ctx, *, source: str = "custom", collator: str = "custom",
                       faults: Sequence[str] = ()) -> None:
    """(5) Collating the same items twice gives the same batch and leaves the items unchanged."""
    import copy

    with materialised_context(ctx, samples) as (records, c, root):
        items = items_of(source, records, c, root, faults if source == "custom" else ())
        before = copy.deepcopy(items)
        sctx = side_ctx(c, collator, faults)
        first = SIDES[collator].collate(items, sctx)
        second = SIDES[collator].collate(items, sctx)
    a, b = _tensor_fields(first), _tensor_fields(second)
    assert a.keys() == b.keys()
    for key in a:
        assert_same(a[key], b[key], f"{collator} batch field {key} on the second collation")
    for old, new in zip(before, items):
        assert (old.sample_id, old.target_audio_index, old.reference_audio_index, old.label_audio_indices) == (
            new.sample_id, new.target_audio_index, new.reference_audio_index, new.label_audio_indices)
        for key, value in _tensor_fields(old.sample).items():
            assert_same(value, getattr(new.sample, key), f"{old.sample_id}: sample.{key} after collating")


def check_forward_agrees(samples: Sequence[DrawnSample], ctx, *, faults: Sequence[str] = ()) -> None:
    """Both pipelines' models, built from the same checkpoint, give the same outputs on one batch."""
    with materialised_context(ctx, samples) as (records, c, root):
        items = items_of("custom", records, c, root, faults)
        batch = C.collate(items, side_ctx(c, "custom", faults))
        out = {}
        with torch.no_grad():
            for side in SIDES:
                out[side] = SIDES[side].forward(model_for(side, c, faults), batch, side_ctx(c, side, faults))
    for key in ("logits", "audio_logits"):
        ref, cus = getattr(out["reference"], key), getattr(out["custom"], key)
        assert ref.shape == cus.shape, f"{key} shapes differ"
        assert torch.allclose(ref, cus, rtol=1e-4, atol=1e-5), (
            f"{key} differ by up to {float((ref - cus).abs().max()):.3g}")


# ----------------------------------------------------------------------------- the tests

SOURCES = st.sampled_from(["custom", "reference"])


@COLLATE_SETTINGS
@given(samples=batches(), source=SOURCES, task=st.sampled_from(["zero_shot_voice_cloning", "single_speaker_smart_voice",
                                                               "multi_speaker_smart_voice",
                                                               "multi_speaker_voice_cloning"]))
def test_supervised_audio_codes_agree(ctx, samples, source, task):
    check_supervised_codes_agree(samples, ctx, source=source, task_type=task)


@MODEL_SETTINGS
@given(samples=batches(max_seconds=MODEL_MAX_SECONDS), source=SOURCES)
def test_audio_loss_finite_and_positive(ctx, samples, source):
    check_audio_loss_positive(samples, ctx, source=source)


@MODEL_SETTINGS
@given(samples=batches(max_size=3, max_seconds=2.0), source=SOURCES, seed=st.integers(0, 2**16))
def test_losses_match_explicit_oracle(ctx, samples, source, seed):
    check_loss_matches_oracle(samples, ctx, source=source, noise_seed=seed)


@COLLATE_SETTINGS
@given(samples=batches(), source=SOURCES, collator=SOURCES)
def test_collating_is_pure(ctx, samples, source, collator):
    check_collate_pure(samples, ctx, source=source, collator=collator)


@MODEL_SETTINGS
@given(samples=batches(max_size=3, max_seconds=MODEL_MAX_SECONDS))
def test_both_models_agree_on_one_batch(ctx, samples):
    check_forward_agrees(samples, ctx)
