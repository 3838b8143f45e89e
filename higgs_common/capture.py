"""Record what a fused forward-and-loss call computes, for adapters around real training code.

Real trainers compute forward and loss in one call (train-higgs-audio's loss lives inside the model's
forward; a script trainer's `compute_loss` returns only the scalar).  An adapter wraps that call in
`capture(model)` and reads back every cross-entropy the call made and the model's forward output:

    from higgs_common.capture import capture
    with capture(model) as cap:
        total = trainer.compute_loss(model, inputs)          # the pipeline's own code, unchanged
    audio = cap.call(site="trainer.py")                      # the CE call made in trainer.py
    per_pos = audio.per_position                             # (N,) CE per target, NaN where ignored
    out = cap.outputs[-1]                                    # what model.forward returned
    text_map = cap.call(0).position_map((B, L))              # (B, L) CE by target position, NaN unsupervised
    means, counts = cap.call(1).per_codebook(num_codebooks)  # per-codebook terms and supervised counts

What is recorded, per call of `torch.nn.functional.cross_entropy` (which `nn.CrossEntropyLoss`
calls): the detached input and target, reduction, ignore_index, label_smoothing, class weight, the
result, the per-position CE recomputed with reduction='none' (same ignore_index, smoothing and
weight; NaN where the target is ignore_index), and the call site `file:line` (the first frame
outside torch).  Code that bound `cross_entropy` by name before the context opened
(`from torch.nn.functional import cross_entropy` at import time) is not seen: `capture` also
patches the names listed in `also_patch` ("module:attribute") for that case.

Pipelines may import this module (it is neutral code; it imports nothing from the harness).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import sys
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

_TORCH_DIR = os.path.dirname(torch.__file__)
_CROSS_ENTROPY = F.cross_entropy        # the unpatched function (captures nest)


@dataclasses.dataclass
class CECall:
    """One cross-entropy call.  Shapes follow `torch.nn.functional.cross_entropy`: input (N, C) or
    (N, C, d1, ...), target (N,) or (N, d1, ...) of class indices (float class probabilities: then
    per_position is the per-row loss)."""

    input: torch.Tensor                 # detached, as passed
    target: torch.Tensor                # detached, as passed
    reduction: str
    ignore_index: int
    label_smoothing: float
    weight: torch.Tensor | None
    result: torch.Tensor                # detached result of the call
    per_position: torch.Tensor          # float32, target's shape; NaN where target == ignore_index
    site: str                           # "file:line" of the caller (first frame outside torch)

    @property
    def supervised(self) -> int:
        """Number of targets that are not ignore_index."""
        return int((~torch.isnan(self.per_position)).sum())

    def per_codebook(self, num_codebooks: int, layout: str = "frame_codebook") -> tuple[torch.Tensor, torch.Tensor]:
        """(mean CE per codebook (num_codebooks,), supervised count per codebook (num_codebooks,)) of an
        audio call whose targets flatten to frames x codebooks: layout "frame_codebook" (codebook
        fastest, upstream's audio_logits (N, C, K) reshaped to (N*C, K)) or "codebook_frame" (frame
        fastest, labels (C, N)).  NaN mean where a codebook has no supervised target.
        Raises ValueError when the number of targets is not a multiple of num_codebooks."""
        flat = self.per_position.reshape(-1)
        if flat.numel() % num_codebooks:
            raise ValueError(f"CE call at {self.site}: {flat.numel()} targets do not split into {num_codebooks} "
                             "codebooks")
        grid = flat.reshape(-1, num_codebooks) if layout == "frame_codebook" else flat.reshape(num_codebooks, -1).T
        mask = ~torch.isnan(grid)                                   # (frames, num_codebooks)
        counts = mask.sum(0)
        sums = torch.where(mask, grid, torch.zeros_like(grid)).sum(0)
        return sums / counts.clamp_min(1) + torch.where(counts > 0, 0.0, float("nan")), counts


    def position_map(self, shape: Sequence[int], shift: int = 1) -> torch.Tensor:
        """The per-position CE as a `LossBreakdown.text_token_ce`-style map of `shape` (B, L), indexed
        by the TARGET position: a next-token call over logits[:, :-shift] and labels[:, shift:]
        (flattened or not) puts position t's value at t + shift; the first `shift` columns are NaN.
        Raises ValueError when the call's target count is not B * (L - shift)."""
        b, length = int(shape[0]), int(shape[1])
        flat = self.per_position.reshape(-1)
        if flat.numel() != b * (length - shift):
            raise ValueError(f"CE call at {self.site}: {flat.numel()} targets, expected {b} x ({length} - {shift})")
        out = torch.full((b, length), float("nan"), dtype=flat.dtype, device=flat.device)
        out[:, shift:] = flat.reshape(b, length - shift)
        return out


