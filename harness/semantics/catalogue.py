"""THE catalogue of expected differences between the reference and the custom pipeline.

Every by-design difference is declared here once, with its reason and the field it covers, so a
report can separate "different, as designed" from "diverged".  An entry is never a blanket
waiver: where the difference is a known function of the reference value (delay pattern on/off,
BOS-first vs -100-first labels, ...) the entry carries a `transform` that turns the reference
value into the value the custom side must have, and the harness diffs custom against *that*; a
single corrupted element still shows up, at its own index.  Entries without a transform carry a
`holds` predicate that must be true for the difference to count as expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from harness.semantics import projections as P


@dataclass(frozen=True)
class Expected:
    id: str
    stage: str
    field: str                       # exact field name, or a prefix ending in "*"
    reason: str
    transform: Optional[Callable[[Any, dict], Any]] = None     # reference value -> expected custom value
    holds: Optional[Callable[[Any, Any, dict], bool]] = None   # (reference, custom, info) -> still expected?

    def covers(self, stage: str, field: str) -> bool:
        if stage != self.stage:
            return False
        if self.field.endswith("*"):
            return field.startswith(self.field[:-1])
        return field == self.field

    def to_json(self) -> dict:
        kind = "transform" if self.transform else ("predicate" if self.holds else "by-design")
        return {"id": self.id, "stage": self.stage, "field": self.field, "reason": self.reason, "check": kind}


# --------------------------------------------------------------------------- transforms


def _delay_audio_out(ref: torch.Tensor, info: dict) -> torch.Tensor:
    if not info["custom_delayed"]:
        return ref
    ids, _ = P.delay_segments(ref, info["ref_audio_out_ids_start"], bos=info["bos"], pad=info["eos"])
    return ids


def _delay_in(ref_ids: torch.Tensor, info: dict) -> tuple[torch.Tensor, torch.Tensor]:
    if not info["custom_delayed"]:
        return ref_ids, info["ref_audio_in_ids_start"]
    return P.delay_segments(ref_ids, info["ref_audio_in_ids_start"], bos=info["bos"], pad=info["eos"])


def _delay_starts(ref: torch.Tensor, info: dict) -> torch.Tensor:
    if not info["custom_delayed"]:
        return ref
    _, starts = P.delay_segments(info["ref_audio_out_ids"], ref, bos=info["bos"], pad=info["eos"])
    return starts


def _labels_minus100_first_delayed(ref: torch.Tensor, info: dict) -> torch.Tensor:
    """reference label_audio_ids = [BOS, codes, EOS] -> upstream labels [-100, codes, EOS], delayed."""
    parts = []
    for a, b in P.segment_bounds(info["ref_audio_out_ids_start"], ref.shape[-1]):
        seg = ref[:, a:b].clone()
        seg[:, 0] = P.IGNORE
        parts.append(P.apply_delay(seg, P.IGNORE, P.IGNORE) if info["custom_delayed"] else seg)
    return torch.cat(parts, dim=1) if parts else ref


def _audio_out_label_unmasked(ref: torch.Tensor, info: dict) -> torch.Tensor:
    """mask_audio_out_token_label True (reference) -> False (custom): <|AUDIO_OUT|> keeps its label."""
    out = ref.clone()
    out[info["input_ids"] == info["audio_out_token_id"]] = info["audio_out_token_id"]
    return out


def _custom_per_codebook(ref: Any, info: dict) -> torch.Tensor | None:
    """The custom reduction (pooled mean per codebook over ITS supervised positions), computed from
    the reference's per-position CE: equal per-position CE (audio_ce_common) + this reduction =
    equal per-codebook loss.  (C,)"""
    ref_ce, cus_ce = info.get("ref_audio_ce"), info.get("cus_audio_ce")
    if ref_ce is None or cus_ce is None or ref_ce.shape != cus_ce.shape:
        return None
    picked = torch.where(torch.isnan(cus_ce), torch.full_like(ref_ce, float("nan")), ref_ce)  # (N, C)
    counts = (~torch.isnan(picked)).sum(dim=0)
    sums = torch.nan_to_num(picked, nan=0.0).sum(dim=0)
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.zeros_like(sums))


def _custom_audio(ref: Any, info: dict) -> torch.Tensor | None:
    per_cb = _custom_per_codebook(ref, info)
    if per_cb is None:
        return None
    cus_ce = info["cus_audio_ce"]
    valid = (~torch.isnan(cus_ce)).any(dim=0)
    return per_cb[valid].mean() if bool(valid.any()) else per_cb.sum() * 0.0


def _custom_total(ref: Any, info: dict) -> torch.Tensor | None:
    audio = _custom_audio(ref, info)
    return None if audio is None else info["ref_text"] + audio


def _fewer_supervised_audio(ref: Any, cus: Any, info: dict) -> bool:
    """Reference also scores each later segment's BOS (shift across segments); custom does not."""
    return int(cus) == int(ref) - info["cross_segment_targets"] and int(cus) > 0


