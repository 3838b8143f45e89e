"""Audio code layouts of a collated batch, and conversions between declared layouts.

A collated batch holds, per audio segment, ``[BOS, c_1..c_T, EOS]`` columns of shape
(num_codebooks C, T + 2) in `audio_out_ids` (and `audio_in_ids`), optionally with the delay
pattern applied (boson_multimodal `build_delay_pattern_mask`: codebook c shifted right by c
columns, BOS to its left, EOS to its right, so each segment gets C - 1 more columns), and labels
in `label_audio_ids` at the SAME columns, either ``[BOS, codes, EOS]`` (``"bos_first"``) or
``[-100, codes, EOS]`` (``"ignore_first"``), delayed like the inputs.  A segment of an untrained
turn is all -100.

These functions turn one declared layout into another, so the harness can compare two pipelines
that declare different layouts element by element, and read a batch's actual layout back, so it
can check a pipeline against its own declaration.
"""

from __future__ import annotations

import torch

from harness.semantics.projections import IGNORE, apply_delay, revert_delay, segment_bounds


def segments(ids: torch.Tensor, starts: torch.Tensor | None) -> list[torch.Tensor]:
    """(C, N) concatenated segments -> list of (C, T_i) views."""
    if ids is None or ids.numel() == 0:
        return []
    return [ids[:, a:b] for a, b in segment_bounds(starts, ids.shape[-1])]


def _starts_of(parts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    lengths = [int(p.shape[-1]) for p in parts]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return torch.tensor(starts, dtype=torch.long, device=device)


def is_delayed(ids: torch.Tensor | None, starts: torch.Tensor | None, *, bos: int) -> bool | None:
    """Whether audio input ids carry the delay pattern: codebook c of every segment starts with
    c + 1 BOS tokens.  None when undecidable (no segment, or a single codebook)."""
    parts = segments(ids, starts)
    if not parts or parts[0].shape[0] < 2:
        return None
    c = parts[0].shape[0]
    for seg in parts:
        if seg.shape[-1] < c:
            return False
        for cb in range(c):
            if not bool((seg[cb, :cb + 1] == bos).all()):
                return False
    return True


def undelay(ids: torch.Tensor, starts: torch.Tensor | None, *, delayed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Revert the delay pattern per segment (identity when `delayed` is False); (ids, starts)."""
    parts = segments(ids, starts)
    if not parts:
        return ids, starts
    out = [revert_delay(p) if delayed and p.shape[-1] >= p.shape[0] else p for p in parts]
    return torch.cat(out, dim=1), _starts_of(out, ids.device)


def delay(ids: torch.Tensor, starts: torch.Tensor | None, *, bos: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the delay pattern per segment with fill values `bos` (left) and `pad` (right)."""
    parts = segments(ids, starts)
    if not parts:
        return ids, starts
    out = [apply_delay(p, bos, pad) for p in parts]
    return torch.cat(out, dim=1), _starts_of(out, ids.device)


def convert_audio_ids(ids: torch.Tensor, starts: torch.Tensor | None, *, from_delay: bool, to_delay: bool,
                      bos: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio input ids (and starts) of one delay setting as the other would collate them."""
    if ids is None or ids.numel() == 0 or from_delay == to_delay:
        return ids, starts
    plain, plain_starts = undelay(ids, starts, delayed=from_delay)
    return delay(plain, plain_starts, bos=bos, pad=eos) if to_delay else (plain, plain_starts)


def convert_labels(labels: torch.Tensor, starts: torch.Tensor | None, *, from_layout: str, from_delay: bool,
                   to_layout: str, to_delay: bool, bos: int, eos: int) -> torch.Tensor:
    """`label_audio_ids` (C, N) of one declared layout as another layout would have them.

    Per segment: revert the delay, set the first column to BOS ("bos_first") or -100
    ("ignore_first") unless the whole segment is unsupervised (all -100, kept), then delay again
    with (BOS, EOS) fills for "bos_first" (labels are the inputs) or (-100, -100) fills for
    "ignore_first" (upstream `HiggsAudioSampleCollator`).
    """
    if labels is None or labels.numel() == 0:
        return labels
    if (from_layout, from_delay) == (to_layout, to_delay):
        return labels
    out = []
    for seg in segments(labels, starts):
        plain = revert_delay(seg) if from_delay and seg.shape[-1] >= seg.shape[0] else seg
        plain = plain.clone()
        if not bool((plain == IGNORE).all()) and plain.shape[-1] > 0:
            plain[:, 0] = bos if to_layout == "bos_first" else IGNORE
        if to_delay:
            fill = (bos, eos) if to_layout == "bos_first" and not bool((plain == IGNORE).all()) else (IGNORE, IGNORE)
            plain = apply_delay(plain, *fill)
        out.append(plain)
    return torch.cat(out, dim=1)


def label_layout(labels: torch.Tensor | None, starts: torch.Tensor | None, *, delayed: bool, bos: int,
                 eos: int | None = None) -> str | None:
    """The layout the labels actually have: "bos_first", "ignore_first", "eos_first" (the first
    column holds the stream EOS), "mixed", or None when no supervised segment exists.  Unsupervised
    (all -100) segments are not counted."""
    seen = set()
    for seg in segments(labels, starts):
        plain = revert_delay(seg) if delayed and seg.shape[-1] >= seg.shape[0] else seg
        if plain.numel() == 0 or bool((plain == IGNORE).all()):
            continue
        first = plain[:, 0]
        if bool((first == bos).all()):
            seen.add("bos_first")
        elif bool((first == IGNORE).all()):
            seen.add("ignore_first")
        elif eos is not None and bool((first == eos).all()):
            seen.add("eos_first")
        else:
            seen.add("mixed")
    if not seen:
        return None
    return seen.pop() if len(seen) == 1 else "mixed"
