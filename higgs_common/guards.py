"""Training guards both pipelines' loops call: stop on a non-finite loss or gradient, or a silent
zero audio loss, naming the step, the sample ids and the loss breakdown.

Why in the neutral package: the two training loops (custom's manual loop, the reference's HF
Trainer) must stop on the same conditions with the same error types, and neither may import the
other.  These guards sit in the *loops*, never in the loss math: the harness diffs the loss
functions as they are (including the custom faults that reproduce a silent zero).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch

from higgs_common.stages import HiggsDiffError


class NonFiniteLossError(HiggsDiffError, FloatingPointError):
    """A NaN/inf loss: names the step, the samples and the breakdown, and stops the run."""


class NonFiniteGradientError(HiggsDiffError, FloatingPointError):
    """A NaN/inf gradient after backward: names the step, samples, breakdown and parameters."""


class ZeroAudioLossError(HiggsDiffError, ValueError):
    """An audio loss of exactly 0.0 on a batch that has target audio ("audio loss is always 0.0")."""


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