CATALOGUE: tuple[Expected, ...] = (
    # ---------------------------------------------------------------- dataset
    Expected("layout-input-ids", "dataset", "input_ids",
             "message layout differs by design: the reference puts the voice prompt in an earlier "
             "assistant turn (<|AUDIO_OUT|>), the custom pipeline in the user turn (<|AUDIO|>); the "
             "reference also normalises transcripts. Compared through the dataset projections instead."),
    Expected("layout-label-ids", "dataset", "label_ids",
             "message layout differs by design (see layout-input-ids); the reference trains its "
             "reference turn (no start_index)."),
    Expected("reference-turn-trained", "dataset", "reference_audio_is_label",
             "reference quirk: the voice prompt is an assistant turn before any start_index, so it is a "
             "training target too", holds=lambda r, c, i: bool(r) and not bool(c)),
    Expected("reference-turn-trained-count", "dataset", "label_audio_count",
             "reference quirk: reference turn trained, so the reference labels 2 audios per sample, "
             "the custom pipeline only the target", holds=lambda r, c, i: int(c) == 1 and int(r) == 2),
    # ---------------------------------------------------------------- collator
    Expected("delay-pattern-audio-out", "collator", "audio_out_ids",
             "delay pattern: off in the reference collator (use_delay_pattern=False), on in the custom "
             "one (from the model config, as the checkpoint was trained)", transform=_delay_audio_out),
    Expected("delay-pattern-audio-in", "collator", "audio_in_ids",
             "delay pattern on the audio-in (voice prompt) codes too: off in the reference collator, "
             "on in the custom one", transform=lambda ref, info: _delay_in(ref, info)[0]),
    Expected("delay-pattern-audio-in-starts", "collator", "audio_in_ids_start",
             "delay pattern lengthens each audio-in segment by num_codebooks-1 frames",
             transform=lambda ref, info: _delay_in(info["ref_audio_in_ids"], info)[1]),
    Expected("delay-pattern-starts", "collator", "audio_out_ids_start",
             "delay pattern lengthens each audio-out segment by num_codebooks-1 frames",
             transform=_delay_starts),
    Expected("bos-first-labels", "collator", "label_audio_ids",
             "reference quirk: label_audio_ids = audio_out_ids ([BOS, codes, EOS]); upstream/custom labels "
             "are [-100, codes, EOS], delayed when the delay pattern is on",
             transform=_labels_minus100_first_delayed),
    Expected("audio-out-token-label", "collator", "label_ids",
             "mask_audio_out_token_label: True in the reference (upstream default), False in the custom "
             "pipeline, so custom keeps the <|AUDIO_OUT|> token's text label",
             transform=_audio_out_label_unmasked),
    # ---------------------------------------------------------------- loss
    Expected("audio-loss-reduction", "loss", "audio",
             "different reductions: the reference shifts across the whole concatenated stream (segment "
             "and sample boundaries, BOS targets) and weights codebooks by its own positions; custom "
             "pools within-segment positions. Expected custom value: the reference's per-position CE "
             "reduced the custom way over the custom positions", transform=_custom_audio),
    Expected("audio-loss-reduction-per-codebook", "loss", "per_codebook",
             "same reduction difference as audio-loss-reduction, per codebook", transform=_custom_per_codebook),
    Expected("total-loss-reduction", "loss", "total",
             "total = text + audio under different audio reductions", transform=_custom_total),
    Expected("shift-across-segments", "loss", "audio_supervised_tokens",
             "reference quirk: the audio shift crosses segment and sample boundaries, so it also scores "
             "the BOS of every later segment", holds=_fewer_supervised_audio),
)


def lookup(stage: str, field: str) -> Optional[Expected]:
    """The catalogue entry covering (stage, field), if any."""
    for entry in CATALOGUE:
        if entry.covers(stage, field):
            return entry
    return None


def is_nan_number(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)
