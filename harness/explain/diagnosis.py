"""Name likely causes from known signatures of the "audio loss is 0.0" family of bugs.

Each rule looks at the evidence the runner gathered (projections, loss terms, DDP ranks, the
checkpoint's parameter names) and, when its signature matches, returns a `Diagnosis` tied to the
stage and field where it shows.  Rules are ordered by pipeline stage; the report attaches the first
matching one to `first_divergence`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from harness.report import Diagnosis, StageResult

Rule = Callable[[dict, dict[str, StageResult]], list[Diagnosis]]


def _labels_are_reference_clip(ev: dict, _: dict) -> list[Diagnosis]:
    hits = [sid for sid, (_pr, pc) in ev.get("dataset", {}).items() if pc["target_is_reference_clip"]]
    if not hits:
        return []
    return [Diagnosis(
        cause="audio labels equal the reference clip's codes: the dataset encoded the reference "
              "(input) audio as the training target (custom fault reference-audio-as-label)",
        evidence=f"target codes == reference codes for {len(hits)} sample(s), first {hits[0]!r}",
        stage="dataset", field="target_audio_codes")]


def _all_ignored_audio_labels(ev: dict, _: dict) -> list[Diagnosis]:
    out = []
    for side, e in ev.get("collator", {}).items():
        if e["label_audio_all_ignored"]:
            out.append(Diagnosis(
                cause=f"all audio labels are -100 (or absent) on the {side} side: label_audio_ids is "
                      "not mapped from the audio-out codes, so no audio token is ever supervised and "
                      "the audio loss can only be 0.0 or skipped",
                evidence=f"{side} label_audio_ids has no supervised entry",
                stage="collator", field="supervised_audio_codes"))
    return out


def _bos_in_labels(ev: dict, _: dict) -> list[Diagnosis]:
    e = ev.get("collator", {}).get("reference")
    if not e or not e["label_audio_has_bos"]:
        return []
    return [Diagnosis(
        cause="BOS in audio labels (reference quirk: label_audio_ids = audio_out_ids), expected",
        evidence="reference label_audio_ids contains the audio stream BOS id",
        stage="collator", field="label_audio_ids")]


def _random_layers(ev: dict, _: dict) -> list[Diagnosis]:
    absent = ev.get("parameters", {}).get("absent_from_checkpoint", {})
    out = []
    for side, names in absent.items():
        if names:
            out.append(Diagnosis(
                cause=f"parameters absent from the checkpoint on the {side} side: config flags added "
                      "randomly initialised layers, so outputs and losses sit near chance level "
                      "(custom fault random-extra-layers)",
                evidence=f"{len(names)} parameter(s) not in the checkpoint, first {names[0]!r}",
                stage="forward", field="logits"))
    return out


def _zero_or_nan_terms(ev: dict, _: dict) -> list[Diagnosis]:
    out = []
    for side in ("reference", "custom"):
        e = ev.get("loss", {}).get(side)
        if not e:
            continue
        for term in ("audio", "text"):
            v = e[term]
            if math.isnan(v) or math.isinf(v):
                out.append(Diagnosis(cause=f"non-finite {term} loss on the {side} side",
                                     evidence=f"{term} = {v}", stage="loss", field=term))
            elif v == 0.0 and (term == "text" or e["has_target_audio"]):
                out.append(Diagnosis(
                    cause=f"{term} loss is exactly 0.0 on the {side} side although the batch has "
                          f"targets: the term was silently skipped or zeroed"
                          + (" (custom fault silent-zero-audio-loss)" if term == "audio" and side == "custom" else ""),
                    evidence=f"{term} = 0.0 with {e['audio_supervised_tokens']} supervised audio tokens",
                    stage="loss", field="audio_ce_common" if term == "audio" else term))
    return out


def _no_shift(ev: dict, _: dict) -> list[Diagnosis]:
    m = ev.get("loss", {}).get("custom_matches")
    if not m or not m["unshifted"] or m["shifted"]:
        return []
    return [Diagnosis(
        cause="no next-token shift: the custom audio CE scores logits[t] against labels[t] (labels "
              "equal to the inputs, a copy task), instead of logits[t-1] (custom fault no-shift)",
        evidence="custom per-position audio CE matches the unshifted computation, not the shifted one",
        stage="loss", field="audio_ce_common")]


def _shift_crosses_segments(ev: dict, _: dict) -> list[Diagnosis]:
    e = ev.get("loss", {})
    if not e or "reference" not in e or "custom" not in e:
        return []
    r, c = e["reference"]["audio_supervised_tokens"], e["custom"]["audio_supervised_tokens"]
    if r <= c:
        return []
    return [Diagnosis(
        cause="shift crossing a segment (reference quirk): the reference's audio shift runs across "
              "segment and sample boundaries and scores each later segment's BOS, expected",
        evidence=f"reference scores {r} audio targets, custom {c}",
        stage="loss", field="audio_supervised_tokens")]


def _unsynced_ranks(ev: dict, _: dict) -> list[Diagnosis]:
    d = ev.get("ddp")
    if not d or not d["unsynced_ranks"]:
        return []
    agree = "the ranks also disagree with each other" if not d["ranks_agree"] else "the ranks agree with each other but not with one process"
    return [Diagnosis(
        cause="gradients not synchronised across ranks: DDP's all-reduce did not run on every "
              "micro-batch that should sync (forward on the unwrapped module, or no_sync inverted: "
              "custom faults ddp-unwrapped-forward / inverted-no-sync)",
        evidence=f"ranks {d['unsynced_ranks']} of {d['world_size']} ({d.get('backend', '')}) differ from the "
                 f"single-process gradients; {agree}",
        stage="backward", field=None)]


def _ranks_in_sync(ev: dict, _: dict) -> list[Diagnosis]:
    d = ev.get("ddp")
    if not d or d.get("unsynced_ranks") or d.get("step_unsynced_ranks") or "backend" not in d:
        return []
    what = "gradients after the all-reduce"
    if "step_unsynced_ranks" in d:
        what += (f", parameters after optimizer step 1 (bit-identical across ranks; vs one process "
                 f"{d.get('step_amplified_elements', 0)} of {d.get('step_param_elements', 0)} elements moved "
                 "differently where AdamW's first step amplifies near-zero gradients) and the global loss "
                 f"of {d['steps']} steps")
    return [Diagnosis(
        cause=f"DDP in sync: {d['world_size']} ranks ({d['backend']}) agree with one process on the same "
              f"global batch of {d['global_batch']} samples, expected",
        evidence=f"{what} within rtol {d['rtol']:g} / atol {d['atol']:g} on every rank "
                 f"({d['grad_accum']} micro-batches per rank)",
        stage="backward", field=None)]


RULES: tuple[Rule, ...] = (
    _labels_are_reference_clip, _all_ignored_audio_labels, _bos_in_labels, _random_layers,
    _no_shift, _zero_or_nan_terms, _shift_crosses_segments, _unsynced_ranks, _ranks_in_sync,
)


def diagnose(evidence: dict[str, Any], stages: dict[str, StageResult]) -> list[Diagnosis]:
    """All matching diagnoses; unexpected-divergence causes first, then expected quirks."""
    found: list[Diagnosis] = []
    for rule in RULES:
        found.extend(rule(evidence, stages))
    quirk = [d for d in found if d.cause.endswith("expected")]
    real = [d for d in found if not d.cause.endswith("expected")]
    return real + quirk
