"""Pair-specific expected differences: the exception to deriving them from declared conventions.

Only for facts no `Conventions` field expresses, each pinned to exact values by a predicate
(`holds`), so it can never hide anything but the one difference it names.  Keyed by the adapters'
NAMEs (reference, custom); `overrides_for` also returns the entries registered for ("*", "*").
"""

from __future__ import annotations

from harness.semantics.expectations import Expected


def _exact(ref_value, cus_value):
    return lambda r, c, info: r == ref_value and c == cus_value


def _ref_is(ref_value):
    return lambda r, c, info: r == ref_value


OVERRIDES: dict[tuple[str, str], list[Expected]] = {
    ("reference", "custom"): [
        Expected("collator-class", "config", "collator.class",
                 "train-higgs-audio wraps the upstream collator (ExtendedHiggsAudioSampleCollator, labels := "
                 "audio_out_ids); the custom pipeline calls upstream HiggsAudioSampleCollator directly",
                 holds=_exact("ExtendedHiggsAudioSampleCollator", "HiggsAudioSampleCollator"), source="override"),
        Expected("ddp-find-unused", "config", "distributed.find_unused_parameters",
                 "train-higgs-audio passes ddp_find_unused_parameters=True to the HF Trainer; the custom loop wraps "
                 "DDP with find_unused_parameters=False (speed only: every trainable parameter gets a gradient)",
                 holds=_exact(True, False), source="override"),
        Expected("no-decay-groups", "config", "optimizer.no_decay",
                 "the HF Trainer's optimizer groups exempt biases and LayerNorm/RMSNorm weights from weight decay; the "
                 "custom loop decays every trainable parameter (LoRA adapters have neither kind)",
                 holds=_exact(["bias", "norm"], []), source="override"),
        Expected("lora-task-type", "config", "lora.task_type",
                 "train-higgs-audio builds its LoraConfig with task_type=CAUSAL_LM (hence its model accepts labels= "
                 "and inputs_embeds=); the custom pipeline passes no task type (same adapters, same names)",
                 holds=_exact("CAUSAL_LM", None), source="override"),
    ],
}


def overrides_for(reference: str, custom: str) -> list[Expected]:
    """Entries for this pair of adapter names (plus wildcard ones)."""
    return list(OVERRIDES.get((reference, custom), [])) + list(OVERRIDES.get(("*", "*"), []))
