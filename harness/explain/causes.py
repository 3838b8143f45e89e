"""Name the mechanism behind a divergence, from its stage, field, relation and the run's evidence.

Each rule looks at ONE diverged field (its name, its inferred relation, the comparison's
evidence) and returns a mechanism a person would fix plus the evidence it rests on, or nothing.
Rules are tried from the most specific to the most generic; the first that holds is the field's
cause.  A rule only fires when its own evidence holds for that field, so a cause is never borrowed
from another field or from an expected (declared) difference.

`explain_fields` attaches `FieldDiff.cause` to every unexpected divergence; `diagnoses` turns the
causes and the run-level facts (DDP in sync, parameters absent from the checkpoint) into the
report's list.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from harness.engine.diff import FieldDiff
from harness.report.model import Diagnosis, StageResult


@dataclass
class Facts:
    """What rules may look at besides the field itself."""

    evidence: dict[str, Any]
    stages: dict[str, StageResult]
    extras: dict[str, Any]

    def field(self, stage: str, name: str) -> FieldDiff | None:
        st = self.stages.get(stage)
        return next((f for f in st.fields if f.field == name), None) if st else None

    def diverged(self, stage: str, prefix: str) -> list[FieldDiff]:
        st = self.stages.get(stage)
        return [f for f in st.fields if f.unexpected and f.field.startswith(prefix)] if st else []


Result = tuple[str, str] | None
Rule = Callable[[FieldDiff, Facts], Result]


def _fault(x: Facts, name: str) -> str:
    """" (custom fault NAME)" when the custom side runs with that named fault switched on (its effective
    configuration's `faults`), else "": a mechanism is named by the fault only where the fault is on."""
    f = x.field("config", "faults")
    active = f.custom if f is not None else None
    return f" (custom fault {name})" if isinstance(active, (list, tuple)) and name in active else ""


def _rel(f: FieldDiff) -> dict:
    return f.relation or {"kind": "none", "words": "", "details": {}, "axis": None}


def _kind(f: FieldDiff) -> str:
    return _rel(f).get("kind", "none")


def _words(f: FieldDiff) -> str:
    return _rel(f).get("words", "")


def _details(f: FieldDiff) -> dict:
    return _rel(f).get("details") or {}


def _name(f: FieldDiff) -> str:
    return f.field.split("@", 1)[0]


def _side(f: FieldDiff) -> str:
    return f.side or "custom"


def _kinds_text(f: FieldDiff) -> str:
    kinds = _details(f).get("kinds") or {}
    return ", ".join(list(kinds)[:3])


def _kinds_have(f: FieldDiff, *words: str) -> bool:
    kinds = _details(f).get("kinds") or {}
    return bool(kinds) and all(any(w in k for w in words) for k in kinds)


# ---------------------------------------------------------------------------------- dataset


def _target_is_reference_clip(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "dataset" or f.field not in ("target_audio_codes", "target_is_reference_clip"):
        return None
    views = x.evidence.get("dataset", {}).get(f.sample or "")
    if not views:
        return None
    for side, view in zip(("reference", "custom"), views):
        if view.get("target_is_reference_clip"):
            return ("audio labels equal the reference clip's codes: the dataset encoded the reference (voice-prompt) "
                    f"audio as the training target on the {side} side, so training teaches copying the prompt"
                    + _fault(x, "reference-audio-as-label"),
                    f"target codes == reference codes for sample {f.sample!r} on the {side} side")
    return None


def _codes_of_other_sample(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "dataset" or f.field not in ("target_audio_codes", "reference_audio_codes"):
        return None
    ds = x.evidence.get("dataset", {})
    mine = ds.get(f.sample or "")
    if not mine:
        return None
    got = mine[1].get(f.field)
    if got is None:
        return None
    for sid, (ref_view, _c) in ds.items():
        for key in ("target_audio_codes", "reference_audio_codes"):
            other = ref_view.get(key)
            if other is not None and other.shape == got.shape and bool((other == got).all()) and (sid, key) != (f.sample, f.field):
                what = "target" if key == "target_audio_codes" else "reference clip"
                mine_name = f.field.replace('_codes', '').replace('_', ' ')
                if sid == f.sample:
                    return (f"the custom {mine_name} of sample {f.sample!r} is that same record's {what}: the target "
                            "and voice-prompt (reference) clips are swapped, or one clip's path is read for both",
                            f"custom codes equal the reference side's {key} of the same sample")
                return (f"the custom {mine_name} of sample {f.sample!r} is the "
                        f"{what} of sample {sid!r}: audio paired with the wrong record (index/ordering bug)",
                        f"custom codes equal the reference side's {key} of {sid!r}")
    return None


def _codes_length(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "dataset" or not (f.field.endswith("codes") or f.field.startswith("audio_ids_concat")):
        return None
    side = "custom" if f.check == "cross" else _side(f)
    if _kind(f) == "permutation" and _rel(f).get("axis") == "codebook":
        return (f"codebook order differs on the {side} side: the codec's codebook rows are stacked in the order "
                f"{_details(f).get('order')}, so every codebook trains on another's codes", _words(f))
    if _kind(f) == "dtype_roundtrip":
        return (f"audio codes passed through {_details(f).get('dtype')} on the {side} side: codes >= 256 are not "
                "exact there (a cast of the code tensor to the model's float dtype)", _words(f))
    if _kind(f) == "shift":
        return (f"audio codes shifted {abs(_details(f).get('k', 0))} frame(s) along {_rel(f).get('axis')} on the "
                f"{side} side: an offset in the audio read or the frame slicing", _words(f))
    if _kind(f) in ("truncation", "extension"):
        k = _details(f).get("k")
        return (f"audio codes {'cut short' if _kind(f) == 'truncation' else 'extended'} by {k} frame(s) on the "
                f"{_side(f)} side: the clip was trimmed, padded or resampled differently, or the wrong duration/offset "
                "was read", _words(f))
    return None


_TEXT_TRANSFORMS = (
    ("lowercased", str.lower), ("uppercased", str.upper), ("stripped of surrounding whitespace", str.strip),
    ("stripped of its final period", lambda t: t.rstrip(".")), ("given a final period", lambda t: t + "."),
    ("whitespace-collapsed", lambda t: " ".join(t.split())),
    ("stripped of punctuation", lambda t: "".join(ch for ch in t if ch.isalnum() or ch.isspace())),
)


def _transcript_side(f: FieldDiff, x: Facts) -> str:
    """Which side's transcript departs: the field's own side for a declared check; for a cross check,
    the side whose declared check of the same transcript and sample diverged too, if only one did."""
    if f.check == "declared":
        return f"the {_side(f)} side"
    base = f.field.split("@", 1)[0]
    sides = [role for role in ("reference", "custom")
             if any(g.sample == f.sample for g in x.diverged("dataset", f"{base}@{role}"))]
    return f"the {sides[0]} side" if len(sides) == 1 else "one side"


def _common_cut(f: FieldDiff, x: Facts) -> tuple[int, int] | None:
    """(n, samples) when every diverged sample of this transcript field is the other side's text cut
    to the same n characters, over at least two samples; else None."""
    lengths, count = set(), 0
    for g in x.diverged("dataset", f.field.split("@", 1)[0]):
        if g.field != f.field or not (isinstance(g.reference, str) and isinstance(g.custom, str)):
            continue
        short, long_ = sorted((g.reference, g.custom), key=len)
        if short == long_ or not long_.startswith(short):
            return None
        lengths.add(len(short))
        count += 1
    return (lengths.pop(), count) if count >= 2 and len(lengths) == 1 else None


def _transcript(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "dataset" or "transcript" not in f.field:
        return None
    if isinstance(f.reference, str) and isinstance(f.custom, str):
        for words, fn in _TEXT_TRANSFORMS:
            if fn(f.reference) == f.custom:
                which = "target" if f.field.startswith("target") else "reference"
                side = _transcript_side(f, x)
                return (f"the {which} transcript is {words} on {side} before tokenising, against the declared "
                        "normalisation", _words(f))
    d = _details(f)
    ref_part, cus_part = d.get("reference_part", ""), d.get("custom_part", "")
    which = "target" if f.field.startswith("target") else "reference"
    side = _transcript_side(f, x)
    cut = _common_cut(f, x)
    if cut is not None:
        n, count = cut
        return (f"the {which} transcripts are cut to their first {n} characters on {side} ({count} samples): a "
                "maximum-length truncation of the text before tokenising", _words(f))
    if _kind(f) in ("truncation", "extension", "replaced") and len((ref_part or "") + (cus_part or "")) <= 2:
        return (f"the {which} transcript the model reads differs from the declared normalisation of the record by "
                f"{(ref_part or cus_part)!r} on {side}: a normalisation rule (punctuation, final period, whitespace) "
                "applied, dropped or changed", _words(f))
    return (f"the {which} transcript the model reads on {side} is not the record's {which} text under the declared "
            "normalisation: wrong transcript paired with the audio, or text altered before tokenising", _words(f))


def _text_supervision(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "dataset" or not (f.field.startswith("supervised_text/") or _name(f) == "label_ids"):
        return None
    key = f.field.split("/", 1)[1] if "/" in f.field else ""
    text = f"{f.custom!s}"
    views = x.evidence.get("dataset", {}).get(f.sample or "")
    if key and views:
        for side, view in zip(("reference", "custom"), views):
            if view.get("supervised_text/prompt"):
                return (f"the prompt is trained on the {side} side: system/user tokens carry text labels (label_ids "
                        "copied from input_ids, or the assistant-turn / start_index rule ignored)",
                        f"{side} supervises {view['supervised_text/prompt'][:80]!r} outside assistant turns")
        for side, view in zip(("reference", "custom"), views):
            if "[label" in str(view.get("supervised_text/target", "")):
                return (f"text labels are shifted against their input tokens in the {side} dataset: upstream labels "
                        "equal the inputs and the loss shifts them, so this is a second next-token shift",
                        f"{side} target turn labels: {str(view['supervised_text/target'])[:100]!r}")
    if key == "prompt" and f.custom:
        return ("the prompt is trained: system/user tokens carry text labels (label_ids copied from input_ids, or "
                "the assistant-turn / start_index rule ignored)", f"custom supervises {text[:80]!r} outside assistant turns")
    if key == "target" and "[label" in text:
        return ("text labels are misaligned with their input tokens in the dataset (shifted): upstream labels equal the "
                "inputs and the loss shifts them, so a shift here is a second next-token shift",
                f"custom target turn labels: {text[:100]!r}")
    if key == "target" and not f.custom:
        return ("the target turn is not trained: its labels are all -100 (start_index after the target turn, or the "
                "wrong role)", "custom supervises nothing in the target turn")
    if key in ("voice_prompt", "other_assistant"):
        return (f"an assistant turn other than the target is trained ({key.replace('_', ' ')}) although the declared "
                "trained turns exclude it (or the reverse): start_index / trained-turn rule",
                f"reference {str(f.reference)[:60]!r} vs custom {text[:60]!r}")
    if _name(f) == "label_ids":
        if _kind(f) == "shift":
            return (f"text labels shifted {abs(_details(f).get('k', 1))} position(s) in the dataset on the {_side(f)} "
                    "side: labels must equal the inputs (the loss does the next-token shift)", _words(f))
        if _kind(f) == "unmasked":
            return (f"tokens that must be -100 carry labels on the {_side(f)} side ({_kinds_text(f)}): turns its "
                    "declaration does not train are trained", _words(f))
        if _kind(f) == "masked":
            return (f"tokens that must be supervised are -100 on the {_side(f)} side ({_kinds_text(f)}): a turn the "
                    "pipeline declares trained is not trained (start_index / trained-turn rule)", _words(f))
    return None


def _declared_dataset(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "dataset" or f.check != "declared":
        return None
    name = _name(f)
    if name == "audio_ids_concat":
        if _kind(f) == "none" and f.custom_shape == f.ref_shape:
            return (f"the {f.side} dataset puts codes in the wrong audio slots (the collator gives every <|AUDIO|> / "
                    "<|AUDIO_OUT|> placeholder the next slice of audio_ids_concat, in prompt order)", _words(f))
        return (f"the {f.side} dataset's audio codes are not the declared clips in the declared order", _words(f))
    if name == "input_ids":
        return (f"the {f.side} prompt differs from the one its declared conventions render ({_kinds_text(f) or 'tokens'}"
                "): layout, system message or transcript", _words(f))
    if name == "reference_audio_is_label":
        return (f"the {f.side} side {'labels' if f.custom else 'does not label'} the voice prompt, against its declared "
                "trained turns", f"declared {f.reference}, actual {f.custom}")
    return None


# ---------------------------------------------------------------------------------- collator


def _declared_collator(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "collator" or f.check != "declared":
        return None
    name = _name(f)
    if name == "delay_pattern":
        return (f"the {f.side} side declares the delay pattern {'on' if f.reference else 'off'} but its collator "
                f"{'does not apply' if f.reference else 'applies'} it", f"declared {f.reference}, batch {f.custom}")
    if name == "audio_label_layout":
        if f.custom == "eos_first":
            return (f"the {f.side} side's audio labels start with the stream EOS where it declares {f.reference}: "
                    "the audio BOS id is wrong (the EOS id used as BOS)", f"first label of each segment: the stream EOS")
        return (f"the {f.side} side declares {f.reference} audio labels but its batch has {f.custom} ones",
                f"first label of each segment: declared {f.reference}, actual {f.custom}")
    if name == "mask_audio_out_token_label":
        return (f"the {f.side} side declares mask_audio_out_token_label={f.reference} but the <|AUDIO_OUT|> labels of "
                f"trained turns are {'masked' if f.custom is True else 'kept' if f.custom is False else f.custom}",
                f"declared {f.reference}, actual {f.custom}")
    return None


def _batch_order(f: FieldDiff, x: Facts) -> Result:
    """Collator fields of a batch whose rows are the same samples in another order."""
    if f.stage != "collator":
        return None
    rows = [g for g in x.diverged("collator", "") if _kind(g) == "permutation" and _rel(g).get("axis") == "sample"]
    if not rows:
        return None
    order = _details(rows[0]).get("order")
    names = ", ".join(g.field for g in rows[:3])
    return (f"the {_side(f)} collator reorders the samples: batch row i holds item order[i] instead of item i, order = {order} "
            "(sorted by length, shuffled or grouped inside collate), so every per-sample field and the concatenated "
            "audio segments come in another order than the items given",
            f"{names}: the rows are the reference's in the order {order}")


def _collator_settings(f: FieldDiff, x: Facts) -> Result:
    """A collator divergence while the collators themselves are built with undeclared different settings
    (the config stage reads them off the collator objects)."""
    if f.stage != "collator":
        return None
    keys = [g for g in x.diverged("config", "collator.") if g.check == "cross"]
    if not keys:
        return None
    pairs = {g.field.split(".", 1)[1]: (g.reference, g.custom) for g in keys}
    ids = {k: v for k, v in pairs.items() if k.endswith("token_id")}
    swapped = [(a, b) for a in ids for b in ids if a < b and ids[a][0] == ids[b][1] and ids[a][1] == ids[b][0]]
    if swapped:
        a, b = swapped[0]
        return (f"the custom collator is built with {a} and {b} swapped ({a} = {ids[a][1]!r}, {b} = {ids[b][1]!r}): "
                "the streams those ids select trade places in the batch", f"config: {a} {ids[a]}, {b} {ids[b]}")
    shown = "; ".join(f"{k} = {v[1]!r} (reference {v[0]!r})" for k, v in list(pairs.items())[:3])
    return (f"the custom collator is built with undeclared different settings: {shown}",
            f"config stage: {', '.join(g.field for g in keys[:5])}")


def _all_labels_ignored(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "collator" or f.field not in ("supervised_audio_codes", "label_audio_ids"):
        return None
    for side, e in x.evidence.get("collator", {}).items():
        if e.get("label_audio_all_ignored"):
            return (f"all audio labels are -100 (or absent) on the {side} side: label_audio_ids is not mapped from the "
                    "audio-out codes, so no audio token is supervised and the audio loss can only be 0.0 or skipped"
                    + _fault(x, "unmapped-audio-labels"), f"{side} label_audio_ids has no supervised entry")
    return None


def _audio_labels(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "collator" or f.field not in ("supervised_audio_codes", "label_audio_ids", "audio_out_ids",
                                                "audio_in_ids"):
        return None
    kind, d = _kind(f), _details(f)
    what = "audio labels" if "label" in f.field or "supervised" in f.field else f.field
    if kind == "shift" and _rel(f).get("axis") == "frame":
        k = d.get("k", 0)
        if "label" in f.field or "supervised" in f.field:
            return (f"{what} shifted {abs(k)} frame(s) {'left (earlier)' if k < 0 else 'right (later)'}: "
                    + ("a second next-token shift (the collator already aligns labels with inputs; the loss shifts)"
                       if k < 0 else "labels lag their inputs (off by one)"), _words(f))
        return (f"{what} shifted {abs(k)} frame(s) along the frame axis: codes offset against their segment "
                "(delay pattern off by one, or BOS/EOS placement)", _words(f))
    if kind == "permutation" and _rel(f).get("axis") == "codebook":
        return (f"codebook rows permuted in {what}: codebook order ({d.get('order')}) differs, so every codebook is "
                "trained on another codebook's codes", _words(f))
    if kind in ("truncation", "extension") and _rel(f).get("axis") == "frame":
        return (f"{what}: {d.get('k')} frame(s) {'missing' if kind == 'truncation' else 'added'} at the {d.get('where')} "
                f"({d.get('values') or 'codes'}): the stream EOS/BOS handling or the segment length differs", _words(f))
    if kind in ("masked", "unmasked"):
        kinds = _kinds_text(f)
        side = "custom" if kind == "masked" else "reference"
        if "last frame" in kinds:
            return (f"the stream EOS of each audio segment is not supervised (masked to -100) on the {side} side: the "
                    "model never learns to stop", _words(f))
        return (f"{what}: {d.get('count')} position(s) supervised on one side are -100 on the {side} side "
                f"({kinds})", _words(f))
    if kind == "replaced":
        return (f"{what}: positions replaced by {d.get('name')} ({_kinds_text(f)})", _words(f))
    if kind == "dtype_roundtrip":
        return (f"{what} passed through {d.get('dtype')}: codes >= 256 are not exact in bfloat16 (a cast of the code "
                "tensor to a float dtype)", _words(f))
    if kind == "offset":
        return (f"{what} offset by {d.get('offset')}: codes or special ids shifted (codebook offset, BOS/EOS ids)",
                _words(f))
    return None


def _collator_text(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "collator" or f.field not in ("input_ids", "label_ids", "attention_mask"):
        return None
    kind = _kind(f)
    sides = {role: e.get("pad_side") for role, e in x.evidence.get("collator", {}).items()}
    if sides.get("reference") and sides.get("custom") and sides["reference"] != sides["custom"]:
        return (f"batches are padded on the {sides['custom']} on the custom side and on the {sides['reference']} on "
                "the reference side (pad_left)", f"padding side: reference {sides['reference']}, custom {sides['custom']}")
    if kind == "shift" and _rel(f).get("axis") == "position":
        return ("batch rows shifted along the positions: padding on the other side (pad_left) or a shifted copy of the "
                "labels", _words(f))
    if f.field == "label_ids" and kind in ("masked", "unmasked"):
        if _kinds_have(f, "<|AUDIO_OUT|>"):
            return ("the <|AUDIO_OUT|> text labels are masked/kept against the declared mask_audio_out_token_label",
                    _words(f))
        return (f"text labels {'masked' if kind == 'masked' else 'unmasked'} by the collator ({_kinds_text(f)})", _words(f))
    if kind == "replaced" and f.field == "input_ids":
        return (f"token ids replaced by {_details(f).get('name')} in the batch ({_kinds_text(f)}): pad id or special "
                "token mapping differs", _words(f))
    return None


# ---------------------------------------------------------------------------------- forward


def _random_layers(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "forward":
        return None
    absent = x.evidence.get("parameters", {}).get("absent_from_checkpoint", {})
    for side, names in absent.items():
        if names:
            return (f"parameters absent from the checkpoint on the {side} side: config flags added randomly initialised "
                    "layers, so outputs and losses sit near chance level" + _fault(x, "random-extra-layers"),
                    f"{len(names)} parameter(s) not in the checkpoint, first {names[0]!r}")
    return None


def _lora_init(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "forward" or f.field != "lora_B_nonzero_at_init":
        return None
    return ("LoRA is not initialised as the identity (B != 0 at step 0): the adapters' init was changed "
            "(e.g. init_lora_weights=False), so training starts from a model that is not the checkpoint", f.note or "")


def _trainable_set(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "forward" or f.field != "trainable_parameters_only_on_one_side":
        return None
    first = f.reference or f.custom
    side = "reference" if f.reference else "custom"
    frozen = "frozen on the custom side" if f.reference else "frozen on the reference side"
    return (f"the two sides train different parameters ({f.note}): e.g. {first!r} trains only on the {side} side "
            f"({frozen}): LoRA target modules, frozen/unfrozen base weights or a name filter differ", f.note or "")


def _forward_labels(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "forward" or f.field not in ("expanded_labels", "expanded_input_ids"):
        return None
    if f.status == "missing" or _kind(f) == "absent":
        side = "custom" if f.custom is None else "reference"
        return (f"the {side} forward gets no text labels (label_ids kept out of the model call), so expanded_labels "
                "is None and the text loss has nothing to score", f.note or _words(f))
    return (f"the model merges {f.field.split('_', 1)[1]} differently on the two sides: the batch passed to the model "
            "differs from the collated one (a field dropped, renamed or altered in forward)", _words(f))


def _forward_values(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "forward" or f.field not in ("logits", "audio_logits"):
        return None
    kind, d = _kind(f), _details(f)
    if kind == "dtype_roundtrip":
        return (f"{f.field} computed in {d.get('dtype')} on one side (autocast or a cast of the weights)", _words(f))
    if kind == "nonfinite_onset":
        return (f"non-finite {f.field} on the {d.get('side')} side: overflow in the forward pass", _words(f))
    fh = x.evidence.get("forward", {})
    if fh.get("lora_scaling"):
        ls = fh["lora_scaling"]
        return (f"LoRA scaling differs: the custom adapters are scaled by {ls['custom']:.6g} where the reference's are "
                f"scaled by {ls['reference']:.6g} (alpha/r; rsLoRA's alpha/sqrt(r), or another alpha or r)",
                f"{ls['count']} LoRA layers, first {ls['module']}")
    if fh.get("lora_dropout"):
        ld = fh["lora_dropout"]
        return (f"LoRA dropout is {ld['custom']} on the custom side where the configuration (and the reference) has "
                f"{ld['reference']}: the dropout setting is ignored, and in train() mode the forward is random",
                f"{ld['count']} LoRA layers, first {ld['module']}")
    if fh.get("eval_mode_matches"):
        return ("the outputs differ only in train() mode: training-only code on the custom side (dropout that ignores "
                "the configured 0, or another branch on model.training)", "in eval() mode the custom outputs equal the "
                "reference's")
    only = x.field("forward", "trainable_parameters_only_on_one_side")
    if only is not None and only.unexpected:
        return ("LoRA wraps different target modules on the two sides (trainable parameter names differ), so the same "
                "weights give different outputs", f"first name on one side only: {only.reference or only.custom}")
    dtypes = x.evidence.get("parameters", {}).get("frozen_dtypes", {})
    if dtypes and dtypes.get("reference") != dtypes.get("custom"):
        return (f"the frozen weights are {dtypes.get('custom')} on the custom side and {dtypes.get('reference')} on "
                "the reference side: the checkpoint is loaded in another dtype (bf16 weights in an fp32 comparison)",
                f"frozen parameter dtypes: {dtypes}")
    return ("same weights, same batch, different outputs in train mode: the model wiring differs (LoRA placement, "
            "scaling alpha/r or dropout, a modified layer, or training-only code such as dropout that ignores the "
            "configuration)", _words(f))


# ---------------------------------------------------------------------------------- loss


def _no_shift_audio(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "loss" or f.field not in ("audio_ce_common", "audio_token_ce@custom"):
        return None
    m = x.evidence.get("loss", {}).get("custom_matches")
    if m and m.get("unshifted") and not m.get("shifted"):
        return ("no next-token shift: the custom audio CE scores logits[t] against labels[t] (labels equal to the "
                "inputs, a copy task), instead of logits[t-1]" + _fault(x, "no-shift"),
                "custom per-position audio CE matches the unshifted computation, not the shifted one")
    return None


def _no_shift_text(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "loss" or f.field not in ("text_ce_common", "text_token_ce@custom", "text@custom", "text"):
        return None
    m = x.evidence.get("loss", {}).get("custom_text_matches")
    if m and m.get("unshifted") and not m.get("shifted"):
        return ("text CE scored without the next-token shift: logits[t] against labels[t] (a copy task)",
                "custom per-position text CE matches the unshifted computation")
    return None


def _loss_hypothesis(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "loss":
        return None
    hyps = x.evidence.get("loss", {}).get("hypotheses", {})
    name = _name(f)
    sides = [_side(f)] if f.check == "declared" else ["custom", "reference"]
    for side in sides:
        h = hyps.get(side) or {}
        if name in ("audio_token_ce", "audio_ce_common", "audio", "per_codebook", "audio_supervised_tokens", "total") \
                and h.get("audio_map"):
            return (f"the {side} audio loss is computed with {h['audio_map']}", "its per-position audio CE equals that "
                    "computation on the same outputs")
        if name in ("text_token_ce", "text_ce_common", "text", "text_supervised_tokens", "total") and h.get("text_map"):
            return (f"the {side} text loss is computed with {h['text_map']}",
                    "its per-position text CE equals that computation on the same outputs")
        terms = h.get("terms") or {}
        for term in ((name,) if name in ("audio", "text", "total") else ("audio", "text", "total")):
            if term in terms:
                return (f"the {side} {term} loss is the declared one computed with {terms[term]}",
                        f"recomputing the declared loss that way reproduces the {side} {term} value")
    return None


def _zero_term(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "loss":
        return None
    name, side = _name(f), _side(f)
    e = x.evidence.get("loss", {}).get(side, {})
    for term in ("audio", "text"):
        if name in (term, "audio_ce_common" if term == "audio" else "text_ce_common", "total") and e.get(term) == 0.0 \
                and (term == "text" or e.get("has_target_audio")):
            return (f"{term} loss is exactly 0.0 on the {side} side although the batch has targets: the term was "
                    "silently skipped or zeroed" + (_fault(x, "silent-zero-audio-loss")
                                                    if term == "audio" and side == "custom" else ""),
                    f"{term} = 0.0 with {e.get('audio_supervised_tokens')} supervised audio tokens")
    if name == "per_codebook" and _kind(f) in ("nonfinite_onset", "masked", "none") and f.first_index:
        cb = f.first_index[-1]
        if f.check == "declared" and (f.custom is None or (isinstance(f.custom, float) and math.isnan(f.custom))):
            return (f"codebook {cb} gets no audio loss on the {side} side (the per-codebook loop skips it, or its "
                    "labels are never supervised)", _words(f))
    if name in ("per_codebook",) and _kind(f) in ("masked", "none"):
        pcb = e.get("per_codebook", [])
        zeros = [i for i, v in enumerate(pcb) if v == 0.0]
        if zeros:
            return (f"codebook(s) {zeros} have a loss of exactly 0.0 on the {side} side: their labels are never "
                    "supervised", f"per-codebook loss {pcb}")
    return None


def _loss_scale(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "loss" or _kind(f) != "scale":
        return None
    d = _details(f)
    factor, sources = d.get("factor"), d.get("sources") or []
    side = _side(f)
    name = _name(f)
    if "num_codebooks" in sources:
        return (f"the {side} {name} loss is {factor}x its declared value: summed over codebooks instead of averaged",
                _words(f))
    if "1/num_codebooks" in sources:
        return (f"the {side} {name} loss is divided by the number of codebooks twice", _words(f))
    if "samples" in sources or "1/samples" in sources:
        return (f"the {side} {name} loss is {factor}x: reduced per sample instead of per token (sum or mean over the "
                "batch dimension)", _words(f))
    return (f"the {side} {name} loss is {factor}x its declared reduction: a weight, a sum instead of a mean, or a "
            "different denominator (supervised-token count)", _words(f))


def _loss_positions(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "loss":
        return None
    name, side = _name(f), _side(f)
    if name in ("audio_token_ce", "audio_ce_common") and _kind(f) == "shift":
        return (f"the {side} audio CE scores the wrong frame: shifted {abs(_details(f).get('k', 0))} frame(s) "
                "(logits and labels aligned with another offset)", _words(f))
    if name in ("audio_supervised_tokens", "text_supervised_tokens"):
        return (f"the {side} loss supervises {f.custom} {name.split('_')[0]} tokens where its declared loss supervises "
                f"{f.reference}: labels masked differently, or the shift crosses/ignores segment boundaries", _words(f))
    if name in ("audio_token_ce", "text_token_ce") and _kind(f) in ("masked", "none"):
        return (f"the {side} per-position {name.split('_')[0]} CE differs from its declared loss at "
                f"{_details(f).get('count', '?')} position(s) ({_details(f).get('where') or _words(f)})", _words(f))
    if f.check == "declared" and name in ("audio", "text", "total", "per_codebook"):
        return (f"the {side} side's reduced {name} loss is not its per-position CE reduced as it declares "
                "(reduction, weights or the terms included in the total)", _words(f))
    return None


# ---------------------------------------------------------------------------------- backward


def _no_grad(f: FieldDiff, x: Facts) -> Result:
    if f.stage not in ("backward",) or not f.field.startswith(("grad/", "grad@")):
        return None
    if f.status == "missing" or _kind(f) in ("absent", "zero"):
        side = _details(f).get("side") or ("custom" if f.custom is None else "reference")
        if f.field.startswith("grad@"):
            side = "reference"
        n_missing = len([g for g in x.diverged("backward", "grad") if g.status == "missing" or _kind(g) in ("absent", "zero")])
        return (f"no gradient reaches {f.field.split('/', 1)[1]} on the {side} side ({n_missing} parameter(s) affected): "
                "it is detached from the loss, or training-only code cuts it off (re-entrant activation checkpointing "
                "of inputs that do not require grad, a torch.no_grad or .detach() in the forward)",
                f.note or _words(f))
    return None


def _rounding_only(f: FieldDiff, x: Facts) -> Result:
    """A computed value (forward, loss, backward) that differs only as much as re-ordered floating-point
    arithmetic does: no mechanism is claimed, the report says what the numbers show."""
    if f.stage not in ("forward", "loss", "backward") or _kind(f) != "reduction_order":
        return None
    err = _details(f).get("relative_error")
    return ("rounding-level difference only: the values agree up to the order of floating-point operations "
            + (f"(norm-wise {err:.2e} relative) " if err is not None else "")
            + "but exceed this field's element-wise tolerance; an operation along the way changed its order or "
              "precision (kernel choice for another batch shape, TF32, a re-associated sum), or the tolerance "
              f"({f.tolerance_rule}) is tighter than this device's rounding; no semantic change is visible",
            _words(f))


def _grad_values(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "backward" or not f.field.startswith(("grad/", "grad@")):
        return None
    kind, d = _kind(f), _details(f)
    side = "reference" if f.field.startswith("grad@") else "custom"
    hyp = x.evidence.get("backward", {}).get(side, {})
    if hyp.get("hypothesis"):
        return (f"the {side} gradient is the gradient of {hyp['hypothesis']}", "its gradients equal the declared "
                "loss's term back-propagated alone through the other side's model")
    ratio = hyp.get("ratio")
    if ratio is not None and abs(ratio - 1) > 1e-3 and kind == "scale":
        return (f"the {side} gradient is {ratio:.4g}x what its declared loss gives: the back-propagated loss is "
                "scaled (a weight, a division by the accumulation steps or the world size, a halved loss)",
                f"overall gradient ratio {ratio:.6g}; {_words(f)}")
    lev = x.evidence.get("loss", {})
    text_term = (lev.get(side) or {}).get("text")
    if f.field.startswith("grad@") and lev.get("expanded_labels_none") and text_term:
        return _unplaced_text(side, text_term, f)
    loss_fields = x.stages.get("loss").fields if x.stages.get("loss") else []
    loss_div = next((g for g in loss_fields if g.unexpected), None)
    loss_ok = loss_div is None
    if loss_div is not None and kind not in ("sign_flip", "scale"):
        # The cause must not contradict this field's relation ("no simple relation" is not a "scaled copy"),
        # nor send the reader after a second bug: a gradient of a loss that already diverged follows from it.
        return (f"the {side} gradient follows from the loss divergence upstream (loss.{loss_div.field}): it is the "
                "gradient of a different loss, so fix the loss first; no separate gradient bug is implied",
                _words(f) + (f"; overall gradient ratio {ratio:.6g}" if ratio is not None else ""))
    if ratio is not None and abs(ratio - 1) > 1e-3 and kind == "none":
        return (f"the {side} gradient is on the whole {ratio:.4g}x what its declared loss gives, but not element-wise "
                "a scaled copy: the back-propagated loss is weighted differently (a weight, a division by the "
                "accumulation steps or the world size, a halved term)",
                f"overall gradient ratio {ratio:.6g}; element-wise: {_words(f)}")
    if kind == "sign_flip":
        return (f"the {side} gradient has the wrong sign: the loss is negated (maximised)", _words(f))
    if kind == "scale":
        return (f"the {side} gradient is {d.get('factor')}x what its declared loss gives: the loss that is "
                "back-propagated is scaled differently from the one logged (a weight, a division by the accumulation "
                "steps or world size" + (f"; matches {', '.join(d.get('sources'))}" if d.get("sources") else "") + ")",
                _words(f))
    if loss_ok and lev.get("expanded_labels_none") and text_term:
        return _unplaced_text(side, text_term, f)
    if loss_ok:
        return (f"the {side} loss VALUE matches its declaration but its gradient does not: a term is detached or "
                "computed outside the graph (e.g. .item()/.detach() in one term), or the model's training-mode graph "
                "differs (activation checkpointing, dropout)", _words(f))
    return None


def _unplaced_text(side: str, text_term: float, f: FieldDiff) -> Result:
    return (f"the {side} loss has a text term ({text_term:.4g}) although the model call returned no expanded_labels "
            "(the model got no text labels): its text cross-entropy scores the logits against labels taken from "
            "elsewhere (e.g. the un-expanded label_ids, which do not line up with the expanded sequence), so no "
            "declared text loss matches it and its gradient differs", _words(f))


def _accumulation(f: FieldDiff, x: Facts) -> Result:
    if not f.field.startswith(("accum_grad/", "accum_param/", "accum_loss/")):
        return None
    ev = x.evidence.get("accumulation", {})
    ratio = ev.get("grad_ratio")
    k = ev.get("micro_batches")
    if ratio is not None and k and math.isclose(ratio, k, rel_tol=1e-3):
        return (f"gradient accumulation: {k} micro-batches give {k}x the one-batch gradient: micro-batch losses are "
                "summed without normalising by the global token count", f"gradient ratio {ratio}")
    if ratio is not None and k and math.isclose(ratio, 1.0 / k, rel_tol=1e-3):
        return (f"gradient accumulation: {k} micro-batches give 1/{k} of the one-batch gradient: the loss is divided "
                "by the number of micro-batches on top of a global normalisation", f"gradient ratio {ratio}")
    lone = ev.get("lone_micro_batch")
    if isinstance(lone, dict) and lone.get("index") is not None:
        which = "last" if lone["index"] == lone["of"] - 1 else "first"
        return (f"gradient accumulation keeps only the {which} micro-batch's gradient: the gradients are cleared "
                "(zero_grad) inside the micro-batch loop, or overwritten instead of accumulated",
                f"the accumulated gradient points along micro-batch {lone['index']}'s gradient alone (cosine "
                f"{lone['cosine']}) of {lone['of']}; overall ratio to one batch {ratio}")
    return ("gradient accumulation is not equivalent to one batch: each micro-batch is normalised by its own "
            "supervised-token count (or mean) instead of the global count over all micro-batches",
            f"k={k} micro-batches vs one batch; overall gradient ratio {ratio}")


def _train_path(f: FieldDiff, x: Facts) -> Result:
    if not f.field.startswith("train_path_grad/"):
        return None
    ev = x.evidence.get("train_path", {})
    ratio, cos = ev.get("grad_ratio"), ev.get("cosine")
    how = (f"scaled by {ratio}" if ratio is not None and cos is not None and cos > 0.9999
           else f"in another direction (cosine {cos}, ratio {ratio})")
    return ("the custom training loop's gradient is not the gradient of the side's own declared loss on the same "
            f"batch ({how}): code only the training path runs computes another loss (the loop's loss reduction or "
            "normalisation, the gathered text head of the fast-head speed switch, a term added or dropped there)",
            f"one micro-batch of {ev.get('samples')} samples through the training loop vs the stage-contract "
            "forward/loss/backward")


def _ddp(f: FieldDiff, x: Facts) -> Result:
    if not re.match(r"ddp_(rank\d+|equal_rank\d+)_", f.field):
        return None
    d = x.evidence.get("ddp", {})
    if not d:
        return None
    if f.field.startswith("ddp_equal_rank"):
        return ("ranks hold different parameters after a step: their updates are not synchronised (gradients not "
                "all-reduced on every step, or rank-dependent optimizer state)", _words(f))
    if d.get("ranks_agree") is False:
        return ("gradients not synchronised across ranks: DDP's all-reduce did not run on every micro-batch that should "
                "sync (forward on the unwrapped module, or no_sync inverted)" + (_fault(x, "ddp-unwrapped-forward")
                                                                            or _fault(x, "inverted-no-sync")),
                f"ranks {d.get('unsynced_ranks')} of {d.get('world_size')} ({d.get('backend')}) differ from one process "
                "and from each other")
    ratio = d.get("grad_ratio")
    words = f"ranks agree with each other; gradient ratio vs one process {ratio}"
    world = d.get("world_size") or 1
    if ratio is not None and world > 1 and math.isclose(ratio, 1.0 / world, rel_tol=1e-3):
        return (f"gradients 1/{world} of the single process while ranks agree: DDP averages gradients over the "
                f"{world} ranks, so the global loss must be scaled by the world size (or summed) - that scaling is "
                "missing", words)
    if ratio is not None and not math.isclose(ratio, 1.0, rel_tol=1e-3):
        return (f"gradients {ratio}x the single process while ranks agree: loss normalised per micro-batch or per rank "
                "instead of by the global token count (token counts not all-reduced), or averaged twice", words)
    return ("ranks agree with each other but not with one process on the same global batch: rank-local normalisation, "
            "a sampler that hands ranks the wrong shards, or accumulation that differs from one batch", words)


# ---------------------------------------------------------------------------------- step


_HYPER_WORDS = {"beta1": "beta1", "beta2": "beta2 (the second-moment decay)", "eps": "eps",
                "weight_decay": "weight decay"}


def _step(f: FieldDiff, x: Facts) -> Result:
    """One diagnosis of the step stage from all its diverged fields, attached to whichever comes first."""
    if f.stage != "step" or not re.match(r"(update|exp_avg|exp_avg_sq|step|lr|hyperparameters)(/|$)", f.field):
        return None
    hyper = x.field("step", "hyperparameters")
    if hyper is not None and hyper.unexpected:
        what = (hyper.decoded or "").split(": ")[-1]
        cfg = x.extras.get("step_config", {})
        configured = {"beta1": (cfg.get("betas") or [None, None])[0], "beta2": (cfg.get("betas") or [None, None])[1],
                      "eps": cfg.get("eps"), "weight_decay": cfg.get("weight_decay")}.get(what)
        side, value = ("reference", hyper.reference) if configured is not None and hyper.custom == configured and \
            hyper.reference != configured else ("custom", hyper.custom)
        return (f"the {side} optimizer's {_HYPER_WORDS.get(what, what)} is {value} instead of the configured "
                f"{configured if configured is not None else (hyper.reference if side == 'custom' else hyper.custom)}",
                f"first at {hyper.decoded}: reference {hyper.reference}, custom {hyper.custom}")
    lr = next(iter(x.diverged("step", "lr/")), None)
    if lr is not None:
        return ("the learning-rate schedule (warmup / decay) or the base learning rate differs: at "
                f"{lr.field.split('/')[-1]} the reference steps with {lr.reference}, the custom side with {lr.custom}",
                _words(lr))
    update = next(iter(x.diverged("step", "update/")), None)
    if update is not None and _kind(update) == "zero":
        side = _details(update).get("side", "custom")
        return (f"the {side} optimizer step changes nothing: the gradients are cleared (zero_grad) before "
                "optimizer.step(), or never reach the optimizer", _words(update))
    cfg = x.extras.get("step_config", {})
    clip_factor = (cfg.get("first_gradient_norm") or 0) / (cfg.get("max_grad_norm") or 1)
    m = next(iter(x.diverged("step", "exp_avg/")), None)
    if m is not None:
        d = _details(m)
        if _kind(m) == "scale":
            factor = d.get("factor") or 0
            if clip_factor and math.isclose(factor, clip_factor, rel_tol=1e-2):
                return ("gradient clipping does not act on the custom side: the optimizer state holds the unclipped "
                        f"gradient (x{factor}, the clip factor ||g||/max_grad_norm = {clip_factor:g}); clipping is "
                        "missing or runs after optimizer.step()", _words(m))
            if clip_factor and factor and math.isclose(1.0 / factor, clip_factor, rel_tol=1e-2):
                return ("gradient clipping does not act on the reference side: its optimizer state holds the unclipped "
                        f"gradient (custom / reference = {factor}, 1 / the clip factor ||g||/max_grad_norm = "
                        f"{clip_factor:g}); clipping is missing or runs after optimizer.step()", _words(m))
            return (f"the gradients that reach the two optimizers differ by a factor (custom / reference = {factor}) "
                    "for the same given gradient: gradient clipping (threshold or norm type) or an extra normalisation "
                    "differs on one side (the ratio alone does not say which)", _words(m))
        return ("the gradient that reaches one optimizer differs from the one given: gradient clipping (norm "
                "type, threshold, which parameters) or a transformation before the step", _words(m))
    if update is not None:
        return ("same gradients, same optimizer state, different update: the step itself differs (weight decay "
                "applied differently, bias correction, or the update is applied to other tensors)", _words(update))
    return None


def _native(f: FieldDiff, x: Facts) -> Result:
    if not f.field.startswith("native@"):
        return None
    side = f.side or f.field.split("@", 1)[1].split("/", 1)[0]
    if f.field.endswith("lr_curve"):
        where = _details(f).get("where") or _words(f)
        return (f"the {side} learning-rate schedule does not follow the formula its effective_config declares "
                f"(warmup/decay): {where}", _words(f))
    if f.field.endswith("optimizer_class"):
        return (f"the {side} optimizer class is {f.custom}, its effective_config declares {f.reference}", "")
    order = (x.evidence.get("native_schedule") or {}).get(side)
    if order is not None:
        # At a warmup's first step (declared lr 0), "one step ahead" and "no warmup" give the same update:
        # say both, the evidence cannot tell them apart.
        dropped = order["step"] == 1 and order["lr_declared"] == 0
        alt = (" or its warmup is dropped (the schedule starts at the value warmup would reach a step later)"
               if dropped else "")
        tail = "; or warmup_steps of the declared schedule missing" if dropped else ""
        return (f"the {side} side steps the learning-rate scheduler before the optimizer{alt}: its update at step "
                f"{order['step']} uses the schedule's next value ({order['lr_next']:.6g}) instead of "
                f"{order['lr_declared']:.6g} (scheduler.step() ahead of optimizer.step(): the order is wrong{tail})",
                "the update equals the declared one at the next step's learning rate")
    return (f"the {side} optimizer step does not do what its effective_config declares (lr, betas, eps, weight decay "
            "and its no-decay groups, or gradient clipping)", _words(f))


# ---------------------------------------------------------------------------------- config


def _wiring(f: FieldDiff, x: Facts) -> Result:
    """`lora_built.*`: what build_model built from the side's own recipe (`harness.engine.wiring`)."""
    if f.stage != "config" or not f.field.startswith("lora_built."):
        return None
    key, side = _name(f).split(".", 1)[1], f.side or "custom"
    want, got = f.reference, f.custom
    ev = f"requested {want!r}, built {got!r} (the side's DEFAULT_TRAIN with LoRA on, on the tiny checkpoint)"
    if key == "builds":
        return (f"the {side} side's build_model raises on its own training recipe: {got}", ev)
    if key == "targets":
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        parts = []
        if missing:
            parts.append(f"requested LoRA target(s) {missing} wrap no module of the model: peft skips a name that "
                         "matches nothing, so those projections train without adapters (a typo, or another "
                         "architecture's module naming)")
        if extra:
            parts.append(f"module(s) {extra} get LoRA adapters although the recipe does not ask for them "
                         "(target list hard-coded or extended in build_model)")
        return (f"the {side} side's " + "; ".join(parts), ev)
    if key == "init_repeatable":
        first = (x.evidence.get("wiring", {}).get(side) or {}).get("first_difference")
        return (f"the {side} side's build_model does not seed its random initialisation: the adapters' initial "
                "values depend on the RNG state before the call (train.seed is ignored), so two runs with the same "
                "seed start from different weights", f"two builds after different RNG states differ first at {first!r}")
    words = {"r": "the LoRA rank r is not what the recipe asks: lora_r not passed to LoraConfig (peft's default 8) "
                  "or overridden",
             "scaling": "the LoRA scaling is not lora_alpha / r: lora_alpha not passed to LoraConfig (peft's default "
                        "8), rsLoRA (alpha / sqrt(r)) switched on, or another r or alpha used",
             "dropout": "the LoRA dropout is not what the recipe asks: lora_dropout not passed to LoraConfig (peft's "
                        "default 0.0) or overridden"}
    if key in words:
        return (f"the {side} side's build_model: {words[key]}", ev)
    return None


def _config(f: FieldDiff, x: Facts) -> Result:
    if f.stage != "config":
        return None
    if f.field.startswith("defect."):
        from higgs_common.conventions import DEFECTIVE_DECLARATIONS

        key = _name(f)[len("defect."):]
        bad, sound, why = DEFECTIVE_DECLARATIONS.get(key, (f.custom, f.reference, "a declared defect"))
        return (f"the {f.side} side's CONVENTIONS declare {key} = {bad!r} (a sound recipe has {sound!r}): {why}",
                "a declaration no recipe should make (higgs_common.conventions.DEFECTIVE_DECLARATIONS)")
    if f.check == "declared":
        return (f"the {f.side} side's effective setting {_name(f)} = {f.custom!r} contradicts its declaration "
                f"({f.reference!r})", "")
    return (f"an undeclared configuration difference: {f.field} is {f.reference!r} on the reference side and "
            f"{f.custom!r} on the custom side, and no declared convention or recipe implies it", "")


# ---------------------------------------------------------------------------------- generic


def _generic_declared(f: FieldDiff, x: Facts) -> Result:
    if f.check != "declared":
        return None
    return (f"the {f.side} side's {_name(f)} is not what its declared conventions say it must be", _words(f))


RULES: tuple[Rule, ...] = (
    _target_is_reference_clip, _codes_of_other_sample, _codes_length, _transcript, _text_supervision,
    _declared_dataset, _declared_collator, _batch_order, _collator_settings, _all_labels_ignored, _audio_labels, _collator_text, _random_layers,
    _lora_init, _trainable_set, _forward_labels, _forward_values, _no_shift_audio, _no_shift_text, _zero_term, _loss_hypothesis, _loss_scale, _loss_positions, _no_grad,
    _rounding_only, _grad_values, _train_path, _accumulation, _ddp, _step, _native, _wiring, _config, _generic_declared,
)


def cause_of(f: FieldDiff, facts: Facts) -> dict | None:
    """The first rule that explains `f` (module docstring), as {"mechanism", "evidence", "rule"}."""
    for rule in RULES:
        res = rule(f, facts)
        if res is not None:
            mechanism, evidence = res
            return {"mechanism": mechanism, "evidence": evidence, "rule": rule.__name__.lstrip("_"), "location": None}
    return None


def explain_fields(stages: list[StageResult], evidence: dict[str, Any], extras: dict[str, Any]) -> None:
    """Attach a cause to every unexpected divergence (in place)."""
    facts = Facts(evidence, {s.stage: s for s in stages}, extras)
    for st in stages:
        for f in st.fields:
            if f.unexpected:
                f.cause = cause_of(f, facts)


def diagnoses(stages: list[StageResult], evidence: dict[str, Any]) -> list[Diagnosis]:
    """The report's list: one per distinct cause (first field it explains), then run-level facts."""
    out: list[Diagnosis] = []
    seen: set[str] = set()
    for st in stages:
        for f in st.fields:
            if f.unexpected and f.cause and f.cause["mechanism"] not in seen:
                seen.add(f.cause["mechanism"])
                out.append(Diagnosis(cause=f.cause["mechanism"], evidence=f.cause["evidence"], stage=st.stage,
                                     field=f.field, rule=f.cause.get("rule"), location=f.cause.get("location")))
    d = evidence.get("ddp")
    if d and not d.get("unsynced_ranks") and not d.get("step_unsynced_ranks") and d.get("backend"):
        out.append(Diagnosis(
            cause=f"DDP in sync: {d['world_size']} ranks ({d['backend']}) agree with one process on the same global "
                  f"batch of {d['global_batch']} samples",
            evidence=f"gradients after the all-reduce, parameters after optimizer step 1 (bit-identical across ranks) "
                     f"and the global loss of {d['steps']} steps within the derived tolerances "
                     f"({d['grad_accum']} micro-batches per rank)", stage="backward", field=None))
    acc = evidence.get("accumulation", {})
    if acc.get("micro_batches") and not acc.get("accum_diverged"):
        out.append(Diagnosis(cause=f"gradient accumulation equivalent: {acc['micro_batches']} micro-batches of one "
                                   "sample give the gradients of one batch", evidence=f"gradient ratio {acc.get('grad_ratio')}",
                             stage="backward", field=None))
    return out
