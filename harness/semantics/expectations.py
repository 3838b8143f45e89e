"""Expected differences between two pipelines, derived from their declared conventions.

This replaces a hand-written pairwise catalogue: for every convention on which the two
declarations differ, `derive` emits one `Expected` entry per field that convention changes, with a
reason generated from both declarations and a `transform` that turns the reference's value into
the value the custom side must then have.  The custom value is diffed against that transformed
value, so a single wrong element still shows, at its own index.  When the declarations agree, no
entry exists and the field is compared raw.

Entries never waive a field: each has a `transform` (reference value, info -> expected custom
value) or a `holds` predicate (reference, custom, info -> bool) that must be true for the difference
to count as expected (`tests/harness/test_expectations.py` enforces it).  Pair-specific entries
(`harness.semantics.overrides`) are the exception and follow the same rule.

`info` keys the transforms read (filled by the runner): `record` (the canonical record, dataset
stage), `declared_custom` (the custom side's declared views of that record), `batch_ref` fields
(collator stage: `ref_audio_out_ids`, `ref_audio_out_ids_start`, `ref_audio_in_ids`,
`ref_audio_in_ids_start`, `audio_out_token_id`, `input_ids`, `trained_audio_out`), `bos`, `eos`,
and at the loss stage `expected_custom_terms` (the reference's per-position CE reduced the way the
custom side declares).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from harness.semantics import audio_layout as AL
from higgs_common.conventions import Conventions, function_name


@dataclass(frozen=True)
class Expected:
    """One expected difference: where, why, and how the custom value follows from the reference's."""

    id: str
    stage: str
    field: str                       # exact field name, or a prefix ending in "*"
    reason: str
    transform: Optional[Callable[[Any, dict], Any]] = None     # reference value, info -> expected custom value
    holds: Optional[Callable[[Any, Any, dict], bool]] = None   # (reference, custom, info) -> still expected?
    source: str = "conventions"      # "conventions" | "override"

    def covers(self, stage: str, field: str) -> bool:
        if stage != self.stage:
            return False
        if self.field.endswith("*"):
            return field.startswith(self.field[:-1])
        return field == self.field

    def to_json(self) -> dict:
        kind = "transform" if self.transform else "predicate"
        return {"id": self.id, "stage": self.stage, "field": self.field, "reason": self.reason, "check": kind,
                "source": self.source}


class Catalogue:
    """The expected differences of one comparison (derived + overrides), looked up by field."""

    def __init__(self, entries: list[Expected]) -> None:
        for e in entries:
            if e.transform is None and e.holds is None:
                raise ValueError(f"expected difference {e.id!r} has neither a transform nor a predicate: "
                                 "a blanket waiver would hide real divergences")
        self.entries = list(entries)

    def lookup(self, stage: str, field: str) -> Expected | None:
        base = field.split("@", 1)[0]          # declaration checks ("x@custom") are never waived
        if base != field:
            return None
        return next((e for e in self.entries if e.covers(stage, field)), None)

    def to_json(self) -> list[dict]:
        return [e.to_json() for e in self.entries]


# ------------------------------------------------------------------------------ helpers


def _say(value: Any) -> str:
    if callable(value):
        return function_name(value)
    if isinstance(value, frozenset):
        return "{" + ", ".join(sorted(value)) + "}"
    return repr(value)


def _declared(name: str, ref: Any, cus: Any) -> str:
    return f"{name}: the reference declares {_say(ref)}, the custom side {_say(cus)}"


def _unmask_audio_out(ref: torch.Tensor, info: dict) -> torch.Tensor:
    """Reference label_ids with <|AUDIO_OUT|> masked -> the custom side's, which keeps the token's
    label where its turn is trained (`info["trained_audio_out"]`: bool mask of those positions)."""
    out = ref.clone()
    trained = info["trained_audio_out"].to(out.device)
    out[trained] = info["audio_out_token_id"]
    return out


def _mask_audio_out(ref: torch.Tensor, info: dict) -> torch.Tensor:
    out = ref.clone()
    out[info["input_ids"].to(out.device) == info["audio_out_token_id"]] = AL.IGNORE
    return out


# ------------------------------------------------------------------------------ derivation


def derive(ref: Conventions, cus: Conventions, *, model_config: Any) -> list[Expected]:
    """Every expected difference that follows from the two declarations (module docstring)."""
    out: list[Expected] = []
    out += _dataset(ref, cus)
    out += _collator(ref, cus, model_config)
    out += _loss(ref, cus)
    return out