@dataclasses.dataclass
class Capture:
    """Everything recorded inside one `capture(...)` block, in call order."""

    calls: list[CECall] = dataclasses.field(default_factory=list)
    outputs: list[Any] = dataclasses.field(default_factory=list)     # the watched model's forward outputs

    def call(self, index: int | None = None, *, site: str | None = None) -> CECall:
        """The call at `index`, or the only call whose site contains `site`.  Raises LookupError
        (naming the recorded sites) when there is no such call or several match."""
        if index is not None:
            return self.calls[index]
        hits = [c for c in self.calls if site is None or site in c.site]
        if len(hits) != 1:
            raise LookupError(f"{len(hits)} cross-entropy calls match site={site!r}; recorded: "
                              f"{[c.site for c in self.calls]}")
        return hits[0]


def _call_site() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(_TORCH_DIR) and path != __file__:
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def per_position_ce(input: torch.Tensor, target: torch.Tensor, *, ignore_index: int = -100,
                    label_smoothing: float = 0.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """CE with reduction='none' in float32, NaN where target == ignore_index (target's shape)."""
    with torch.no_grad():
        x = input.detach().float()
        t = target.detach()
        if t.is_floating_point():           # class probabilities: one loss per row
            return _CROSS_ENTROPY(x, t.float(), weight=None if weight is None else weight.float(),
                                   reduction="none", label_smoothing=label_smoothing)
        ce = _CROSS_ENTROPY(x, t, weight=None if weight is None else weight.float(), ignore_index=ignore_index,
                             reduction="none", label_smoothing=label_smoothing)
        return torch.where(t == ignore_index, torch.full_like(ce, float("nan")), ce)


@contextlib.contextmanager
def capture(model: torch.nn.Module | None = None, *, also_patch: Sequence[str] = ()) -> Iterator[Capture]:
    """Record cross-entropy calls (and `model`'s forward outputs through a forward hook) inside the
    block; module docstring.  The patched functions are restored on exit, also on error."""
    cap = Capture()
    original = F.cross_entropy          # whatever is installed now (an enclosing capture's recorder)

    def recording(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  size_average: Any = None, ignore_index: int = -100, reduce: Any = None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> torch.Tensor:
        result = original(input, target, weight=weight, size_average=size_average, ignore_index=ignore_index,
                          reduce=reduce, reduction=reduction, label_smoothing=label_smoothing)
        cap.calls.append(CECall(input.detach(), target.detach(), reduction, ignore_index, label_smoothing,
                                None if weight is None else weight.detach(), result.detach(),
                                per_position_ce(input, target, ignore_index=ignore_index,
                                                label_smoothing=label_smoothing, weight=weight), _call_site()))
        return result

    patched: list[tuple[Any, str, Any]] = [(F, "cross_entropy", original)]
    for spec in also_patch:
        mod_name, _, attr = spec.partition(":")
        mod = importlib.import_module(mod_name)
        patched.append((mod, attr, getattr(mod, attr)))
    hook = model.register_forward_hook(lambda _m, _i, out: cap.outputs.append(out)) if model is not None else None
    try:
        for mod, attr, _ in patched:
            setattr(mod, attr, recording)
        yield cap
    finally:
        for mod, attr, old in patched:
            setattr(mod, attr, old)
        if hook is not None:
            hook.remove()
