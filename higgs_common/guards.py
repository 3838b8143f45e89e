"""Training guards both pipelines' loops call: stop on a non-finite loss or gradient, a silent
zero audio loss (in total or in one codebook), or a trainable parameter that gradients do not
reach, naming the step, the sample ids, the loss breakdown and the parameters.

Why in the neutral package: the two training loops (custom's manual loop, the reference's HF
Trainer) must stop on the same conditions with the same error types, and neither may import the
other.  These guards sit in the *loops*, never in the loss math: the harness diffs the loss
functions as they are (including the custom faults that reproduce a silent zero).
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping, Optional, Sequence

import torch

from higgs_common.stages import HiggsDiffError

IGNORE_INDEX = -100


class NonFiniteLossError(HiggsDiffError, FloatingPointError):
    """A NaN/inf loss: names the step, the samples and the breakdown, and stops the run."""


class NonFiniteGradientError(HiggsDiffError, FloatingPointError):
    """A NaN/inf gradient after backward: names the step, samples, breakdown and parameters."""


class ZeroAudioLossError(HiggsDiffError, ValueError):
    """An audio loss of exactly 0.0 on a batch that has target audio ("audio loss is always 0.0"),
    in total or in one codebook."""


class MissingGradientError(HiggsDiffError, RuntimeError):
    """A trainable parameter got no gradient (None) or an exactly-zero one where it cannot be zero."""


def _fmt(losses: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:.6g}" for k, v in losses.items()) + "}"


def check_losses_finite(losses: Mapping[str, float], *, step: int, sample_ids: Sequence[str]) -> None:
    """Raise NonFiniteLossError if any term of the breakdown is NaN or inf."""
    if not all(math.isfinite(float(v)) for v in losses.values()):
        raise NonFiniteLossError(f"non-finite loss at step {step} on samples {list(sample_ids)}: {_fmt(losses)}")


def check_audio_loss_nonzero(audio_loss: float, *, has_target_audio: bool, step: int, sample_ids: Sequence[str],
                             losses: Mapping[str, float]) -> None:
    """Raise ZeroAudioLossError for an audio loss of exactly 0.0 when the batch has target audio.

    A cross-entropy over real labels is never exactly 0.0 in floating point; exactly 0.0 means the
    audio term was dropped, masked away or never computed.
    """
    if has_target_audio and float(audio_loss) == 0.0:
        raise ZeroAudioLossError(
            f"audio loss is exactly 0.0 at step {step} on samples {list(sample_ids)} although the batch has "
            f"target audio (labels missing, all -100, or the term was dropped): {_fmt(losses)}")


def nonfinite_grad_names(named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> list[str]:
    """Names of trainable parameters whose gradient holds NaN/inf (one device sync in the good case)."""
    named = [(n, p.grad) for n, p in named_params if p.requires_grad and p.grad is not None]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(g).all().to("cpu", non_blocking=False) for _, g in named])   # (P,)
    if bool(flags.all()):
        return []
    return [n for (n, _), ok in zip(named, flags.tolist()) if not ok]


def check_grads_finite(named_params: Iterable[tuple[str, torch.nn.Parameter]], *, step: int,
                       sample_ids: Sequence[str], losses: Mapping[str, float]) -> None:
    """Raise NonFiniteGradientError naming the first offending parameters."""
    bad = nonfinite_grad_names(named_params)
    if bad:
        shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise NonFiniteGradientError(f"non-finite gradient at step {step} on samples {list(sample_ids)} in "
                                     f"{len(bad)} parameter(s): {shown}; loss {_fmt(losses)}")


def supervised_frames_per_codebook(label_audio_ids: Optional[torch.Tensor]) -> list[int]:
    """Labels != -100 per codebook of a batch's `label_audio_ids` (num_codebooks, N); [] when absent.

    Read from the batch, not from the loss function, so that a loss which drops a codebook cannot
    also hide the evidence that the codebook had targets.
    """
    if label_audio_ids is None or label_audio_ids.ndim != 2 or label_audio_ids.numel() == 0:
        return []
    return [int(n) for n in (label_audio_ids != IGNORE_INDEX).sum(dim=1).tolist()]


def check_codebook_losses_nonzero(per_codebook: Sequence[float], supervised: Sequence[int], *,
                                  has_target_audio: bool, step: int, sample_ids: Sequence[str],
                                  losses: Mapping[str, float]) -> None:
    """Raise ZeroAudioLossError naming every codebook whose loss is exactly 0.0, or that has no
    supervised frame, on a batch with target audio frames.

    `per_codebook` (C,) are the loss function's per-codebook means (NaN or 0.0 where it had no label,
    depending on the pipeline); `supervised` (C,) the batch's labelled entries per codebook
    (`supervised_frames_per_codebook`).  Every audio-out frame carries one code per codebook (the
    delay pattern only shifts them), so when the batch has target frames each codebook must have
    labels and a cross-entropy above 0.0; a codebook without labels is "never supervised", one with
    labels and a loss of exactly 0.0 was dropped by the loss.  A batch without any supervised frame
    is `check_audio_loss_nonzero`'s case; an empty `per_codebook` (no per-codebook term computed)
    too.
    """
    if not has_target_audio or not per_codebook or not supervised or sum(supervised) == 0:
        return
    bad = []
    for cb, (value, n) in enumerate(zip(per_codebook, supervised)):
        if n == 0:
            bad.append(f"codebook {cb}: no supervised frame (every label -100), loss {float(value):.6g}")
        elif float(value) == 0.0:
            bad.append(f"codebook {cb}: loss exactly 0.0 over {n} supervised frames")
    if bad:
        raise ZeroAudioLossError(
            f"silent codebook loss at step {step} on samples {list(sample_ids)} although the batch has target audio "
            f"frames ({', '.join(f'cb{c}: {n}' for c, n in enumerate(supervised))} supervised): {'; '.join(bad)}; "
            f"loss {_fmt(losses)}")


_LORA_A = re.compile(r"(^|\.)lora_(embedding_)?A\.")


def _lora_partner(name: str) -> Optional[str]:
    """'...lora_A.<adapter>.weight' -> '...lora_B.<adapter>.weight' (also lora_embedding_A/B); else None."""
    if not _LORA_A.search(name):
        return None
    return _LORA_A.sub(lambda m: f"{m.group(1)}lora_{m.group(2) or ''}B.", name)


def frozen_trainable_names(named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> tuple[list[str], list[str]]:
    """(trainables whose grad is None, trainables whose grad is exactly zero where it cannot be).

    When can a gradient be exactly zero?  Only when every path from the parameter to the loss is
    multiplied by an exact zero.  For LoRA (h = W x + s B A x): dL/dB = s (dL/dh) (A x)^T and
    dL/dA = s B^T (dL/dh) x^T.  A is drawn at random, so dL/dB vanishes only if no gradient reaches
    the layer; B starts at 0 (peft's init), so dL/dA is exactly 0 while B is all zeros, i.e. at the
    first step, and longer if the learning rate of the first steps is 0 (HF's linear warmup).
    So: a LoRA A tensor may have a zero gradient while its B tensor is all zeros; every other
    trainable (LoRA B from the first step, any weight of a full fine-tune) may not.  One host sync.
    """
    params = [(n, p) for n, p in named_params if p.requires_grad]
    none = [n for n, p in params if p.grad is None]
    with_grad = [(n, p) for n, p in params if p.grad is not None]
    if not with_grad:
        return none, []
    by_name = dict(params)
    flags = torch.stack([p.grad.detach().ne(0).any().to("cpu", non_blocking=False) for _, p in with_grad])   # (P,)
    if bool(flags.all()):
        return none, []
    zero = []
    for (n, _), nonzero in zip(with_grad, flags.tolist()):
        if nonzero:
            continue
        partner = _lora_partner(n)
        if partner is not None and partner in by_name and not bool(by_name[partner].detach().ne(0).any()):
            continue   # LoRA A while its B is still all zeros: dL/dA = s B^T ... is exactly 0
        zero.append(n)
    return none, zero


def check_grads_flow(named_params: Iterable[tuple[str, torch.nn.Parameter]], *, step: int,
                     sample_ids: Sequence[str], losses: Mapping[str, float]) -> None:
    """Raise MissingGradientError naming trainables without a gradient (after backward, before the step).

    Typical causes: a block run under re-entrant activation checkpointing whose inputs do not require
    grad (its parameters get None; torch only warns), a detached or unused module, a loss term that
    never reaches a parameter.  The training CLIs' `--allow-frozen-trainables` skips this guard.
    """
    none, zero = frozen_trainable_names(named_params)
    if not none and not zero:
        return
    parts = []
    for what, names in (("received no gradient (grad is None)", none), ("have an exactly-zero gradient", zero)):
        if names:
            shown = ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "")
            parts.append(f"{len(names)} trainable parameter(s) {what}: {shown}")
    raise MissingGradientError(
        f"gradients do not reach every trainable parameter at step {step} on samples {list(sample_ids)}: "
        f"{'; '.join(parts)} (re-entrant activation checkpointing on inputs without grad, a detached or unused "
        f"module, or a loss term that never reaches them; --allow-frozen-trainables to train anyway); "
        f"loss {_fmt(losses)}")
