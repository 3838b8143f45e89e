"""The hand-written loss against plain-loop arithmetic, and its refusal to return a silent 0.0."""

import copy
import math
import types

import pytest
import torch

from custom_impl import stages as S
from custom_impl.loss import AudioLabelError, audio_predictor_rows, compute_loss


@pytest.fixture(scope="module")
def fixed(items, ctx):
    torch.manual_seed(0)
    batch = S.collate(items[:3], ctx)
    model = S.build_model(ctx, S.DEFAULT_TRAIN.replace(lora_dropout=0.0))
    model.eval()
    with torch.no_grad():
        out = S.forward(model, batch, ctx)
    return batch, out


def hand_loss(batch, out):
    """Plain Python loops: text next-token CE, audio next-frame CE within each segment."""
    logits, labels = out.logits, out.expanded_labels
    text_terms = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y != -100:
                text_terms.append(-torch.log_softmax(logits[b, t].double(), -1)[y])
    text = sum(text_terms) / len(text_terms)
    alog, alab = out.audio_logits, batch.label_audio_ids
    n = alab.shape[1]
    starts = batch.audio_out_ids_start.tolist()
    ends = starts[1:] + [n]
    per_cb = []
    count = 0
    for c in range(alab.shape[0]):
        terms = []
        for s, e in zip(starts, ends):
            for t in range(s, e - 1):
                y = int(alab[c, t + 1])
                if y != -100:
                    terms.append(-torch.log_softmax(alog[t, c].double(), -1)[y])
        count += len(terms)
        per_cb.append(sum(terms) / len(terms))
    return text, torch.stack(per_cb), len(text_terms), count


def test_loss_matches_hand_computation(fixed, ctx):
    batch, out = fixed
    lb = S.loss(out, batch, ctx)
    text, per_cb, n_text, n_audio = hand_loss(batch, out)
    torch.testing.assert_close(lb.text.double(), text, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lb.per_codebook.double(), per_cb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lb.audio.double(), per_cb.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lb.total.detach().double(), text + per_cb.mean(), rtol=1e-5, atol=1e-5)
    assert (lb.text_supervised_tokens, lb.audio_supervised_tokens) == (n_text, n_audio)
    assert lb.has_target_audio and n_audio > 0
    # per-position CE is stored at the TARGET position and agrees with the means
    assert torch.isnan(lb.audio_token_ce[batch.audio_out_ids_start]).all()   # segment starts: never targets
    torch.testing.assert_close(torch.nanmean(lb.audio_token_ce, dim=0).double(), per_cb, rtol=1e-5, atol=1e-5)


def test_collator_labels_sit_at_input_columns_so_the_loss_must_shift(fixed):
    """Why the shift is in the loss: label[:, t] == audio_out_ids[:, t] wherever it is supervised."""
    batch, _ = fixed
    sup = batch.label_audio_ids != -100
    assert sup.any()
    assert torch.equal(batch.label_audio_ids[sup], batch.audio_out_ids[sup])


def test_shift_never_crosses_segment_boundaries():
    rows = audio_predictor_rows(10, torch.tensor([0, 4, 7]))
    assert rows.tolist() == [0, 1, 2, 4, 5, 7, 8]   # 3 -> 4 and 6 -> 7 cross a boundary; 9 is last


def test_no_shift_fault_scores_a_copy_task(fixed, with_faults):
    batch, out = fixed
    good = S.loss(out, batch, with_faults())
    bad = S.loss(out, batch, with_faults("no-shift"))
    assert not math.isclose(float(good.audio), float(bad.audio), rel_tol=1e-4)
    assert any("no-shift" in n for n in bad.notes)


def test_all_masked_audio_labels_raise(fixed, ctx):
    batch, out = fixed
    masked = copy.deepcopy(batch)
    masked.label_audio_ids = torch.full_like(batch.label_audio_ids, -100)
    with pytest.raises(AudioLabelError, match="-100"):
        S.loss(out, masked, ctx)
    absent = copy.deepcopy(batch)
    absent.label_audio_ids = None
    with pytest.raises(AudioLabelError, match="absent"):
        S.loss(out, absent, ctx)
    no_logits = copy.copy(out)
    no_logits.audio_logits = None
    with pytest.raises(AudioLabelError, match="audio_logits"):
        S.loss(no_logits, batch, ctx)


def test_batch_without_target_audio_is_reported(fixed, ctx):
    _, out = fixed
    audio_free = types.SimpleNamespace(audio_out_ids=torch.zeros((0, 0), dtype=torch.long),
                                       label_audio_ids=torch.zeros((0, 0), dtype=torch.long))
    lb = compute_loss(out, audio_free)
    assert lb.has_target_audio is False and lb.audio_supervised_tokens == 0
    assert any("no target audio" in n for n in lb.notes)
    torch.testing.assert_close(lb.total, lb.text)


def test_silent_zero_fault_returns_zero_on_good_data(fixed, with_faults):
    batch, out = fixed
    lb = S.loss(out, batch, with_faults("silent-zero-audio-loss"))
    assert float(lb.audio) == 0.0 and lb.audio_supervised_tokens == 0 and lb.has_target_audio
    assert any("silent-zero-audio-loss" in n for n in lb.notes)


def test_loss_accepts_an_attribute_container_batch(fixed, ctx):
    """Another collator's batch (e.g. the reference's Extended container) works field-by-field."""
    batch, out = fixed
    other = types.SimpleNamespace(**{k: getattr(batch, k) for k in batch.__dataclass_fields__})
    torch.testing.assert_close(S.loss(out, other, ctx).total, S.loss(out, batch, ctx).total)
