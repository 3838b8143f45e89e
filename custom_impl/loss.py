"""Hand-written text + audio loss of the custom pipeline.

Alignment, worked out from upstream code (boson_multimodal 0.1.1):

* Text: `prepare_chatml_sample` gives `label_ids` equal to `input_ids` at trainable positions
  (not shifted), and `HiggsAudioModel.forward` only expands them over the merged audio positions
  (`expanded_labels`, -100 at audio).  `logits[:, t]` is the distribution of token t+1, so
  the loss scores `logits[:, :-1]` against `expanded_labels[:, 1:]`.
* Audio: the collator emits, per audio-out segment, inputs `[BOS, c_1..c_n, EOS]` and labels
  `[-100, c_1..c_n, EOS]` at the SAME column (so label[t] == input[t] except BOS).  The model's
  generation loop samples the next audio token from `audio_logits[-1]`, i.e. the row for input
  column t predicts column t+1.  So `audio_logits[t]` is scored against `label_audio_ids[:, t+1]`
  - inside one segment only: the last row of a segment (its EOS) predicts nothing, and no row
  predicts the first column of the next segment (segments are different clips, possibly of
  different samples).  Scoring `audio_logits[t]` against `label[t]` would be a copy task.

Reduction: text = mean CE over supervised text tokens; audio = per-codebook mean CE over that
codebook's supervised frames, then the mean over codebooks; total = text + audio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from loguru import logger

from custom_impl.fast_head import TextHeadInputs, gathered_text_terms
from custom_impl.faults import is_on
from higgs_common.conventions import LossConventions
from higgs_common.stages import ForwardOutputs, HiggsDiffError, LossBreakdown

IGNORE_INDEX = -100
# What this module computes, in the shared vocabulary (declared in custom_impl.stages.CONVENTIONS).
CONVENTIONS = LossConventions(text_reduction="token_mean", audio_reduction="codebook_mean", total="sum",
                              audio_shift_scope="segment", accumulation="global_token_mean")
REDUCTION = ("text: mean next-token CE over supervised tokens of expanded_labels; "
             "audio: per-codebook mean next-frame CE within each audio-out segment, then mean over "
             "codebooks; total = text + audio")


class AudioLabelError(HiggsDiffError, ValueError):
    """A batch that carries target audio but no usable audio labels/logits.

    Raised instead of returning 0.0: "audio loss is always 0.0" was the custom pipeline's bug.
    """


def _field(batch: Any, name: str) -> Any:
    if isinstance(batch, dict):
        return batch.get(name)
    return getattr(batch, name, None)


@dataclass
class LossTerms:
    """Differentiable sums + counts; means and global (DDP) normalisation are built from these."""

    text_sum: torch.Tensor                  # scalar, sum of CE over supervised text tokens
    text_count: int
    audio_sums: torch.Tensor                # (C,) sum of CE per codebook
    audio_counts: torch.Tensor              # (C,) long, supervised frames per codebook
    has_target_audio: bool
    notes: tuple[str, ...]
    text_token_ce: torch.Tensor | None = None   # (B, L) detached, NaN where unsupervised
    audio_token_ce: torch.Tensor | None = None  # (N, C) detached, NaN where unsupervised


def text_terms(logits: torch.Tensor, labels: torch.Tensor, *, shift: bool = True
               ) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Sum of next-token CE. logits (B, L, V), labels (B, L) -> (sum, n_supervised, ce (B, L))."""
    ce_map = torch.full(labels.shape, float("nan"), device=logits.device)
    tgt = labels[:, 1:] if shift else labels                        # (B, L') target labels
    src = logits[:, :-1] if shift else logits                       # (B, L', V) predicting them
    mask = tgt != IGNORE_INDEX
    n = int(mask.sum())
    if n == 0:
        return logits.sum() * 0.0, 0, ce_map
    # Select supervised positions before the softmax: only a handful of the (B, L, V) rows matter.
    ce = F.cross_entropy(src[mask].float(), tgt[mask], reduction="none")
    view = ce_map[:, 1:] if shift else ce_map                       # indexed by the TARGET position
    view[mask] = ce.detach()
    return ce.sum(), n, ce_map


def audio_predictor_rows(n_frames: int, segment_starts: torch.Tensor, *, shift: bool = True) -> torch.Tensor:
    """Rows t whose logits are scored against label column t+1 (same segment), as a LongTensor.

    With `shift=False` (fault d) every row is scored against its own column.
    """
    rows = torch.arange(n_frames, device=segment_starts.device)
    if not shift:
        return rows
    is_start = torch.zeros(n_frames + 1, dtype=torch.bool, device=segment_starts.device)
    is_start[segment_starts] = True
    is_start[n_frames] = True                                      # the end closes the last segment
    return rows[~is_start[1:]]                                     # t+1 must not start a segment