def _dataset(ref: Conventions, cus: Conventions) -> list[Expected]:
    out: list[Expected] = []
    if ref.normalize_transcript is not cus.normalize_transcript:
        out.append(Expected(
            "transcript-normalisation", "dataset", "target_transcript",
            _declared("target transcript normalisation", ref.normalize_transcript, cus.normalize_transcript)
            + "; the custom value is the custom normalisation of the record's text",
            transform=lambda r, info: cus.normalize_transcript(info["record"].text)))
    if ref.normalize_reference_transcript is not cus.normalize_reference_transcript:
        out.append(Expected(
            "reference-transcript-normalisation", "dataset", "reference_transcript",
            _declared("reference transcript normalisation", ref.normalize_reference_transcript,
                      cus.normalize_reference_transcript)
            + "; the custom value is the custom normalisation of the record's reference text",
            transform=lambda r, info: cus.normalize_reference_transcript(info["record"].ref_text)))
    if (ref.target_turn_text, ref.target_turn_template) != (cus.target_turn_text, cus.target_turn_template):
        out.append(Expected(
            "target-turn-text", "dataset", "supervised_text/target",
            _declared("text in the target's assistant turn", (ref.target_turn_text, ref.target_turn_template),
                      (cus.target_turn_text, cus.target_turn_template))
            + "; the custom value is what its declared layout supervises in the target turn",
            transform=lambda r, info: info["declared_custom"]["supervised_text/target"]))
    if ref.voice_prompt != cus.voice_prompt and "none" in (ref.voice_prompt, cus.voice_prompt):
        out.append(Expected(
            "voice-prompt-absent", "dataset", "reference_audio_codes",
            _declared("voice prompt placement", ref.voice_prompt, cus.voice_prompt),
            transform=lambda r, info: None if cus.voice_prompt == "none" else info["declared_custom"]["reference_audio_codes"]))
    if ref.trains_voice_prompt != cus.trains_voice_prompt or ref.voice_prompt != cus.voice_prompt:
        why = (_declared("trained turns", ref.trained_turns, cus.trained_turns) + "; "
               + _declared("voice prompt placement", ref.voice_prompt, cus.voice_prompt))
        out += [
            Expected("voice-prompt-trained", "dataset", "reference_audio_is_label", why,
                     transform=lambda r, info: cus.trains_voice_prompt),
            Expected("voice-prompt-trained-count", "dataset", "label_audio_count", why,
                     transform=lambda r, info: 1 + int(cus.trains_voice_prompt)),
            Expected("voice-prompt-supervised-text", "dataset", "supervised_text/voice_prompt", why
                     + "; the custom value is what its declared layout supervises in the voice prompt's turn",
                     transform=lambda r, info: info["declared_custom"]["supervised_text/voice_prompt"]),
        ]
    return out


def _collator(ref: Conventions, cus: Conventions, model_config: Any) -> list[Expected]:
    out: list[Expected] = []
    rd, cd = ref.delay_pattern_for(model_config), cus.delay_pattern_for(model_config)
    if rd != cd:
        why = _declared("delay pattern", ref.delay_pattern, cus.delay_pattern) + (
            f" (-> {rd} vs {cd} with this checkpoint); the custom value is the reference value with the delay "
            f"pattern {'applied' if cd else 'reverted'} per segment")

        def ids(kind: str, part: int) -> Callable[[Any, dict], Any]:
            def transform(r: Any, info: dict) -> Any:
                src, starts = (r, info[f"ref_{kind}_ids_start"]) if part == 0 else (info[f"ref_{kind}_ids"], r)
                return AL.convert_audio_ids(src, starts, from_delay=rd, to_delay=cd, bos=info["bos"],
                                            eos=info["eos"])[part]
            return transform

        out += [Expected("delay-pattern-audio-out", "collator", "audio_out_ids", why, transform=ids("audio_out", 0)),
                Expected("delay-pattern-audio-out-starts", "collator", "audio_out_ids_start", why,
                         transform=ids("audio_out", 1)),
                Expected("delay-pattern-audio-in", "collator", "audio_in_ids", why, transform=ids("audio_in", 0)),
                Expected("delay-pattern-audio-in-starts", "collator", "audio_in_ids_start", why,
                         transform=ids("audio_in", 1))]
    if (ref.audio_label_layout, rd) != (cus.audio_label_layout, cd):
        why = (_declared("audio label layout", ref.audio_label_layout, cus.audio_label_layout) + "; "
               + _declared("delay pattern", rd, cd)
               + "; the custom value is the reference's labels converted segment by segment")
        out.append(Expected(
            "audio-label-layout", "collator", "label_audio_ids", why,
            transform=lambda r, info: AL.convert_labels(
                r, info["ref_audio_out_ids_start"], from_layout=ref.audio_label_layout, from_delay=rd,
                to_layout=cus.audio_label_layout, to_delay=cd, bos=info["bos"], eos=info["eos"])))
    if ref.mask_audio_out_token_label != cus.mask_audio_out_token_label:
        why = (_declared("mask_audio_out_token_label", ref.mask_audio_out_token_label, cus.mask_audio_out_token_label)
               + "; the custom value is the reference's label_ids with the <|AUDIO_OUT|> labels of trained turns "
               + ("restored" if ref.mask_audio_out_token_label else "masked"))
        out.append(Expected("audio-out-token-label", "collator", "label_ids", why,
                            transform=_unmask_audio_out if ref.mask_audio_out_token_label else _mask_audio_out))
    return out


def _loss(ref: Conventions, cus: Conventions) -> list[Expected]:
    if ref.loss == cus.loss:
        return []
    diffs = [f"{k}: reference {v!r}, custom {cus.loss.to_json()[k]!r}" for k, v in ref.loss.to_json().items()
             if cus.loss.to_json()[k] != v and k != "accumulation"]
    if not diffs:
        return []
    why = ("declared loss conventions differ (" + "; ".join(diffs) + "); the custom value is the reference's "
           "per-position cross-entropy reduced the way the custom side declares, over the positions it supervises")

    def term(name: str) -> Callable[[Any, dict], Any]:
        # Without the custom side's declared loss (its forward gave no expanded_labels) nothing can be
        # derived: the expectation is the reference value itself, a plain comparison.
        return lambda r, info: info["expected_custom_terms"][name] if "expected_custom_terms" in info else r

    return [Expected(f"loss-reduction-{name}", "loss", name, why, transform=term(name))
            for name in ("text", "audio", "per_codebook", "total", "text_supervised_tokens",
                         "audio_supervised_tokens", "per_codebook_supervised_tokens")]
