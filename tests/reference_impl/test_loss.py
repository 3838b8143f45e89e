"""reference_impl.loss: values against plain-loop hand computation, and one test per quirk."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impl.collator import ExtendedHiggsAudioSampleCollator
from reference_impl.loss import AudioLengthMismatchError, reference_losses


def _nll(row: torch.Tensor, target: int) -> float:
    """-log softmax(row)[target] with plain Python floats."""
    vals = [float(x) for x in row]
    m = max(vals)
    lse = m + math.log(sum(math.exp(v - m) for v in vals))
    return lse - vals[target]


def hand_losses(logits, audio_logits, labels, label_audio_ids):
    """Independent loop implementation of the reference's arithmetic."""
    text_terms = []
    B, L, _ = logits.shape
    for b in range(B):
        for t in range(L - 1):
            y = int(labels[b, t + 1])
            if y != -100:
                text_terms.append(_nll(logits[b, t], y))
    text = sum(text_terms) / len(text_terms) if text_terms else 0.0
    N, C, _ = audio_logits.shape
    cb_means = []
    for c in range(C):
        terms = [_nll(audio_logits[n, c], int(label_audio_ids[c, n + 1]))
                 for n in range(N - 1) if int(label_audio_ids[c, n + 1]) != -100]
        if terms:
            cb_means.append(sum(terms) / len(terms))
    audio = sum(cb_means) / len(cb_means) if cb_means else 0.0
    return text, audio, cb_means


@pytest.fixture()
def fixed_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, -100, 7], [-100, 1, -100, -100, 10, 2]])
    audio_logits = torch.randn(7, 3, 9, generator=g)
    label_audio_ids = torch.tensor([[7, 1, 2, 8, 7, 3, 8],
                                    [7, 4, -100, 8, 7, 5, 8],
                                    [7, -100, -100, -100, -100, -100, -100]])
    return logits, audio_logits, labels, label_audio_ids


def test_against_hand_computation(fixed_batch):
    logits, audio_logits, labels, label_audio_ids = fixed_batch
    r = reference_losses(logits, audio_logits, labels, label_audio_ids)
    text, audio, cb = hand_losses(logits, audio_logits, labels, label_audio_ids)
    assert r["llm_loss"].item() == pytest.approx(text, rel=1e-5)
    assert r["audio_loss"].item() == pytest.approx(audio, rel=1e-5)
    assert r["loss"].item() == pytest.approx(text + audio, rel=1e-5)
    assert r["codebook_losses"][:2].tolist() == pytest.approx(cb, rel=1e-5)
    assert math.isnan(r["codebook_losses"][2])        # codebook without labels: NaN, left out of the mean
    assert r["text_tokens"] == 6 and r["audio_tokens"] == 6 + 5 + 0
    assert r["dropped"] == ()


def test_real_model_batch_against_hand_computation(ctx, zero_shot_items, tiny_model):
    col = ExtendedHiggsAudioSampleCollator.from_config(ctx.model_config, ctx.text_tokenizer)
    batch = col([it.sample for it in zero_shot_items[:2]])
    with torch.no_grad():
        out = tiny_model(**batch)
    text, audio, _ = hand_losses(out.logits, out.audio_logits, out.expanded_labels, batch.label_audio_ids)
    assert out.llm_loss.item() == pytest.approx(text, rel=1e-4)
    assert out.audio_loss.item() == pytest.approx(audio, rel=1e-4)
    assert out.loss.item() == pytest.approx(text + audio, rel=1e-4)
    assert out.audio_loss.item() > 0 and out.llm_loss.item() > 0


def _grad_rows(audio_logits, label_audio_ids):
    x = audio_logits.clone().requires_grad_(True)
    reference_losses(None, x, None, label_audio_ids)["loss"].backward()
    return x.grad.abs().sum(dim=(1, 2))            # (N,) gradient mass per audio position


def test_quirk_bos_first_labels_and_shift_across_boundaries(fixed_batch):
    """Segment 0 = positions 0..3 [BOS a b EOS], segment 1 = 4..6 [BOS c EOS] (as from audio_out_ids).

    The EOS position of segment 0 (index 3) is trained to predict segment 1's BOS (7): the shift
    crosses the boundary, and BOS is a target."""
    _, audio_logits, _, label_audio_ids = fixed_batch
    grads = _grad_rows(audio_logits, label_audio_ids)
    assert grads[3] > 0                    # EOS of segment 0 -> predicts next segment's BOS
    assert grads[6] == 0                   # last position has no next label
    # Make position 3 predict BOS perfectly: the audio loss must drop.
    base = reference_losses(None, audio_logits, None, label_audio_ids)["audio_loss"]
    boosted = audio_logits.clone()
    boosted[3, :2, 7] = 50.0
    assert reference_losses(None, boosted, None, label_audio_ids)["audio_loss"] < base


