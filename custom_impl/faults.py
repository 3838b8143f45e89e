"""Named, opt-in faults of the custom zero-shot pipeline (facts §5, letters a-g).

Why a registry: the custom pipeline's history is a list of bugs that all produced the same
symptom ("audio loss is always 0.0", or a run that trains but learns nothing).  The harness has
to show that it can *see* each of them, so each one is re-created here, off by default, switched
on by name (`ctx.faults` in the stage functions, `--fault NAME` in `custom_impl.train`).  Every
entry says where it acts and what it looks like from the outside, which is what a user searching
for their own symptom needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from higgs_common.errors import UnknownFaultError


@dataclass(frozen=True)
class Fault:
    """One historical fault: what it breaks, where, and what a user sees."""

    name: str
    letter: str          # facts §5 letter
    stage: str           # dataset | collator | forward | loss | backward | step | model
    field: str           # the field / object it corrupts
    description: str
    symptom: str


_FAULT_LIST = (
    Fault(
        name="reference-audio-as-label",
        letter="a",
        stage="dataset",
        field="audio_ids_concat[target_audio_index]",
        description=(
            "The dataset encodes the reference (voice-prompt, audio-in) clip a second time and "
            "stores those codes in the target (<|AUDIO_OUT|>) slot, so the only audio the model "
            "is trained to produce is the clip it was just shown.  The upstream pipeline had no "
            "guard against it, so the correct path's reference-vs-label check is bypassed."
        ),
        symptom=(
            "label codes equal the reference codes: the task degenerates into copying the prompt, "
            "so once the model finds the prompt the audio loss collapses towards 0 (see --data "
            "copy-probe); the model never learns the target utterance"
        ),
    ),
    Fault(
        name="unmapped-audio-labels",
        letter="b",
        stage="collator",
        field="label_audio_ids",
        description=(
            "Audio labels are kept in a separate list holding only the labelled (target) clip, "
            "which is then indexed with the positions of the *full* audio list (reference first). "
            "The target's index points past the end of the label list, its label slice is empty "
            "and the collator fills the segment with -100: label_audio_ids is all -100."
        ),
        symptom=(
            "0 supervised audio tokens; a correct loss raises AudioLabelError, a lenient one "
            "logs audio loss 0.0 (the seed report)"
        ),
    ),
    Fault(
        name="silent-zero-audio-loss",
        letter="c",
        stage="loss",
        field="audio loss term",
        description=(
            "The loss looks the audio labels up under a field name the batch does not have "
            "(`audio_labels` instead of `label_audio_ids`), finds nothing, logs a warning and "
            "returns an audio loss of 0.0 - on perfectly good data."
        ),
        symptom="audio loss exactly 0.0 every step with only a log warning; audio never trains",
    ),
    Fault(
        name="no-shift",
        letter="d",
        stage="loss",
        field="text and audio logits/labels alignment",
        description=(
            "Logits at position t are scored against the label at position t instead of t+1, "
            "in both the text and the audio loss: the model is trained to copy its input."
        ),
        symptom="losses fall quickly towards 0 (a copy task); generation is silent or garbage",
    ),
    Fault(
        name="ddp-unwrapped-forward",
        letter="e",
        stage="forward",
        field="DDP wrapper",
        description=(
            "Forward is called on the module inside DistributedDataParallel (model.module), so "
            "DDP's autograd hooks never fire and no gradient is all-reduced."
        ),
        symptom="ranks' gradients and then weights diverge after the first step; no error",
    ),
    Fault(
        name="inverted-no-sync",
        letter="f",
        stage="backward",
        field="DDP no_sync context",
        description=(
            "Gradient accumulation uses no_sync on the LAST micro-batch instead of all but the "
            "last, so the all-reduce happens on the first micro-batch only and later "
            "micro-batches' gradients stay local."
        ),
        symptom="ranks' accumulated gradients differ (only the first micro-batch is averaged)",
    ),
    Fault(
        name="random-extra-layers",
        letter="g",
        stage="model",
        field="HiggsAudioConfig.use_audio_out_self_attention / use_audio_out_embed_projector",
        description=(
            "Config flags are forced on that add modules the checkpoint does not contain "
            "(audio self-attention in every dual-FFN layer, the audio-out embedding projector); "
            "from_pretrained initialises them randomly and they sit in the forward path."
        ),
        symptom=(
            "missing keys at load; losses at chance level (text ~ ln(vocab), audio ~ "
            "ln(codebook_size + 2)) even from a trained checkpoint"
        ),
    ),
)

FAULTS: dict[str, Fault] = {f.name: f for f in _FAULT_LIST}


def check_faults(names: Iterable[str]) -> frozenset[str]:
    """Validate fault names; unknown names raise UnknownFaultError listing the known ones."""
    names = frozenset(names)
    unknown = sorted(names - FAULTS.keys())
    if unknown:
        raise UnknownFaultError(
            f"unknown fault(s) {unknown}; custom_impl knows {sorted(FAULTS)}")
    return names


def is_on(faults: Iterable[str] | None, name: str) -> bool:
    """True if `name` is in the active set; guards against typos in the pipeline's own code."""
    if name not in FAULTS:
        raise UnknownFaultError(f"custom_impl asked for undefined fault {name!r}")
    return faults is not None and name in faults


def help_text() -> str:
    """One paragraph per fault, for `--help`."""
    lines = []
    for f in _FAULT_LIST:
        lines.append(f"  {f.name} ({f.letter}, {f.stage}: {f.field}) -- symptom: {f.symptom}")
    return "\n".join(lines)
