"""The conformance checks `python -m harness.check_adapter` runs, in order: name -> what is checked.

Torch-free, so that `--help` lists them at once; `harness.adapters.conformance` implements them.
"""

from __future__ import annotations

CHECKS: dict[str, str] = {
    "contract": "every required name exists; the functions take the documented parameters",
    "types": "NAME is a str, CONVENTIONS a Conventions, DEFAULT_TRAIN a TrainConfig",
    "dataset": "write_native + dataset give one DatasetItem per record, in order, with valid audio indices, "
               "(L,) token ids and labels, (C, T) codes",
    "collate-pure": "collate does not mutate its input items",
    "collate-order": "collating batch A then B equals B then A (no state carried between calls)",
    "batch": "the batch has the upstream fields with the right ranks",
    "checkpoint": "build_model loads every checkpoint weight: no missing keys, no extra keys but adapters",
    "train-mode": "build_model returns a module in train() mode",
    "forward": "ForwardOutputs with (B, L, V) logits and (N, C, K) audio logits",
    "loss": "a LossBreakdown whose total is a finite differentiable scalar",
    "optional-outputs": "lists the optional outputs (OPTIONAL_OUTPUTS) left None and what each costs "
                        "(never a failure)",
    "gradients": "the loss reaches every trainable parameter (LoRA B set non-zero first, as the harness does)",
    "step": "make_optimizer + step change the trainable parameters",
    "faults": "an unknown fault name raises UnknownFaultError",
    "config": "effective_config has every section of EFFECTIVE_CONFIG_SECTIONS",
    "conventions": "effective_config agrees with the declared conventions and recipe, and build_model honours its "
                   "TrainConfig (the harness compares the adapter with itself)",
    "declared-behaviour": "where the pipeline's dataset, collator, loss, gradients and update deviate from its "
                          "declared conventions: a finding (a bug in the pipeline, or a declaration to correct), "
                          "never a failure",
}


def checks_epilog(width: int = 88) -> str:
    """The checks as a `--help` epilog: one `name  description` entry per check, wrapped at `width`."""
    import textwrap

    pad = max(len(n) for n in CHECKS) + 4
    lines = ["checks (each runs unless a check whose output it needs failed; the reason then names it):"]
    for name, text in CHECKS.items():
        lines += textwrap.wrap(text, width=width, initial_indent=f"  {name:<{pad - 2}}", subsequent_indent=" " * pad)
    return "\n".join(lines)