def test_quirk_reference_turn_trained(ctx, zero_shot_items):
    """The zero-shot reference clip (first audio-out segment) carries audio labels."""
    col = ExtendedHiggsAudioSampleCollator.from_config(ctx.model_config, ctx.text_tokenizer)
    batch = col([zero_shot_items[0].sample])
    starts = batch.audio_out_ids_start.tolist()
    n = batch.audio_out_ids.shape[1]
    audio_logits = torch.zeros(n, ctx.model_config.audio_num_codebooks, ctx.model_config.audio_codebook_size + 2)
    grads = _grad_rows(audio_logits, batch.label_audio_ids)
    ref_segment = slice(starts[0], starts[1] - 1)          # positions whose next label is inside the reference
    assert (grads[ref_segment] > 0).all()


def test_quirk_no_delay_pattern(ctx, zero_shot_items):
    """Labels are the undelayed codes although the checkpoint generates with the delay pattern."""
    assert ctx.model_config.use_delay_pattern is True
    col = ExtendedHiggsAudioSampleCollator.from_config(ctx.model_config, ctx.text_tokenizer)
    item = zero_shot_items[0]
    batch = col([item.sample])
    s = item.sample
    target = s.audio_ids_concat[:, s.audio_ids_start[1]:]          # (C, T) codes of the target
    start = batch.audio_out_ids_start[1]
    torch.testing.assert_close(batch.label_audio_ids[:, start + 1:start + 1 + target.shape[1]], target)


def test_quirk_zero_terms_dropped():
    logits = torch.randn(1, 4, 5, requires_grad=True)
    no_text = torch.full((1, 4), -100)
    audio_logits = torch.randn(3, 2, 4, requires_grad=True)
    labels = torch.tensor([[0, 1, 2], [0, 3, 2]])
    r = reference_losses(logits, audio_logits, no_text, labels)
    assert r["llm_loss"].item() == 0.0 and r["dropped"] == ("text",)
    assert r["loss"].item() == pytest.approx(r["audio_loss"].item())
    # Both terms empty: the total is a 0.0 leaf that reaches no parameter.
    r2 = reference_losses(logits, audio_logits, no_text, torch.full((2, 3), -100))
    assert r2["loss"].item() == 0.0 and r2["loss"].grad_fn is None and r2["dropped"] == ("text", "audio")
    # NaN is dropped too (NaN > 0 is False).
    nan_logits = torch.full((1, 4, 5), float("nan"))
    r3 = reference_losses(nan_logits, audio_logits, torch.tensor([[0, 1, 2, 3]]), labels)
    assert math.isnan(r3["llm_loss"].item()) and "text" in r3["dropped"]
    assert r3["loss"].item() == pytest.approx(r3["audio_loss"].item())


def test_empty_label_audio_ids_gives_zero_audio():
    """An upstream batch without audio-out has (0, 0) labels: audio term 0 and dropped, reported."""
    r = reference_losses(torch.randn(1, 3, 5), torch.zeros(0, 2, 4), torch.tensor([[0, 1, 2]]),
                         torch.zeros(0, 0, dtype=torch.long))
    assert r["audio_loss"].item() == 0.0 and r["audio_tokens"] == 0 and "audio" in r["dropped"]


def test_length_mismatch_raises():
    with pytest.raises(AudioLengthMismatchError):
        reference_losses(None, torch.zeros(4, 2, 3), None, torch.zeros(2, 5, dtype=torch.long))


def test_per_position_ce_reproduces_terms(fixed_batch):
    from reference_impl.loss import per_position_ce

    logits, audio_logits, labels, label_audio_ids = fixed_batch
    r = reference_losses(logits, audio_logits, labels, label_audio_ids)
    audio_ce, text_ce = per_position_ce(logits, audio_logits, labels, label_audio_ids)
    assert audio_ce.shape == (7, 3) and text_ce.shape == (2, 6)
    assert torch.isnan(audio_ce[0]).all() and torch.isnan(text_ce[:, 0]).all()   # indexed by target position
    assert text_ce.nanmean().item() == pytest.approx(r["llm_loss"].item(), rel=1e-5)
    assert audio_ce[:, :2].nanmean(dim=0).tolist() == pytest.approx(r["codebook_losses"][:2].tolist(), rel=1e-5)
    assert int((~torch.isnan(audio_ce)).sum()) == r["audio_tokens"]
