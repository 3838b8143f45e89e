"""Symptoms of a stage replay (`higgs-diff compare`): what each side's training would show a user.

Read off what each side produced (`runner.SideState`): its forward outputs, its `LossBreakdown`,
its gradients (or the error its backward raised).  The checks mirror `harness.trace.symptoms`
(which reads a real run): an audio loss of exactly 0.0 on a batch with target audio and why (no
audio logits because the model call got no audio-out ids; no supervised audio label), text labels
missing from the model call, a total loss without a graph, trainable parameters that receive no
gradient.  Never raises: a value it cannot read is skipped.
"""

from __future__ import annotations

from typing import Any

import torch


def _num(x: Any) -> float | None:
    try:
        return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)
    except (TypeError, ValueError, RuntimeError):
        return None


def side_symptoms(role: str, name: str, state: Any, backward_error: str | None = None) -> list[dict[str, Any]]:
    """Symptoms of one side (`role` reference/custom, `name` its adapter's NAME)."""
    out: list[dict[str, Any]] = []
    lb, outputs = getattr(state, "loss", None), getattr(state, "outputs", None)

    def add(kind: str, text: str, mechanism: str, stage: str, field: str) -> None:
        out.append({"kind": kind, "text": text, "mechanism": mechanism, "stage": stage, "field": field,
                    "steps": [], "location": None, "run": f"{role} ({name})"})
    audio_logits = getattr(outputs, "audio_logits", None)
    no_audio_logits = audio_logits is None or (isinstance(audio_logits, torch.Tensor) and audio_logits.numel() == 0)
    no_text_labels = outputs is not None and getattr(outputs, "expanded_labels", None) is None
    if lb is not None:
        audio = _num(getattr(lb, "audio", None))
        has_target = bool(getattr(lb, "has_target_audio", False))
        if audio == 0.0 and has_target:
            if no_audio_logits:
                why = ("the model produced no audio logits: its call got no audio-out ids (audio_out_ids / "
                       "label_audio_ids missing from the model call), so there is nothing to score")
            elif getattr(lb, "audio_supervised_tokens", None) == 0:
                why = "no audio position is supervised: every audio label is -100"
            else:
                why = "the audio term is 0.0 although audio positions are supervised: it is not computed from them"
            add("zero_loss", "audio loss is exactly 0.0 on a batch with target audio", why, "loss", "audio_loss")
        total = getattr(lb, "total", None)
        # The loss stage may run without autograd; a missing graph shows when the side's own backward says so.
        if isinstance(total, torch.Tensor) and not total.requires_grad and backward_error \
                and "grad" in backward_error:
            add("detached_loss", f"the total loss ({_num(total):.6g}) has no graph", "it is built from constants or "
                "detached terms, so backward() cannot reach any parameter", "loss", "total")
    if no_text_labels:
        text_term = _num(getattr(lb, "text", None)) if lb is not None else None
        if text_term:     # yet the loss scores text: against labels that are not the expanded sequence's
            why = (f"label_ids never reach the model, yet its loss has a text term ({text_term:.4g}): it scores the "
                   "expanded logits against labels taken from elsewhere (e.g. the un-expanded label_ids, which "
                   "do not line up with the expanded sequence)")
        else:
            why = "label_ids never reach the model, so the text loss has nothing to score"
        add("unscored_head", "the model call got no text labels (expanded_labels is None)", why, "forward",
            "expanded_labels")
    model = getattr(state, "model", None)
    grads = getattr(state, "grads", None)
    if isinstance(grads, dict) and grads:       # backward returns one entry per trainable parameter
        trainable = list(grads)
    elif isinstance(model, torch.nn.Module):
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    else:                                       # a worker's model (a handle): nothing to count without grads
        trainable = []
    if trainable:
        if grads is None and backward_error:
            add("no_gradient", f"none of the {len(trainable)} trainable parameters receives a gradient",
                f"backward failed: {backward_error}", "backward", "gradients")
        elif isinstance(grads, dict) and grads:
            none = [n for n, g in grads.items() if g is None]
            if none:
                add("no_gradient", f"{len(none)} of {len(grads)} trainable parameters receive no gradient",
                    "they are not on the path from the loss handed to backward()", "backward", "gradients")
    return out


def comparison_symptoms(comparison: Any, backward_errors: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Symptoms of both sides of a `runner.Comparison`, the side under test first."""
    found: list[dict[str, Any]] = []
    for role in ("custom", "reference"):
        state = comparison.side.get(role) if hasattr(comparison, "side") else None
        if state is None:
            continue
        try:
            found += side_symptoms(role, state.side.name, state, (backward_errors or {}).get(role))
        except Exception as exc:   # noqa: BLE001  (symptoms explain; they never take the report down)
            found.append({"kind": "unreadable", "text": f"symptoms of the {role} side could not be read",
                          "mechanism": f"{type(exc).__name__}: {exc}", "stage": "run", "field": "symptoms",
                          "steps": [], "location": None, "run": role})
    # In isolated mode a reference stage runs on the custom side's previous output: a reference symptom
    # the custom side also shows is inherited from that input, not the reference's own.
    custom_keys = {(s["kind"], s["field"]) for s in found if s["run"].startswith("custom")}
    found = [s for s in found if s["run"].startswith("custom") or (s["kind"], s["field"]) not in custom_keys]
    return sorted(found, key=lambda s: SYMPTOM_PRIORITY.get(s["kind"], 9))


# What a user notices first: a dead loss term, then parameters that do not train, then the rest.
SYMPTOM_PRIORITY = {"zero_loss": 0, "unscored_head": 0, "no_supervised_targets": 0, "nonfinite_loss": 0,
                    "no_gradient": 1, "zero_gradient": 1, "ranks_disagree": 1, "detached_loss": 2,
                    "never_moves": 2, "hyperparameter": 3, "constant_loss": 3, "logged_loss": 4, "run_error": 5}
