"""adapters.locate locates a fused loss's per-entry CE at its label positions, and refuses loss code
whose selection depends on label values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adapters.locate import located_cross_entropy, position_maps

NS = {"F": F}           # the "module" whose F the toy losses below call


def _shifted_text_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A script-style loss: shift, mask != -100, one mean CE (what both public pipelines do)."""
    f = NS["F"]
    lg, lb = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    keep = lb != -100
    return f.cross_entropy(lg[keep], lb[keep])


def test_text_ce_lands_at_the_label_positions_of_a_shifted_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)                                      # (B, L, V)
    labels = torch.tensor([[-100, 3, 4, -100, 5, 6], [-100, -100, 1, 2, -100, -100]])
    total, calls = located_cross_entropy(NS, lambda lab: _shifted_text_loss(logits, lab["labels"]),
                                         {"labels": labels})
    maps = position_maps(calls, vocab=11, text_labels=labels, text_source="labels", audio_labels=None,
                         audio_source="label_audio_ids", num_codebooks=2, num_frames=0)
    want = torch.full((2, 6), float("nan"))
    for b, t in (labels != -100).nonzero().tolist():
        want[b, t] = F.cross_entropy(logits[b, t - 1][None], labels[b, t][None])
    torch.testing.assert_close(maps.text_ce, want, equal_nan=True)
    assert maps.text_tokens == 6 and torch.isclose(total, torch.nanmean(want))
    assert total.requires_grad is False or total.grad_fn is not None


def test_audio_ce_per_codebook_lands_at_frame_and_codebook():
    torch.manual_seed(1)
    audio_logits = torch.randn(5, 2, 7)                                 # (N, C, K)
    labels = torch.tensor([[1, 2, -100, 3, 4], [5, -100, 6, 0, 1]])    # (C, N)

    def loss(lab):
        f, la = NS["F"], lab["label_audio_ids"]
        per = []
        for cb in range(2):
            keep = la[cb] != -100
            per.append(f.cross_entropy(audio_logits[:, cb][keep], la[cb][keep]))
        return torch.stack(per).mean()
    total, calls = located_cross_entropy(NS, loss, {"label_audio_ids": labels})
    maps = position_maps(calls, vocab=99, text_labels=None, text_source="x", audio_labels=labels,
                         audio_source="label_audio_ids", num_codebooks=2, num_frames=5)
    for cb in range(2):
        for n in range(5):
            if labels[cb, n] == -100:
                assert torch.isnan(maps.audio_ce[n, cb])
            else:
                torch.testing.assert_close(maps.audio_ce[n, cb],
                                           F.cross_entropy(audio_logits[n, cb][None], labels[cb, n][None]))
    assert maps.audio_tokens == 8 and not torch.isnan(maps.per_codebook).any()


def test_entries_scored_from_another_tensor_stay_unplaced_and_are_counted():
    torch.manual_seed(2)
    logits = torch.randn(1, 4, 5)
    expanded = torch.tensor([[-100, 1, 2, 3]])
    raw = torch.tensor([[-100, 4, 0]])                                  # unexpanded labels, shorter
    _, calls = located_cross_entropy(NS, lambda lab: _shifted_text_loss(logits[:, :3], lab["raw"]),
                                     {"expanded": expanded, "raw": raw})
    maps = position_maps(calls, vocab=5, text_labels=expanded, text_source="expanded", audio_labels=None,
                         audio_source="a", num_codebooks=1, num_frames=0)
    assert maps.unplaced == {"raw": 2} and torch.isnan(maps.text_ce).all()


def test_a_loss_that_selects_by_label_value_is_refused():
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[-100, 1, 2, 3]])

    def loss(lab):                                                      # selects on a value, not on -100
        lb = lab["labels"][:, 1:].reshape(-1)
        keep = (lb != -100) & (lb != 2)
        return NS["F"].cross_entropy(logits[:, :-1].reshape(-1, 5)[keep], lb[keep])
    with pytest.raises(ValueError, match="different cross_entropy calls"):
        located_cross_entropy(NS, loss, {"labels": labels})
