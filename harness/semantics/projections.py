"""Canonical projections: pipeline outputs -> quantities that mean the same thing on both sides.

The two pipelines differ *by design* in layout (reference voice as an assistant turn vs an
audio-in slot, BOS-first vs -100-first audio labels, delay pattern off vs on, different loss
reductions).  Raw fields are still diffed (against the catalogue's transforms), but the first
question a user asks — "do both sides train on the same target audio, show the model the same
reference voice, and score the same positions the same way?" — is answered by these
projections, which strip the by-design differences away.

All functions are pure and run on whatever device their inputs are on.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from boson_multimodal.model.higgs_audio.utils import build_delay_pattern_mask, revert_delay_pattern

IGNORE = -100


# ----------------------------------------------------------------------------- segments


def segment_bounds(starts: torch.Tensor | None, total: int) -> list[tuple[int, int]]:
    """`audio_*_ids_start` (num_segments,) -> [(start, end)) column ranges of each segment."""
    if starts is None or starts.numel() == 0 or total == 0:
        return []
    s = [int(x) for x in starts.tolist()]
    return [(a, b) for a, b in zip(s, s[1:] + [total])]


def apply_delay(codes: torch.Tensor, bos: int, pad: int) -> torch.Tensor:
    """(C, T) -> (C, T + C - 1) with the upstream delay pattern."""
    return build_delay_pattern_mask(codes.unsqueeze(0), bos_token_id=bos, pad_token_id=pad)[0].squeeze(0)


def revert_delay(codes: torch.Tensor) -> torch.Tensor:
    """(C, T + C - 1) -> (C, T), inverse of `apply_delay`."""
    return revert_delay_pattern(codes)


# ----------------------------------------------------------------------------- dataset stage


def audio_codes(item: Any, index: int | None) -> torch.Tensor | None:
    """The codes (C, T) of audio `index` of a DatasetItem's sample, or None."""
    if index is None:
        return None
    sample = item.sample
    starts = sample.audio_ids_start
    total = sample.audio_ids_concat.shape[-1]
    bounds = segment_bounds(starts, total)
    if index >= len(bounds):
        return None
    a, b = bounds[index]
    return sample.audio_ids_concat[:, a:b]


def dataset_projection(item: Any) -> dict[str, Any]:
    """Layout-free view of one dataset item."""
    target = audio_codes(item, item.target_audio_index)
    reference = audio_codes(item, item.reference_audio_index)
    labels = tuple(item.label_audio_indices)
    same = (target is not None and reference is not None and target.shape == reference.shape
            and bool(torch.equal(target, reference)))
    return {
        "target_audio_codes": target,                         # (C, T_target)
        "reference_audio_codes": reference,                   # (C, T_ref)
        "target_is_reference_clip": same,
        "reference_audio_is_label": item.reference_audio_index in labels,
        "label_audio_count": len(labels),
    }


_TURN = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S)
AUDIO_IN_SPAN = "<|audio_bos|><|AUDIO|><|audio_eos|>"


def prompt_transcripts(prompt: str) -> dict[str, str | None]:
    """The target and reference transcripts as the model reads them, from a decoded prompt.

    Works for both layouts: the voice prompt as an audio-in slot inside the last user turn
    (`ref text <|AUDIO|> target text`), or as an earlier turn pair (first user turn = reference
    transcript, last user turn = target transcript).  This catches a transcript paired with the
    wrong audio, which no audio projection sees.
    """
    users = [content for role, content in _TURN.findall(prompt) if role == "user"]
    if not users:
        return {"target_transcript": None, "reference_transcript": None}
    last = users[-1]
    if AUDIO_IN_SPAN in last:
        ref_text, target = last.split(AUDIO_IN_SPAN, 1)
    else:
        target, ref_text = last, (users[0] if len(users) > 1 else None)
    return {"target_transcript": target.strip(),
            "reference_transcript": None if ref_text is None else ref_text.strip()}


# ----------------------------------------------------------------------------- collator stage


