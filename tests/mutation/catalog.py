"""The mutation suite: realistic source-level bugs of both pipelines, with where they must be found.

Three sources: `mutants_helper` (written by an engineer who had not read the harness's code),
`mutants_core` (the harness's authors, for kinds the first set does not cover) and `mutants_fresh`
(a second reviewer's set, written once the first two were all caught, to find what they miss).  Every mutant is a
dict: id, file, find (a snippet that occurs exactly once), replace, stage (where the mutated code
runs), mechanism (the bug in words), keywords (words a right explanation contains), note, and
optionally args (extra `harness.compare` arguments, e.g. a 2-rank DDP check).

`STAGE_OVERRIDES` re-files a mutant whose code runs in another stage than its author wrote, with
the reason; `EQUIVALENT` lists mutants that cannot change anything the harness runs, with the reason
(they are reported, and excluded from the score).
"""

from __future__ import annotations

from tests.mutation import mutants_core, mutants_fresh, mutants_helper

STAGES = ("dataset", "collator", "forward", "loss", "backward", "step", "config")

STAGE_OVERRIDES: dict[str, tuple[str, str]] = {
    "custom-backward-lora-targets-hardcoded": (
        "forward", "LoRA placement is model construction: it changes the trainable set and, with LoRA B non-zero, "
                   "the forward pass"),
    "custom-backward-rslora-scaling": ("forward", "the LoRA scaling factor multiplies the adapter output in the forward pass"),
    "custom-backward-base-unfrozen-with-lora": (
        "forward", "which parameters are trainable is decided when the model is built; the forward stage compares "
                   "the trainable sets"),
    "reference-backward-freeze-audio-by-name": (
        "forward", "freezing parameters is decided when the model is built; the forward stage compares the "
                   "trainable sets"),
    "custom-forward-seed-ignored": (
        "config", "seeding is part of building the model from a recipe; the config stage's wiring probe "
                  "(harness.engine.wiring) builds each side's model twice and compares the inits"),
}

# Extra `harness.compare` arguments a mutant needs to be observable at all (documented by its author).
ARGS: dict[str, tuple[str, ...]] = {
    "custom-backward-ddp-world-scale-dropped": ("--ddp-world-size", "2"),   # invisible with one process
}

EQUIVALENT: dict[str, str] = {
    "reference-loss-audio-flattened-ce": (
        "a token mean over frames x codebooks equals the mean of per-codebook means whenever every codebook has the "
        "same number of labels: always so in the reference's batches (no delay pattern, one mask for all codebooks) "
        "and in the custom batches the harness feeds it (measured: audio@reference differs by 1.4e-7 relative)"),
    "reference-step-weight-decay-on-rmsnorm": (
        "the no-decay rule only matters for trainable norm weights under weight_decay > 0: the reference's recipe "
        "has weight_decay 0.0 (TrainingArguments' default, no CLI flag changes it) and LoRA trains no norm weights, "
        "so no run of the reference can differ (a latent bug for library use)"),
}


def all_mutants() -> list[dict]:
    out = []
    for source, mutants in (("helper", mutants_helper.MUTANTS), ("core", mutants_core.MUTANTS),
                            ("fresh", mutants_fresh.MUTANTS)):
        for m in mutants:
            m = dict(m, author=source)
            if m["id"] in STAGE_OVERRIDES:
                m["written_stage"] = m["stage"]
                m["stage"], m["stage_reason"] = STAGE_OVERRIDES[m["id"]]
            m["equivalent"] = EQUIVALENT.get(m["id"])
            m["args"] = tuple(m.get("args", ())) + ARGS.get(m["id"], ())
            out.append(m)
    ids = [m["id"] for m in out]
    if len(ids) != len(set(ids)):
        raise ValueError("duplicate mutant ids")
    return out


def apply(text: str, mutant: dict) -> str:
    """The file text with the mutant applied; raises ValueError unless `find` occurs exactly once."""
    n = text.count(mutant["find"])
    if n != 1:
        raise ValueError(f"mutant {mutant['id']}: snippet occurs {n} times in {mutant['file']}")
    return text.replace(mutant["find"], mutant["replace"])