def audio_label_counts(labels: torch.Tensor, segment_starts: torch.Tensor, *, shift: bool = True) -> torch.Tensor:
    """(C,) supervised frames per codebook that the loss will score, from labels (C, N) alone."""
    rows = audio_predictor_rows(labels.shape[1], segment_starts.to(labels.device).long(), shift=shift)
    cols = rows + 1 if shift else rows
    return (labels[:, cols] != IGNORE_INDEX).sum(dim=1)


def audio_terms(audio_logits: torch.Tensor, labels: torch.Tensor, segment_starts: torch.Tensor, *,
                shift: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-codebook CE sums. audio_logits (N, C, K), labels (C, N), segment_starts (S,).

    Returns (sums (C,), counts (C,), ce map (N, C) indexed by the target column).
    """
    n_frames, n_cb, _ = audio_logits.shape
    if tuple(labels.shape) != (n_cb, n_frames):
        raise AudioLabelError(f"label_audio_ids shape {tuple(labels.shape)} does not match audio_logits "
                              f"{tuple(audio_logits.shape)} (expected ({n_cb}, {n_frames}))")
    rows = audio_predictor_rows(n_frames, segment_starts.to(labels.device).long(), shift=shift)
    cols = rows + 1 if shift else rows
    pred = audio_logits[rows].float()                              # (n, C, K)
    tgt = labels[:, cols].T                                        # (n, C)
    mask = tgt != IGNORE_INDEX                                     # (n, C)
    ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt.reshape(-1).clamp_min(0),
                         reduction="none").reshape(tgt.shape) * mask
    ce_map = torch.full((n_frames, n_cb), float("nan"), device=audio_logits.device)
    ce_map[cols] = torch.where(mask, ce.detach(), torch.full_like(ce.detach(), float("nan")))
    return ce.sum(dim=0), mask.sum(dim=0), ce_map


def compute_terms(outputs: ForwardOutputs, batch: Any, *, faults: frozenset[str] = frozenset()) -> LossTerms:
    """Loss sums/counts for any HiggsAudioBatchInput-like batch (upstream, reference or custom).

    Text terms come from `outputs.logits` (B, L, V), or, in the training path, from
    `outputs.extra["text_head"]` (a `fast_head.TextHeadInputs`: the head applied only at the
    supervised rows, `custom_impl.fast_head`).
    """
    shift = not is_on(faults, "no-shift")
    if outputs.expanded_labels is None:
        raise ValueError("forward outputs carry no expanded_labels; cannot compute the text loss")
    head = outputs.extra.get("text_head") if outputs.extra else None
    if isinstance(head, TextHeadInputs):
        t_sum, n_text, t_map = gathered_text_terms(head, outputs.expanded_labels, shift=shift)
    else:
        t_sum, n_text, t_map = text_terms(outputs.logits, outputs.expanded_labels, shift=shift)
    notes: list[str] = []
    if not shift:
        notes.append("FAULT no-shift: logits scored against labels at the same position")
    empty = t_sum.new_zeros(0)
    no_counts = torch.zeros(0, dtype=torch.long)

    audio_out_ids = _field(batch, "audio_out_ids")
    has_target = audio_out_ids is not None and audio_out_ids.ndim == 2 and audio_out_ids.shape[-1] > 0
    if not has_target:
        notes.append("batch has no target audio (no <|AUDIO_OUT|> segment): audio loss not computed")
        return LossTerms(t_sum, n_text, empty, no_counts, False, tuple(notes), t_map, None)

    silent = is_on(faults, "silent-zero-audio-loss")
    label_field = "audio_labels" if silent else "label_audio_ids"
    labels = _field(batch, label_field)
    audio_logits = outputs.audio_logits
    if silent and (labels is None or audio_logits is None or audio_logits.numel() == 0 or labels.numel() == 0):
        # FAULT (c): upstream logged a warning and carried on with an audio loss of 0.0.
        logger.warning(f"audio logits or labels missing/empty (looked up {label_field!r}); audio loss = 0.0")
        notes.append(f"FAULT silent-zero-audio-loss: labels looked up as {label_field!r}; audio loss forced to 0.0")
        return LossTerms(t_sum, n_text, empty, no_counts, True, tuple(notes), t_map, None)
    if audio_logits is None or audio_logits.numel() == 0:
        raise AudioLabelError("batch has target audio but the model returned no audio_logits")
    if labels is None or labels.numel() == 0:
        raise AudioLabelError(f"batch has {audio_out_ids.shape[-1]} target audio frames but "
                              f"label_audio_ids is {'absent' if labels is None else 'empty'}")
    starts = _field(batch, "audio_out_ids_start")
    if starts is None:
        starts = torch.zeros(1, dtype=torch.long)
    a_sums, a_counts, a_map = audio_terms(audio_logits, labels.to(audio_logits.device), starts, shift=shift)
    if int(a_counts.sum()) == 0:
        raise AudioLabelError(f"batch has {audio_out_ids.shape[-1]} target audio frames but every audio "
                              f"label is -100 (0 supervised audio tokens)")
    return LossTerms(t_sum, n_text, a_sums, a_counts.cpu(), True, tuple(notes), t_map, a_map)


def _means(terms: LossTerms, text_total: float, cb_totals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(text mean, per-codebook means (C,), audio mean) with the given denominators."""
    text = terms.text_sum / max(text_total, 1)
    if terms.audio_sums.numel() == 0:
        zero = terms.text_sum * 0.0
        return text, terms.audio_sums, zero
    denom = cb_totals.to(terms.audio_sums.device).clamp_min(1).float()
    per_cb = terms.audio_sums / denom
    valid = (cb_totals > 0).to(per_cb.device)
    audio = per_cb[valid].mean() if bool(valid.any()) else per_cb.sum() * 0.0
    return text, per_cb, audio


def breakdown(terms: LossTerms) -> LossBreakdown:
    """Local (this batch) means: what is logged and what the harness diffs."""
    text, per_cb, audio = _means(terms, terms.text_count, terms.audio_counts)
    return LossBreakdown(total=text + audio, text=text.detach(), audio=audio.detach(),
                         per_codebook=per_cb.detach(), text_supervised_tokens=terms.text_count,
                         audio_supervised_tokens=int(terms.audio_counts.sum()) if terms.audio_counts.numel() else 0,
                         has_target_audio=terms.has_target_audio, reduction=REDUCTION, notes=terms.notes,
                         audio_token_ce=terms.audio_token_ce, text_token_ce=terms.text_token_ce)


def compute_loss(outputs: ForwardOutputs, batch: Any, *, faults: frozenset[str] = frozenset()) -> LossBreakdown:
    return breakdown(compute_terms(outputs, batch, faults=faults))


def global_objective(terms: LossTerms, text_total: int, cb_totals: torch.Tensor, world_size: int) -> torch.Tensor:
    """This micro-batch's share of the GLOBAL batch loss, scaled for DDP's gradient averaging.

    Denominators are the supervised counts summed over every micro-batch of every rank, so the sum
    of these objectives over micro-batches and ranks is exactly the full-batch mean loss; DDP then
    divides by world_size, hence the factor.  This is what makes 2 ranks x batch b reproduce
    1 rank x batch 2b (per-rank means would weight short and long samples differently).
    """
    text, _per_cb, audio = _means(terms, text_total, cb_totals)
    return (text + audio) * world_size


def batch_label_counts(batch: Any, *, faults: frozenset[str] = frozenset(),
                       audio_in_token_id: int, audio_out_token_id: int) -> tuple[int, torch.Tensor]:
    """(text count, per-codebook counts (C,)) the loss will supervise, from the batch alone.

    Needed BEFORE any backward to know the global denominators.  The text labels survive the
    model's audio merge unchanged except at placeholder tokens (replaced by -100 spans).
    """
    shift = not is_on(faults, "no-shift")
    label_ids, input_ids = _field(batch, "label_ids"), _field(batch, "input_ids")
    keep = (label_ids != IGNORE_INDEX) & (input_ids != audio_in_token_id) & (input_ids != audio_out_token_id)
    if shift:
        keep[:, 0] = False   # position 0 of the merged sequence is never a target (it is BOS)
    text_count = int(keep.sum())
    labels = _field(batch, "label_audio_ids")
    out = _field(batch, "audio_out_ids")
    if (is_on(faults, "silent-zero-audio-loss") or labels is None or labels.numel() == 0
            or out is None or out.shape[-1] == 0):
        return text_count, torch.zeros(0, dtype=torch.long)
    starts = _field(batch, "audio_out_ids_start")
    return text_count, audio_label_counts(labels, starts, shift=shift).cpu()