def supervised_audio_codes(label_audio_ids: torch.Tensor | None, starts: torch.Tensor | None,
                           *, delayed: bool, bos: int, eos: int) -> torch.Tensor:
    """The audio codes the labels actually supervise, delay pattern reverted.

    Per segment: revert the delay pattern if it was applied, then keep the frames whose label is a
    real code (not -100, not stream BOS/EOS in any codebook).  Concatenated over segments:
    (C, total supervised frames).  Empty (C, 0) when nothing is supervised, which is exactly the
    "audio loss is always 0.0" signature.
    """
    if label_audio_ids is None or label_audio_ids.numel() == 0:
        return torch.zeros((0, 0), dtype=torch.long)
    out = []
    for a, b in segment_bounds(starts, label_audio_ids.shape[-1]):
        seg = label_audio_ids[:, a:b]
        if delayed and seg.shape[-1] >= seg.shape[0]:
            seg = revert_delay(seg)
        keep = ((seg != IGNORE) & (seg != bos) & (seg != eos)).all(dim=0)
        out.append(seg[:, keep])
    if not out:
        return label_audio_ids.new_zeros((label_audio_ids.shape[0], 0))
    return torch.cat(out, dim=1)


def undelayed_segments(ids: torch.Tensor, starts: torch.Tensor | None, *, delayed: bool) -> torch.Tensor:
    """audio_out_ids with the delay pattern reverted per segment, re-concatenated: (C, sum T_seg)."""
    if ids is None or ids.numel() == 0:
        return torch.zeros((0, 0), dtype=torch.long)
    parts = []
    for a, b in segment_bounds(starts, ids.shape[-1]):
        seg = ids[:, a:b]
        parts.append(revert_delay(seg) if delayed and seg.shape[-1] >= seg.shape[0] else seg)
    return torch.cat(parts, dim=1) if parts else ids[:, :0]


def delay_segments(ids: torch.Tensor, starts: torch.Tensor | None, *, bos: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the delay pattern to every segment; returns (ids, new starts)."""
    if ids is None or ids.numel() == 0:
        return ids, starts
    parts, new_starts, pos = [], [], 0
    for a, b in segment_bounds(starts, ids.shape[-1]):
        seg = apply_delay(ids[:, a:b], bos, pad)
        parts.append(seg)
        new_starts.append(pos)
        pos += seg.shape[-1]
    return torch.cat(parts, dim=1), torch.tensor(new_starts, dtype=torch.long, device=ids.device)


# ----------------------------------------------------------------------------- loss stage


def per_position_audio_ce(audio_logits: torch.Tensor, labels: torch.Tensor, starts: torch.Tensor | None,
                          *, shift: bool = True) -> torch.Tensor:
    """Independent per-position CE, target-indexed: out[j, c] = CE(logits[j-1, c], labels[c, j]).

    The shift never crosses a segment (the first frame of each segment gets NaN).  With
    `shift=False`, out[j, c] = CE(logits[j, c], labels[c, j]) (the "no-shift" copy task).
    audio_logits: (N, C, V); labels: (C, N).  Returns (N, C) float32, NaN where unsupervised.
    """
    n, c, _ = audio_logits.shape
    labels = labels.to(audio_logits.device)   # batches stay on the CPU; logits may be on CUDA
    out = torch.full((n, c), float("nan"), dtype=torch.float32, device=audio_logits.device)
    for a, b in segment_bounds(starts, n):
        lo = a + 1 if shift else a
        if b - lo <= 0:
            continue
        logits = audio_logits[lo - 1 if shift else lo: b - 1 if shift else b].float()   # (T', C, V)
        target = labels[:, lo:b].transpose(0, 1)                                          # (T', C)
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1).clamp_min(0), reduction="none"
        ).view_as(target)
        ce = torch.where(target == IGNORE, torch.full_like(ce, float("nan")), ce)
        out[lo:b] = ce
    return out


def common_positions(a: torch.Tensor | None, b: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Keep only positions both sides supervise (non-NaN on both); elsewhere set NaN on both."""
    if a is None or b is None or a.shape != b.shape:
        return a, b
    both = ~torch.isnan(a) & ~torch.isnan(b)
    nan = torch.full_like(a, float("nan"))
    return torch.where(both, a, nan), torch.where(both, b, nan)


def find_key(tree: Any, key: str) -> Any:
    """Depth-first search for `key` in nested dicts/lists (effective_config lookups)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for v in tree.values():
            found = find_key(v, key)
            if found is not None:
                return found
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            found = find_key(v, key)
            if found is not None:
                return found
    return None


def batch_field(batch: Any, name: str) -> Any:
    """Read a field from HiggsAudioBatchInput or a dict-like batch."""
    if isinstance(batch, dict):
        return batch.get(name)
    return getattr(batch, name, None)

