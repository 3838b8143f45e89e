"""The config stage: both pipelines' effective configurations, key by key, against their declarations.

Each adapter's `effective_config(ctx, DEFAULT_TRAIN)` says what its code really uses (collator
settings read off the collator object, LoRA config, optimizer, schedule, precision, DDP).  For every
flattened key:

* cross-side: a difference is expected only when it follows from the two declarations — the
  `Conventions` (delay pattern, masking, label layout, voice prompt placement, trained turns, loss
  conventions), the declared training recipes (`DEFAULT_TRAIN`: LoRA, optimizer, schedule), the
  faults switched on, or a pair-specific override pinned to exact values; anything else diverges;
* per side: keys the declarations determine must have the declared value (`<key>@<side>`).

In the pipeline order this stage comes last: it explains, it is not in the data flow.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from harness.engine import wiring
from harness.engine.fields import FieldSpec
from harness.engine.tolerance import Tolerance
from harness.engine.worker import on_side
from harness.report.model import StageResult
from harness.semantics.configdiff import flatten
from harness.semantics.expectations import Expected
from harness.semantics.prompt import declared_messages
from higgs_common.conventions import DEFECTIVE_DECLARATIONS, Conventions, PerDevice
from higgs_common.stages import TrainConfig

EXACT = Tolerance(0.0, 0.0, "exact")
ABSENT = "—"


def _describe(conv: Conventions) -> list[str]:
    """The message layout a declaration renders, as "role:kind+kind" (reference_impl's format)."""
    from types import SimpleNamespace

    rec = SimpleNamespace(id="x", text="t", ref_text="r", audio="a.wav", ref_audio="r.wav", scene="s", speaker="s")
    msgs, _start, _roles = declared_messages(rec, conv)
    out = []
    for m in msgs:
        parts = m.content if isinstance(m.content, list) else [m.content]
        out.append(f"{m.role}:" + "+".join("audio" if getattr(p, "type", "text") == "audio" else "text" for p in parts))
    return out


def convention_keys(model_config: Any) -> dict[str, Callable[[Conventions], Any]]:
    """Effective-config keys a `Conventions` declaration determines, and their declared values."""
    keys: dict[str, Callable[[Conventions], Any]] = {
        "collator.use_delay_pattern": lambda cv: cv.delay_pattern_for(model_config),
        "collator.mask_audio_out_token_label": lambda cv: cv.mask_audio_out_token_label,
        "collator.label_audio_ids": lambda cv: "audio_out_ids" if cv.audio_label_layout == "bos_first" else "upstream",
        "message_layout.voice_prompt": lambda cv: cv.voice_prompt,
        "message_layout.trained_turns": lambda cv: sorted(cv.trained_turns),
        "message_layout.messages": _describe,
    }
    for k in ("text_reduction", "audio_reduction", "total", "audio_shift_scope", "accumulation", "audio_shift"):
        keys[f"loss.{k}"] = (lambda name: lambda cv: cv.loss.to_json()[name])(k)
    return keys


def recipe_keys() -> dict[str, Callable[[TrainConfig], Any]]:
    """Effective-config keys a declared training recipe (DEFAULT_TRAIN) determines."""
    def lora(attr: str, fn: Callable[[Any], Any] = lambda v: v) -> Callable[[TrainConfig], Any]:
        return lambda t: fn(getattr(t, attr)) if t.use_lora else ABSENT
    return {
        "lora.enabled": lambda t: t.use_lora, "lora.r": lora("lora_r"), "lora.alpha": lora("lora_alpha"),
        "lora.dropout": lora("lora_dropout"), "lora.target_modules": lora("lora_target_modules", sorted),
        "optimizer.lr": lambda t: t.learning_rate, "optimizer.betas": lambda t: list(t.adam_betas),
        "optimizer.eps": lambda t: t.adam_eps, "optimizer.weight_decay": lambda t: t.weight_decay,
        "optimizer.max_grad_norm": lambda t: t.max_grad_norm, "schedule.type": lambda t: t.schedule,
        "schedule.warmup_steps": lambda t: t.warmup_steps, "schedule.max_steps": lambda t: t.max_steps,
    }


def _start_index_ok(value: Any, conv: Conventions) -> bool:
    """A start_index consistent with the declared layout: it labels exactly the declared turns."""
    msgs, start, _ = declared_messages(_Dummy(), conv)
    assistant = [i for i, m in enumerate(msgs) if m.role == "assistant"]
    trained = assistant if start is None else [i for i in assistant if i >= start]
    if value is None:
        return trained == assistant
    return [i for i in assistant if i >= int(value)] == trained


class _Dummy:
    id, text, ref_text, audio, ref_audio, scene, speaker = "x", "t", "r", "a.wav", "r.wav", "s", "s"


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def run_config(c: Any) -> StageResult:
    t0 = time.perf_counter()
    ref_eff, cus_eff = c.side["reference"].effective, c.side["custom"].effective
    fr, fc = flatten(ref_eff), flatten(cus_eff)
    conv = c.conv
    train = {role: c.mod(role).DEFAULT_TRAIN for role in c.side}
    ckeys, rkeys = convention_keys(c.model_config), recipe_keys()
    faults = sorted(c.side["custom"].ctx.faults)
    fields = []
    for key in sorted(set(fr) | set(fc)):
        r, u = fr.get(key, ABSENT), fc.get(key, ABSENT)
        entry = None
        if key in ckeys:
            dr, dc = ckeys[key](conv["reference"]), ckeys[key](conv["custom"])
            entry = Expected(f"declared:{key}", "config", key,
                             f"declared conventions: the reference declares {dr!r}, the custom side {dc!r}",
                             holds=lambda a, b, info, dr=dr, dc=dc: a == dr and b == dc)
        elif key in rkeys:
            dr, dc = rkeys[key](train["reference"]), rkeys[key](train["custom"])
            entry = Expected(f"recipe:{key}", "config", key,
                             f"declared training recipes (DEFAULT_TRAIN): reference {dr!r}, custom {dc!r}; the harness "
                             "compares under its common configuration and checks each recipe at the step stage",
                             holds=lambda a, b, info, dr=dr, dc=dc: a == dr and b == dc)
        elif key.startswith("lora.") and ABSENT in (r, u) and not all(t.use_lora for t in train.values()):
            off = [role for role, t in train.items() if not t.use_lora]
            entry = Expected("recipe:lora-off", "config", key,
                             f"LoRA is off in the declared recipe of the {', '.join(off)} side (DEFAULT_TRAIN), so it "
                             "has no LoRA settings", holds=lambda a, b, info, off=off: (a == ABSENT) == ("reference" in off)
                             and (b == ABSENT) == ("custom" in off))
        elif key == "message_layout.start_index":
            entry = Expected("declared:start_index", "config", key,
                             "each start_index labels exactly the turns its side declares trained",
                             holds=lambda a, b, info: _start_index_ok(a, conv["reference"]) and
                             _start_index_ok(b, conv["custom"]))
        elif key in conv["reference"].config_notes or key in conv["custom"].config_notes:
            noted = {role: conv[role].config_notes[key] for role in ("reference", "custom")
                     if key in conv[role].config_notes}
            dev = c.device.type
            noted = {role: (v.on(dev) if isinstance(v, PerDevice) else v, reason)
                     for role, (v, reason) in noted.items()}
            why = "; ".join(f"{role} {v!r} on {dev}: {reason}" for role, (v, reason) in noted.items())
            entry = Expected(f"noted:{key}", "config", key, f"declared implementation choice (config_notes): {why}",
                             holds=lambda a, b, info, noted=noted: all(
                                 (a if role == "reference" else b) == _plain(v) for role, (v, _r) in noted.items()))
        elif key == "faults":
            entry = Expected("faults", "config", key, f"faults switched on by request: {faults}",
                             holds=lambda a, b, info: a in ([], ABSENT) and b == faults)
        fields.append(c.fields.compare("config", key, r, u, FieldSpec(tol=EXACT), entry=entry))
    for role, flat in (("reference", fr), ("custom", fc)):
        for key, fn in list(ckeys.items()) + list(rkeys.items()):
            src = conv[role] if key in ckeys else train[role]
            fields.append(c.fields.compare("config", f"{key}@{role}", fn(src), flat.get(key, ABSENT),
                                           FieldSpec(tol=EXACT, check="declared", side=role)))
    for role in ("reference", "custom"):          # truthful declarations that no recipe should make
        for key, (bad, sound, _why) in DEFECTIVE_DECLARATIONS.items():
            if key in ckeys and ckeys[key](conv[role]) == bad:    # 'reference' column: what a sound recipe has
                fields.append(c.fields.compare("config", f"defect.{key}@{role}", sound, bad,
                                               FieldSpec(tol=EXACT, check="declared", side=role)))
    compute = 0.0
    for role in ("reference", "custom"):
        wf, dt = _wiring_fields(c, role, train[role])
        fields += wf
        compute += dt
    return StageResult("config", "ok", fields, compute, time.perf_counter() - t0 - compute)


def _wiring_fields(c: Any, role: str, recipe: TrainConfig) -> tuple[list, float]:
    """`lora_built.<key>@<role>`: what the side's build_model builds from its own recipe, against
    what the recipe asks for (`harness.engine.wiring`).  A build that raises is a divergence too."""
    t0 = time.perf_counter()
    try:
        adapter = c.mod(role)
        info = on_side(adapter, wiring.probe, adapter, wiring.probe_context(c.side[role].ctx), recipe)
    except Exception as exc:  # noqa: BLE001 - reported as a diverged field naming the exception, never silent
        err = f"{type(exc).__name__}: {exc}"
        c.evidence.setdefault("wiring", {})[role] = {"error": err}
        field = c.fields.compare("config", f"lora_built.builds@{role}", "builds", err[:300],
                                 FieldSpec(tol=EXACT, check="declared", side=role))
        return [field], time.perf_counter() - t0
    c.evidence.setdefault("wiring", {})[role] = info
    fields = [c.fields.compare("config", f"lora_built.{key}@{role}", info["requested"][key], info["built"][key],
                               FieldSpec(tol=EXACT, check="declared", side=role))
              for key in ("r", "scaling", "dropout", "targets", "init_repeatable")]
    return fields, time.perf_counter() - t0
