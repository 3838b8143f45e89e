"""Does each side's `build_model` honour the TrainConfig it is given?  A probe on the tiny checkpoint.

The comparison stages run both sides under the harness's common configuration with identical
weights (the harness seeds before each build and copies the reference's trainables into the
custom model), so a `build_model` that drops a LoRA argument, whose recipe names a target module
that matches nothing (peft skips such a name silently), or that never seeds its random adapter
init, computes the same numbers there.  This probe builds each side's model from its OWN training
recipe (`DEFAULT_TRAIN`, LoRA forced on so the LoRA wiring is exercised) and reads back what was
built:

* `lora_built.r`, `.scaling`, `.dropout`: the distinct values over every peft LoRA layer, against
  [r], [alpha / r] and [dropout] requested (peft's LoraLayer attributes);
* `lora_built.targets`: the requested `lora_target_modules` entries that wrap a module (matched as
  peft matches them: exact name or dotted suffix, `higgs_common.param_names.lora_target_matches`)
  plus the last name component of any wrapped module no entry asked for, against the requested
  entries (a requested name that wraps nothing, or a wrapped name nobody asked for);
* `lora_built.init_repeatable`: two builds after different ambient RNG states give the same
  trainable values, i.e. the init is a function of `train.seed` (HF's `set_seed` / torch's
  `manual_seed` inside `build_model`, as both in-repo pipelines do).

It runs on the embedded tiny checkpoint on the CPU whatever checkpoint the comparison uses: it
checks wiring, not weights, and the tiny model has the released architecture's module names.
Four tiny builds, about a second each.
"""

from __future__ import annotations

from typing import Any

import torch

from higgs_common.param_names import lora_target_matches
from higgs_common.stages import StageContext, TrainConfig

AMBIENT_SEEDS = (1234, 98765)   # RNG states before the two builds of the repeatability check


def probe_config(recipe: TrainConfig) -> TrainConfig:
    """The side's own recipe with LoRA on (a full fine-tuning recipe still declares LoRA settings)."""
    return recipe.replace(use_lora=True)


def lora_layers(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """{module name: {"r", "scaling", "dropout"}} of every peft LoRA layer (adapter "default")."""
    out: dict[str, dict[str, float]] = {}
    for name, m in model.named_modules():
        r, scaling = getattr(m, "r", None), getattr(m, "scaling", None)
        if isinstance(r, dict) and isinstance(scaling, dict) and "default" in r:
            drops = getattr(m, "lora_dropout", None)
            drop = drops["default"] if drops is not None and "default" in drops else None
            out[name] = {"r": int(r["default"]), "scaling": float(scaling["default"]),
                         "dropout": float(getattr(drop, "p", 0.0) or 0.0)}
    return out


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def probe(adapter: Any, ctx: StageContext, recipe: TrainConfig) -> dict[str, Any]:
    """Build `adapter`'s model twice from `probe_config(recipe)` and describe what was built.

    Returns {"requested": {...}, "built": {...}, "layers": n, "first_difference": str | None}.
    Exceptions from `build_model` propagate (the config stage reports them).
    """
    train = probe_config(recipe)
    snapshots = []
    layers: dict[str, dict[str, float]] = {}
    for ambient in AMBIENT_SEEDS:
        torch.manual_seed(ambient)
        model = adapter.build_model(ctx, train)
        snapshots.append(_trainable(model))
        layers = lora_layers(model)
        del model
    targets = list(train.lora_target_modules)
    # peft's own rule (`lora_target_matches`): "self_attn.q_proj" wraps "...layers.0.self_attn.q_proj".
    # Built targets: each requested entry that wraps at least one module, plus the last name
    # component of every wrapped module that no entry asked for.
    matched = {t for t in targets if any(lora_target_matches(name, [t]) for name in layers)}
    unasked = {name.rsplit(".", 1)[-1] for name in layers if not lora_target_matches(name, targets)}
    wrapped = sorted(matched | unasked)
    requested = {"r": [train.lora_r], "scaling": [train.lora_alpha / train.lora_r], "dropout": [float(train.lora_dropout)],
                 "targets": sorted(set(targets)), "init_repeatable": True}
    built = {"r": sorted({v["r"] for v in layers.values()}),
             "scaling": sorted({v["scaling"] for v in layers.values()}),
             "dropout": sorted({v["dropout"] for v in layers.values()}),
             "targets": wrapped, "init_repeatable": _same(*snapshots)}
    first = None
    if not built["init_repeatable"]:
        a, b = snapshots
        first = next((k for k in a if k not in b or not torch.equal(a[k], b[k])), None)
    return {"requested": requested, "built": built, "layers": len(layers), "first_difference": first}


def probe_context(ctx: StageContext) -> StageContext:
    """A CPU context on the embedded tiny checkpoint with `ctx`'s faults, seed and options."""
    from higgs_common.context import build_context

    return build_context(None, None, device="cpu", faults=ctx.faults, seed=ctx.seed, options=ctx.options)
