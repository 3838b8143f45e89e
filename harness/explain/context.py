"""Relation contexts for the harness's fields: what each position holds (token kinds, frame roles),
which ids have names, and which quantities a scale factor may match.

Built per stage by the runner from the common input, so a relation can say "12 positions masked:
all <|eot_id|> of the target turn" or "the last frame (stream EOS) of every segment".
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from harness.explain.relations import IGNORE, Context
from harness.semantics.projections import segment_bounds
from harness.semantics.prompt import SpecialIds, parse_turns, turn_key


def text_kinds(input_ids: torch.Tensor, ids: SpecialIds, tokenizer: Any,
               audio_roles: Sequence[tuple[int | None, int | None]] | None = None) -> list[list[str]]:
    """Kind of every position of a (B, L) or (L,) prompt: a special token's name, or "text of the
    <role> turn [<semantic key>]".  audio_roles[b] = (target audio index, reference audio index)."""
    rows = input_ids.reshape(-1, input_ids.shape[-1]) if input_ids.dim() > 1 else input_ids.reshape(1, -1)
    names = ids.names()
    out = []
    for b, row in enumerate(rows.tolist()):
        target, ref = audio_roles[b] if audio_roles and b < len(audio_roles) else (None, None)
        kinds = ["?"] * len(row)
        for turn in parse_turns(row, ids, tokenizer):
            key = turn_key(turn, target_audio=target, reference_audio=ref)
            where = f"{turn.role} turn" + (f" ({key})" if key not in ("prompt",) else "")
            for p in range(turn.start, min(turn.end, len(row))):
                tok = row[p]
                kinds[p] = f"{names[tok]} of the {where}" if tok in names else f"text of the {where}"
        out.append(kinds)
    return out


def text_context(input_ids: torch.Tensor, ids: SpecialIds, tokenizer: Any, *,
                 audio_roles: Sequence[tuple[int | None, int | None]] | None = None,
                 scale_sources: Mapping[str, float] | None = None) -> Context:
    """Context for (B, L) / (L,) token-id and label fields aligned with `input_ids`."""
    kinds = text_kinds(input_ids, ids, tokenizer, audio_roles)
    two_d = input_ids.dim() > 1

    def kind_of(index: tuple[int, ...]) -> str | None:
        b, p = (index[0], index[-1]) if two_d and len(index) >= 2 else (0, index[-1])
        if b < len(kinds) and p < len(kinds[b]):
            return kinds[b][p]
        return "padding"

    special = {IGNORE: "-100 (ignored)", **{k: v for k, v in ids.names().items()}}
    return Context(special_ids=special, kind_of=kind_of, scale_sources=dict(scale_sources or {}))


def audio_context(starts: torch.Tensor | None, total: int, *, bos: int, eos: int, frame_axis: int = 1,
                  scale_sources: Mapping[str, float] | None = None) -> Context:
    """Context for audio code grids: (C, N) with frame_axis=1, or (N, C) per-position maps with
    frame_axis=0.  Frames are named by their place in their segment."""
    bounds = segment_bounds(starts, total)
    role = ["frame"] * total
    for k, (a, b) in enumerate(bounds):
        for j in range(a, b):
            role[j] = f"frame {j - a} of segment {k}"
        if b > a:
            role[a] = f"first frame of segment {k}"
            role[b - 1] = f"last frame of segment {k}"

    def kind_of(index: tuple[int, ...]) -> str | None:
        j = index[frame_axis] if len(index) > frame_axis else None
        if j is None or j >= total:
            return None
        r = role[j]
        return "first frame of a segment" if r.startswith("first") else (
            "last frame of a segment" if r.startswith("last") else "inner frame")

    return Context(special_ids={IGNORE: "-100 (ignored)", bos: "the stream BOS", eos: "the stream EOS"},
                   kind_of=kind_of, scale_sources=dict(scale_sources or {}))


def scale_context(scale_sources: Mapping[str, float]) -> Context:
    return Context(scale_sources=dict(scale_sources))


def gradient_ratio(expected: Mapping[str, torch.Tensor | None],
                   actual: Mapping[str, torch.Tensor | None]) -> float | None:
    """<actual, expected> / <expected, expected> over every parameter both have a gradient for: the
    least-squares scale of `actual` relative to `expected` (float64; None when `expected` is all zero).
    A loss scaled by k gives k; a detached term gives the other term's share."""
    num = den = 0.0
    for name, e in expected.items():
        a = actual.get(name)
        if e is None or a is None:
            continue
        num += float((e.double() * a.double().to(e.device)).sum())
        den += float((e.double() * e.double()).sum())
    return num / den if den > 0 else None


def gradient_cosine(a: Mapping[str, torch.Tensor | None], b: Mapping[str, torch.Tensor | None]) -> float | None:
    """Cosine between two gradients taken as one vector over every parameter both have (float64,
    rounded to 6 digits); None when either is all zero or they share none."""
    dot = na = nb = 0.0
    for name, x in a.items():
        y = b.get(name)
        if x is None or y is None:
            continue
        x, y = x.double(), y.double().to(x.device)
        dot, na, nb = dot + float((x * y).sum()), na + float((x * x).sum()), nb + float((y * y).sum())
    return round(dot / (na * nb) ** 0.5, 6) if na > 0 and nb > 0 else None
