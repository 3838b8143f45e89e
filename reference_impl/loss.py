"""The reference's loss (train-higgs-audio's patched `HiggsAudioModel.compute_losses`), as a pure function.

    text  = mean next-token cross-entropy over expanded labels != -100:
            logits[b, t] vs expanded_labels[b, t+1] (the shift stays inside each row).
    audio = audio_logits[:-1] vs label_audio_ids[:, 1:], the whole batch's audio-out stream shifted
            by one; per codebook the mean CE over labels != -100, then the plain mean over the
            codebooks that have any label.
    total = 0 (a leaf with requires_grad) + text if text.item() > 0 + audio if audio.item() > 0.

Quirks (each pinned by a test in tests/reference_impl/test_loss.py):

- QUIRK BOS-first labels: `label_audio_ids` is `audio_out_ids` ([BOS, codes, EOS] per segment),
  so every segment's stream-BOS id is a target: for all segments after the first it is
  predicted from the previous segment's EOS position.
- QUIRK shift across boundaries: the audio shift runs over the concatenation of all segments of
  all samples, so the last position (EOS) of one segment is trained to predict the next segment's
  BOS, even when that segment belongs to *another sample* in the batch.
- QUIRK reference turn trained: in zero-shot the reference clip is an earlier assistant turn, so
  its codes are audio targets exactly like the target utterance.
- QUIRK no delay pattern: labels are the undelayed codes although the released checkpoint
  (`use_delay_pattern: true`) generates with the delay pattern.
- QUIRK zero terms dropped: a term is added to the total only if `term.item() > 0`.  A term with
  no labels stays a 0.0 leaf and silently vanishes; so does a NaN term (NaN > 0 is False), and if
  both vanish the total is a 0.0 leaf whose backward reaches no parameter.
- (not a quirk, kept) text CE runs in the logits' dtype (bf16 when the model is bf16); audio
  logits come out of upstream forward as float32.

This module reports, besides the reference's three numbers, the per-codebook losses (NaN for a
codebook without labels), the supervised token counts and which terms were dropped, so that a
zero is never silent here.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from higgs_common.conventions import LossConventions

IGNORE_INDEX = -100

# What this module computes, in the shared vocabulary (declared in reference_impl.stages.CONVENTIONS);
# "micro_batch_mean": the HF Trainer divides each micro-batch's mean loss by the accumulation steps.
CONVENTIONS = LossConventions(text_reduction="token_mean", audio_reduction="codebook_mean", total="sum_positive",
                              audio_shift_scope="stream", accumulation="micro_batch_mean")
TEXT_REDUCTION = "mean next-token CE over expanded_labels[:, 1:] != -100 (shift within each row)"
AUDIO_REDUCTION = ("audio_logits[:-1] vs label_audio_ids[:, 1:] over the whole concatenated audio-out stream; "
                   "per-codebook mean CE over labels != -100, then mean over codebooks with labels")
TOTAL_REDUCTION = "0-leaf + text if text.item() > 0 + audio if audio.item() > 0"


class AudioLengthMismatchError(ValueError):
    """audio_logits and label_audio_ids disagree on the number of audio-out positions."""


def text_loss(logits: torch.Tensor, expanded_labels: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], int]:
    """Shifted next-token CE; returns (loss or None when nothing is labelled, number of labelled tokens)."""
    if expanded_labels is None or logits is None or logits.numel() == 0 or expanded_labels.numel() == 0:
        return None, 0
    shift_logits = logits[..., :-1, :].contiguous()          # (B, L-1, V)
    shift_labels = expanded_labels[..., 1:].contiguous()     # (B, L-1)
    flat_logits = shift_logits.view(-1, shift_logits.size(-1))
    flat_labels = shift_labels.view(-1).to(flat_logits.device)
    valid = flat_labels != IGNORE_INDEX
    n = int(valid.sum().item())
    if n == 0:
        return None, 0
    return F.cross_entropy(flat_logits[valid], flat_labels[valid], reduction="mean"), n


def audio_losses(audio_logits: Optional[torch.Tensor], label_audio_ids: Optional[torch.Tensor]
                 ) -> tuple[list[Optional[torch.Tensor]], int]:
    """Per-codebook shifted CE over the concatenated stream; (losses or None per codebook, labelled count)."""
    if (audio_logits is None or label_audio_ids is None or audio_logits.numel() == 0
            or label_audio_ids.numel() == 0):
        return [], 0
    # audio_logits: (N, num_codebooks, codebook_size + 2); label_audio_ids: (num_codebooks, N)
    if audio_logits.shape[0] != label_audio_ids.shape[1]:
        raise AudioLengthMismatchError(
            f"audio_logits has {audio_logits.shape[0]} positions but label_audio_ids has "
            f"{label_audio_ids.shape[1]} (shape {tuple(label_audio_ids.shape)})")
    shifted_logits = audio_logits[:-1, :, :].contiguous()   # (N-1, C, K)
    shifted_labels = label_audio_ids[:, 1:].contiguous().to(audio_logits.device)   # (C, N-1)
    if shifted_logits.shape[0] == 0:
        return [], 0
    num_codebooks = min(shifted_logits.shape[1], shifted_labels.shape[0])
    losses: list[Optional[torch.Tensor]] = []
    count = 0
    for cb in range(num_codebooks):
        cb_labels = shifted_labels[cb]                       # (N-1,)
        valid = cb_labels != IGNORE_INDEX
        n = int(valid.sum().item())
        count += n
        losses.append(F.cross_entropy(shifted_logits[:, cb, :][valid], cb_labels[valid], reduction="mean")
                      if n > 0 else None)
    return losses, count


def reference_losses(logits: torch.Tensor, audio_logits: Optional[torch.Tensor],
                     expanded_labels: Optional[torch.Tensor], label_audio_ids: Optional[torch.Tensor]
                     ) -> dict[str, Any]:
    """The reference's text, audio and total loss, plus bookkeeping.

    Returns a dict with `loss` (total, differentiable), `llm_loss`, `audio_loss` (scalars; 0.0
    leaves when a term has no labels, as in the reference), `codebook_losses` (num_codebooks,)
    with NaN where a codebook has no label, `text_tokens`, `audio_tokens` (labelled entries,
    frames x codebooks), and `dropped` (names of terms left out of the total by `.item() > 0`).
    """
    ref = logits if logits is not None else audio_logits
    device = ref.device if ref is not None else torch.device("cpu")
    zero = lambda: torch.tensor(0.0, device=device, dtype=torch.float32, requires_grad=True)  # noqa: E731

    llm, n_text = text_loss(logits, expanded_labels)
    llm_loss = llm if llm is not None else zero()

    cb_losses, n_audio = audio_losses(audio_logits, label_audio_ids)
    present = [x for x in cb_losses if x is not None]
    audio_loss = torch.stack(present).mean() if present else zero()
    nan = torch.tensor(float("nan"), device=device)
    codebook_losses = (torch.stack([x.float() if x is not None else nan for x in cb_losses])
                       if cb_losses else torch.zeros(0, device=device))

    total = zero()
    dropped: list[str] = []
    if llm_loss.item() > 0:
        total = total + llm_loss
    else:
        dropped.append("text")
    if audio_loss.item() > 0:
        total = total + audio_loss
    else:
        dropped.append("audio")
    return {
        "loss": total,
        "llm_loss": llm_loss,
        "audio_loss": audio_loss,
        "codebook_losses": codebook_losses,
        "text_tokens": n_text,
        "audio_tokens": n_audio,
        "dropped": tuple(dropped),
    }


def per_position_ce(logits: Optional[torch.Tensor], audio_logits: Optional[torch.Tensor],
                    expanded_labels: Optional[torch.Tensor], label_audio_ids: Optional[torch.Tensor]
                    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Unreduced CE of the reference's shifted pairs, indexed by the TARGET position; NaN where unsupervised.

    Returns (audio_token_ce (N, num_codebooks) or None, text_token_ce (B, L) or None), detached;
    their nan-means reproduce the per-codebook and text terms of `reference_losses`.
    """
    text_ce = None
    if logits is not None and expanded_labels is not None and logits.numel() and expanded_labels.numel():
        labels = expanded_labels.to(logits.device)
        text_ce = torch.full(labels.shape, float("nan"), device=logits.device)
        tgt = labels[:, 1:]                                                   # (B, L-1)
        ce = F.cross_entropy(logits[:, :-1].detach().float().transpose(1, 2), tgt.clamp_min(0), reduction="none")
        text_ce[:, 1:] = torch.where(tgt != IGNORE_INDEX, ce, torch.full_like(ce, float("nan")))
    audio_ce = None
    if (audio_logits is not None and label_audio_ids is not None and audio_logits.numel()
            and label_audio_ids.numel() and audio_logits.shape[0] == label_audio_ids.shape[1]):
        labels = label_audio_ids.to(audio_logits.device).T                    # (N, C)
        n_cb = min(audio_logits.shape[1], labels.shape[1])
        audio_ce = torch.full((labels.shape[0], n_cb), float("nan"), device=audio_logits.device)
        if labels.shape[0] > 1:
            tgt = labels[1:, :n_cb]                                           # (N-1, C)
            ce = F.cross_entropy(audio_logits[:-1, :n_cb].detach().float().transpose(1, 2), tgt.clamp_min(0),
                                 reduction="none")
            audio_ce[1:] = torch.where(tgt != IGNORE_INDEX, ce, torch.full_like(ce, float("nan")))
    return audio_ce, text_ce
