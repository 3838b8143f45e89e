"""An independent implementation of the loss a `LossConventions` declaration describes.

The harness checks every pipeline's loss against this oracle (its reduced terms and its
per-position cross-entropy, on the same model outputs), derives the loss a pipeline must have
from another pipeline's per-position values (expected differences between reductions), and
back-propagates the oracle to get the gradient a pipeline's own loss must produce.

Everything stays differentiable.  Per-position values are indexed by the position of the
TARGET token (the label), as `higgs_common.stages.LossBreakdown` documents:

* text:  ce[b, t] = CE(logits[b, t - 1], expanded_labels[b, t]) for t >= 1 (next-token shift).
* audio: ce[j, c] = CE(audio_logits[j - 1, c], label_audio_ids[c, j]) where j - 1 and j lie in
  the same audio-out segment ("segment" scope) or anywhere in the batch's stream ("stream").

Reductions (names from `higgs_common.conventions`): text "token_mean"; audio "codebook_mean"
(mean over codebooks that have labels of each codebook's mean) or "token_mean" (one pooled mean);
total "sum", "sum_positive" (a term enters only if > 0, train-higgs-audio's ``.item() > 0``) or
"mean" (of the terms that have a supervised token).  Audio shift "none" scores ``audio_logits[j]``
against the labels at j.
A term with no supervised token is 0.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.semantics.projections import IGNORE, segment_bounds
from higgs_common.conventions import LossConventions


@dataclass
class PositionCE:
    """Per-position CE with its mask: values (with autograd), 0 where `mask` is False."""

    values: torch.Tensor          # float32, same shape as mask
    mask: torch.Tensor            # bool

    def nan_map(self) -> torch.Tensor:
        """Detached values with NaN where unsupervised (the LossBreakdown form)."""
        v = self.values.detach()
        return torch.where(self.mask, v, torch.full_like(v, float("nan")))


def text_ce(logits: torch.Tensor, expanded_labels: torch.Tensor | None) -> PositionCE:
    """logits (B, L, V), expanded_labels (B, L) -> PositionCE (B, L).  No labels (None: the model call got
    none) supervise nothing: an all-False mask."""
    if expanded_labels is None:
        b, length = logits.shape[:2]
        return PositionCE(logits.new_zeros((b, length), dtype=torch.float32),
                          torch.zeros((b, length), dtype=torch.bool, device=logits.device))
    labels = expanded_labels.to(logits.device)
    b, length = labels.shape
    values = logits.new_zeros((b, length), dtype=torch.float32)
    mask = torch.zeros((b, length), dtype=torch.bool, device=logits.device)
    if length > 1:
        tgt = labels[:, 1:]
        sup = tgt != IGNORE
        if bool(sup.any()):
            ce = F.cross_entropy(logits[:, :-1][sup].float(), tgt[sup], reduction="none")
            body = values[:, 1:].clone()
            body[sup] = ce
            values = torch.cat([values[:, :1], body], dim=1)
            mask[:, 1:] = sup
    return PositionCE(values, mask)


def audio_ce(audio_logits: torch.Tensor, labels: torch.Tensor, starts: torch.Tensor | None, *,
             scope: str, shift: int = 1) -> PositionCE:
    """audio_logits (N, C, K), label_audio_ids (C, N), audio_out_ids_start (S,) -> PositionCE (N, C).
    ``shift`` 1: ``audio_logits[j - 1]`` scores the labels at j (next frame); 0: ``audio_logits[j]``."""
    n, c, _ = audio_logits.shape
    labels = labels.to(audio_logits.device)
    values = audio_logits.new_zeros((n, c), dtype=torch.float32)
    mask = torch.zeros((n, c), dtype=torch.bool, device=audio_logits.device)
    if labels.shape != (c, n):
        raise ValueError(f"label_audio_ids {tuple(labels.shape)} does not match audio_logits {tuple(audio_logits.shape)}")
    if scope == "stream":
        bounds = [(0, n)] if n else []
    else:
        bounds = segment_bounds(starts, n)
    rows = []
    for a, b in bounds:
        if b - a > shift:
            rows.append(torch.arange(a + shift, b, device=audio_logits.device))
    if not rows:
        return PositionCE(values, mask)
    cols = torch.cat(rows)                                   # target positions j
    tgt = labels[:, cols].T                                  # (n', C)
    sup = tgt != IGNORE
    pred = audio_logits[cols - shift].float()                # (n', C, K)
    ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt.reshape(-1).clamp_min(0),
                         reduction="none").reshape(tgt.shape)
    ce = torch.where(sup, ce, torch.zeros_like(ce))
    values = values.index_put((cols,), ce)
    mask[cols] = sup
    return PositionCE(values, mask)


@dataclass
class Terms:
    """Reduced loss terms (scalars keep autograd) and supervised counts."""

    text: torch.Tensor
    audio: torch.Tensor
    per_codebook: torch.Tensor       # (C,) NaN where a codebook has no supervised frame
    total: torch.Tensor
    text_tokens: int
    audio_tokens: int
    per_codebook_tokens: torch.Tensor   # (C,) int64


def reduce(text: PositionCE | None, audio: PositionCE | None, conv: LossConventions) -> Terms:
    """Reduce per-position CE the way `conv` declares (module docstring)."""
    device = (text or audio).values.device if (text or audio) is not None else torch.device("cpu")
    zero = torch.zeros((), device=device)
    if text is not None and bool(text.mask.any()):
        t_count = int(text.mask.sum())
        text_loss = text.values[text.mask].sum() / t_count
    else:
        t_count, text_loss = 0, zero + (text.values.sum() * 0.0 if text is not None else 0.0)
    if audio is not None and audio.mask.numel():
        counts = audio.mask.sum(dim=0)                                        # (C,)
        sums = (audio.values * audio.mask).sum(dim=0)                         # (C,)
        per_cb = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
        valid = counts > 0
        a_count = int(counts.sum())
        if a_count == 0:
            audio_loss = audio.values.sum() * 0.0
        elif conv.audio_reduction == "codebook_mean":
            audio_loss = (sums[valid] / counts[valid]).mean()
        else:
            audio_loss = sums.sum() / a_count
        cb_counts = counts.to(torch.int64)
    else:
        per_cb, a_count, audio_loss = torch.zeros(0, device=device), 0, zero.clone()
        cb_counts = torch.zeros(0, dtype=torch.int64, device=device)
    if conv.total == "sum_positive":
        total = zero.clone()
        if float(text_loss.detach()) > 0:
            total = total + text_loss
        if float(audio_loss.detach()) > 0:
            total = total + audio_loss
    elif conv.total == "mean":
        present = (t_count > 0) + (a_count > 0)
        total = (text_loss + audio_loss) / max(1, present)
    else:
        total = text_loss + audio_loss
    return Terms(text_loss, audio_loss, per_cb, total, t_count, a_count, cb_counts)


def declared_loss(logits: torch.Tensor, audio_logits: torch.Tensor | None, expanded_labels: torch.Tensor | None,
                  label_audio_ids: torch.Tensor | None, starts: torch.Tensor | None,
                  conv: LossConventions) -> tuple[Terms, PositionCE, PositionCE | None]:
    """The declared loss of one forward pass: (terms, text PositionCE, audio PositionCE or None)."""
    t = text_ce(logits, expanded_labels)
    a = None
    if (audio_logits is not None and label_audio_ids is not None and audio_logits.numel()
            and label_audio_ids.numel()):
        a = audio_ce(audio_logits, label_audio_ids, starts, scope=conv.audio_shift_scope, shift=conv.audio_offset)
    return reduce(t, a, conv), t, a


def restrict(values: PositionCE, mask: torch.Tensor) -> PositionCE:
    """`values` at the positions of `mask` only (another side's supervised positions)."""
    m = values.mask & mask.to(values.mask.device)
    return PositionCE(values.values * m, m)
