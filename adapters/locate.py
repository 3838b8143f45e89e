"""Per-position cross-entropy out of a pipeline's own loss code, located at its label positions.

`higgs_common.capture` records what each ``cross_entropy`` call computed; this module also says
*which label position* each entry scored, which the harness needs to compare two losses entry by
entry (and which a call's own input and target no longer carry after masking and shifting).

A script's loss usually selects the supervised entries (``labels != -100``, a shift, a transpose)
and calls ``F.cross_entropy`` once per term or codebook with the default mean.  The harness wants
the CE of every supervised entry at the position of its label (`LossBreakdown.text_token_ce`,
``audio_token_ce``).  `located_cross_entropy` runs the loss twice:

1. as is, with the module's ``F.cross_entropy`` recording each call's per-entry CE and its result;
2. as a probe, with every label tensor replaced by the flat index of each supervised entry
   (offset per tensor) and ``cross_entropy`` computing nothing: the targets each call receives
   are then the positions it scored, in the same order.

This holds for loss code whose selection only tests ``!= -100`` and slices, shifts or reshapes
(true of both public pipelines wrapped here).  Codes start above every label value, and the labels
found at the located positions must equal the targets of the real run: otherwise
`located_cross_entropy` raises ValueError.  `position_maps` turns the calls into the `LossBreakdown` maps; entries taken
from a tensor that is not the expanded text labels or ``label_audio_ids`` stay unplaced (counted).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Optional

import torch

IGNORE = -100


@dataclass
class LocatedCall:
    """One ``cross_entropy`` call of the loss."""

    classes: int                        # size of the class axis (text vocabulary, or one codebook)
    source: Optional[str]               # which label tensor its targets came from (None: no label tensor)
    index: torch.Tensor                 # flat indices into that tensor, in the call's order (N,)
    values: torch.Tensor                # per-entry CE, detached float32 (N,)
    out: torch.Tensor                   # what the call returned (keeps its graph)


@contextmanager
def _patched_cross_entropy(namespace: dict[str, Any], record: Callable[..., torch.Tensor]) -> Iterator[None]:
    real_f = namespace["F"]
    namespace["F"] = SimpleNamespace(**{**{k: getattr(real_f, k) for k in dir(real_f) if not k.startswith("__")},
                                        "cross_entropy": record})
    try:
        yield
    finally:
        namespace["F"] = real_f


def located_cross_entropy(namespace: dict[str, Any], run: Callable[[dict[str, Optional[torch.Tensor]]], Any],
                          labels: dict[str, Optional[torch.Tensor]]) -> tuple[Any, list[LocatedCall]]:
    """(run(labels), its located cross_entropy calls) -- see the module docstring.

    `namespace`: globals of the module whose ``F`` the loss calls (``fn.__globals__``).  `run(labels)`
    runs the loss on the given label tensors.  Raises ValueError when the probe makes other calls.
    """
    torch_f = namespace["F"]
    calls: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def real(input: torch.Tensor, target: torch.Tensor, *a: Any, **kw: Any) -> torch.Tensor:
        out = torch_f.cross_entropy(input, target, *a, **kw)
        values = torch_f.cross_entropy(input.detach().float(), target, reduction="none",
                                       ignore_index=kw.get("ignore_index", IGNORE))
        calls.append((input.shape[-1], values, out, target.detach().reshape(-1).clone()))
        return out
    with _patched_cross_entropy(namespace, real):
        result = run(labels)

    codes: dict[str, Optional[torch.Tensor]] = {}
    bounds: list[tuple[str, int, int]] = []
    # Codes start above every label value, so a selection that tests label values selects other entries.
    offset = 1 + max([int(t.max()) for t in labels.values() if t is not None and t.numel()] + [0])
    for name, t in labels.items():
        if t is None:
            codes[name] = None
            continue
        flat = torch.arange(offset, offset + t.numel(), device=t.device).reshape(t.shape)
        codes[name] = torch.where(t != IGNORE, flat, t)
        bounds.append((name, offset, offset + t.numel()))
        offset += t.numel()
    probes: list[tuple[int, torch.Tensor]] = []

    def probe(input: torch.Tensor, target: torch.Tensor, *a: Any, **kw: Any) -> torch.Tensor:
        probes.append((input.shape[-1], target.detach().reshape(-1).clone()))
        return input.sum() * 0.0
    with _patched_cross_entropy(namespace, probe):
        run(codes)

    differ = ValueError("the loss made different cross_entropy calls when labels were replaced by their positions; "
                        "its per-position CE cannot be located")
    if [(c, v.numel()) for c, v, _, _ in calls] != [(c, t.numel()) for c, t in probes]:
        raise differ
    located = []
    for (classes, values, out, target), (_, where) in zip(calls, probes):
        kept = where != IGNORE                              # entries the call itself ignores
        where, values, target = where[kept], values.reshape(-1)[kept.to(values.device)], target[kept.to(target.device)]
        source, index = None, where
        for name, lo, hi in bounds:
            if where.numel() and bool(((where >= lo) & (where < hi)).all()):
                source, index = name, where - lo
                if not torch.equal(labels[name].reshape(-1)[index.to(labels[name].device)].cpu(), target.cpu()):
                    raise differ                            # the located labels are not the ones it scored
        located.append(LocatedCall(classes, source, index.cpu(), values.reshape(-1).cpu(), out))
    return result, located


@dataclass
class CEMaps:
    """`LossBreakdown` fields built from located calls."""

    text_ce: Optional[torch.Tensor]      # (B, L_exp) NaN where unsupervised
    audio_ce: torch.Tensor               # (N_frames, C) NaN where unsupervised
    per_codebook: torch.Tensor           # (C,) the call's result per codebook, NaN where none
    text_tokens: int
    audio_tokens: int
    unplaced: dict[str, int] = field(default_factory=dict)   # entries scored from other tensors, by source


def position_maps(calls: list[LocatedCall], *, vocab: int, text_labels: Optional[torch.Tensor], text_source: str,
                  audio_labels: Optional[torch.Tensor], audio_source: str, num_codebooks: int,
                  num_frames: int) -> CEMaps:
    """Place text calls (class axis == `vocab`) at `text_source` positions of (B, L_exp) and audio
    calls at `audio_source` positions of ``label_audio_ids`` (C, N) -> (frame, codebook)."""
    text_ce = torch.full(tuple(text_labels.shape), float("nan")) if text_labels is not None else None
    audio_ce = torch.full((num_frames, num_codebooks), float("nan"))
    per_cb = torch.full((num_codebooks,), float("nan"))
    n_text = n_audio = 0
    unplaced: dict[str, int] = {}
    for c in calls:
        if c.classes == vocab:
            n_text += c.index.numel()
            if c.source == text_source and text_ce is not None:
                text_ce.view(-1)[c.index] = c.values
                continue
        else:
            n_audio += c.index.numel()
            if c.source == audio_source and audio_labels is not None and c.index.numel():
                frames = audio_labels.shape[1]
                cb, frame = c.index // frames, c.index % frames
                audio_ce[frame, cb] = c.values
                if bool((cb == cb[0]).all()):
                    per_cb[int(cb[0])] = c.out.detach().float().cpu()
                continue
        unplaced[str(c.source)] = unplaced.get(str(c.source), 0) + c.index.numel()
    return CEMaps(text_ce, audio_ce, per_cb, n_text, n_audio, unplaced)
