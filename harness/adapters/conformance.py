"""Conformance checks of one adapter against the stage contract, on the embedded tiny checkpoint.

Each check returns `Check(name, passed, reason)`; `run_checks(spec)` runs every check of
`harness.adapters.checks.CHECKS` (the list and what each one checks) in that order.  Checks are
independent where they can be: a check runs when the adapter defines the names it calls, and is
"not run" only when it needs the output of an earlier check that failed, which the reason names.
Every failure says what to change in the adapter.  An adapter that cannot be imported at all is
bad input: `run_checks` raises `AdapterError` (exit status 2 in `python -m harness.check_adapter`).
The contract itself is documented in higgs_common/stages.py.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from harness.adapters.checks import CHECKS
from harness.engine.fused import with_derived_stages
from harness.engine.sides import AdapterError, import_spec, missing_contract
from higgs_common.conventions import Conventions
from higgs_common.stages import (EFFECTIVE_CONFIG_SECTIONS, DatasetItem, ForwardOutputs, LossBreakdown, TrainConfig,
                                 UnknownFaultError, omitted_outputs)

SIGNATURES: dict[str, tuple[str, ...]] = {
    "write_native": ("records", "out_dir"), "dataset": ("native_path", "ctx"), "collate": ("items", "ctx"),
    "build_model": ("ctx", "train"), "forward": ("model", "batch", "ctx"), "loss": ("outputs", "batch", "ctx"),
    "backward": ("loss", "model"), "make_optimizer": ("model", "train"), "step": ("model", "optimizer", "ctx", "train"),
    "effective_config": ("ctx", "train"),
}
BATCH_RANKS = {"input_ids": 2, "attention_mask": 2, "label_ids": 2, "audio_out_ids": 2, "audio_out_ids_start": 1,
               "label_audio_ids": 2}


@dataclass
class Check:
    name: str
    passed: bool
    reason: str

    def to_json(self) -> dict:
        return {"check": self.name, "passed": self.passed, "reason": self.reason}


class _Failed(Exception):
    """A check's own failure (its message is the reason)."""


def _positional(fn: Callable[..., Any]) -> list[str]:
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _batch_fields(batch: Any) -> dict[str, Any]:
    return {k: getattr(batch, k, None) for k in ("input_ids", "attention_mask", "label_ids", "audio_in_ids",
                                                   "audio_in_ids_start", "audio_out_ids", "audio_out_ids_start",
                                                   "label_audio_ids")}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    return a == b


def _snapshot(items: list) -> list[dict]:
    out = []
    for it in items:
        s = it.sample
        out.append({k: (v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)) for k, v in vars(s).items()})
    return out


# What to change in the adapter when a declaration or wiring check of the `conventions` check fails,
# by field name without its "@side" label (the rest say "declared X, actual Y" and name the field).
DECLARATION_FIXES: dict[str, str] = {
    "lora_built.init_repeatable": "build_model must call torch.manual_seed(train.seed) (or transformers.set_seed) "
                                  "before creating LoRA weights",
    "lora_built.r": "build_model must pass r=train.lora_r to peft.LoraConfig",
    "lora_built.scaling": "build_model must pass lora_alpha=train.lora_alpha to peft.LoraConfig (and leave "
                          "use_rslora off)",
    "lora_built.dropout": "build_model must pass lora_dropout=train.lora_dropout to peft.LoraConfig",
    "lora_built.targets": "build_model must pass target_modules=list(train.lora_target_modules) to peft.LoraConfig, "
                          "and DEFAULT_TRAIN.lora_target_modules must name modules of the model (q_proj, ...)",
    "lora_built.builds": "build_model must build a model from (ctx, train) for its own DEFAULT_TRAIN with "
                         "use_lora=True; fix the error above",
}
ADAPTER_LABEL = "adapter"    # the adapter under test, in messages (it plays both roles of the self-comparison)


def _unlabelled(field: str) -> str:
    """`lora_built.r@reference` -> `lora_built.r`, `grad@custom/w` -> `grad/w`: the self-comparison's roles
    mean nothing to the user."""
    return re.sub(r"@(?:reference|custom)(?=[/\[:.]|$)", "", field)


def declaration_failure(field: str, declared: Any, actual: Any, cause: str | None) -> str:
    """One failed declaration check, said about the adapter, with what to change."""
    name = _unlabelled(field)
    what = re.sub(r"\bthe (?:reference|custom)(?: side's| side)?\b", "the adapter's", cause or "")
    if name.startswith("defect."):        # a truthful declaration of a defect (DEFECTIVE_DECLARATIONS)
        return f"declared defect: {what or name}"
    fix = DECLARATION_FIXES.get(name)
    if fix is None:
        fix = (f"make CONVENTIONS declare what the pipeline does, or the pipeline do what CONVENTIONS declares "
               f"(higgs_common/conventions.py documents {name.split('.')[0]!r})")
    return f"{name}: declared {declared!r}, actual {actual!r}" + (f" ({what})" if what else "") + f". Fix: {fix}"


class Conformance:
    """Runs the checks of `harness.adapters.checks.CHECKS` on one adapter SPEC."""

    def __init__(self, spec: str, *, samples: int = 4) -> None:
        self.spec = spec
        self.samples = samples
        self.results: list[Check] = []
        self.state: dict[str, Any] = {}

    def _passed(self, name: str) -> bool:
        return any(c.name == name and c.passed for c in self.results)

    def check(self, name: str, *, uses: tuple[str, ...] = (), needs: tuple[str, ...] = ()):
        """Register and run check `name` now: it calls the adapter's `uses` names and the outputs of the
        earlier checks `needs`; it is "not run" when a name is absent or a needed check failed."""
        if name not in CHECKS:
            raise KeyError(f"check {name!r} is not listed in harness.adapters.checks.CHECKS")

        def deco(fn: Callable[[], str]) -> None:
            absent = [n for n in uses if not hasattr(self.mod, n)]
            failed = [n for n in needs if not self._passed(n)]
            if absent:
                self.results.append(Check(name, False, f"not run: the adapter does not define {absent} "
                                                       "(see the contract check)"))
                return
            if failed:
                self.results.append(Check(name, False, f"not run: needs the output of {', '.join(failed)}, "
                                                       "which failed"))
                return
            try:
                self.results.append(Check(name, True, fn() or "ok"))
            except _Failed as exc:
                self.results.append(Check(name, False, str(exc)))
            except Exception as exc:  # noqa: BLE001 - an adapter raising is the finding this check reports
                self.results.append(Check(name, False, f"raised {type(exc).__name__}: {exc}; fix the adapter so "
                                                       "that this call succeeds on the shipped samples"))
        return deco

    def run(self) -> list[Check]:
        from harness.api import select_records
        from higgs_common import DEFAULT_MANIFEST
        from higgs_common.context import build_context
        from higgs_common.manifest import load_manifest

        # AdapterError: not a module at all (bad input, exit 2); a fused forward_and_loss derives forward/loss
        self.mod = with_derived_stages(import_spec(self.spec))

        @self.check("contract")
        def _() -> str:
            problems = []
            missing = missing_contract(self.mod)
            if missing:
                problems.append(f"define {missing} in the adapter module (higgs_common/stages.py documents each)")
            for name, want in SIGNATURES.items():
                fn = getattr(self.mod, name, None)
                if fn is None:
                    continue
                got = _positional(fn)
                if got[:len(want)] != list(want) and len(got) < len(want):
                    problems.append(f"give {name} the contract's parameters {name}{want} (it has {name}{tuple(got)})")
            if problems:
                raise _Failed("; ".join(problems))
            return f"{len(SIGNATURES)} functions with the contract's parameters"

        @self.check("types", uses=("NAME", "CONVENTIONS", "DEFAULT_TRAIN"))
        def _() -> str:
            m = self.mod
            problems = []
            if not isinstance(m.NAME, str):
                problems.append(f"NAME is {type(m.NAME).__name__}: make it a str naming the pipeline")
            if not isinstance(m.CONVENTIONS, Conventions):
                problems.append("make CONVENTIONS a higgs_common.conventions.Conventions")
            if not isinstance(m.DEFAULT_TRAIN, TrainConfig):
                problems.append("make DEFAULT_TRAIN a higgs_common.stages.TrainConfig (the pipeline's own recipe)")
            if problems:
                raise _Failed("; ".join(problems))
            return f"NAME={m.NAME!r}"

        self.ctx = build_context()
        self.records = select_records(load_manifest(DEFAULT_MANIFEST), self.samples)
        self.tmp = tempfile.TemporaryDirectory(prefix="higgs-check-adapter-")

        @self.check("dataset", uses=("write_native", "dataset"))
        def _() -> str:
            native = self.mod.write_native(self.records, Path(self.tmp.name) / "native")
            items = self.mod.dataset(native, self.ctx)
            if not isinstance(items, list) or not all(isinstance(i, DatasetItem) for i in items):
                raise _Failed("make dataset return list[DatasetItem] (higgs_common.stages.DatasetItem), one per record")
            ids = [i.sample_id for i in items]
            want = [r.id for r in self.records]
            if ids != want:
                raise _Failed(f"sample ids {ids} are not the records' {want} in order (one item per record)")
            for it in items:
                s = it.sample
                n_audio = int(s.audio_ids_start.numel())
                for attr in ("target_audio_index", "reference_audio_index"):
                    idx = getattr(it, attr)
                    if idx is not None and not 0 <= idx < n_audio:
                        raise _Failed(f"{it.sample_id}: {attr}={idx} but the sample has {n_audio} audios")
                if s.input_ids.dim() != 1 or s.label_ids.shape != s.input_ids.shape:
                    raise _Failed(f"{it.sample_id}: make input_ids and label_ids 1-D (L,) tensors of equal length")
                if s.audio_ids_concat.dim() != 2 or s.audio_ids_concat.shape[0] != self.ctx.model_config.audio_num_codebooks:
                    raise _Failed(f"{it.sample_id}: make audio_ids_concat a (num_codebooks, T) tensor (codebooks first)")
            self.state["items"] = items
            return f"{len(items)} items, in record order"

        @self.check("collate-pure", uses=("collate",), needs=("dataset",))
        def _() -> str:
            items = self.state["items"]
            before = _snapshot(items)
            self.state["batch"] = self.mod.collate(items, self.ctx)
            after = _snapshot(items)
            for it, a, b in zip(items, before, after):
                changed = [k for k in a if not _same(a[k], b.get(k))]
                if changed:
                    raise _Failed(f"collate mutated its input: sample {it.sample_id!r} fields {changed} changed "
                                  "(deep-copy before calling upstream collators, which write labels in place)")
            return "inputs unchanged"

        @self.check("collate-order", uses=("collate",), needs=("dataset",))
        def _() -> str:
            items = self.state["items"]
            a, b = items[: len(items) // 2] or items, items[len(items) // 2:] or items
            first = (_batch_fields(self.mod.collate(a, self.ctx)), _batch_fields(self.mod.collate(b, self.ctx)))
            second_b = _batch_fields(self.mod.collate(b, self.ctx))
            second_a = _batch_fields(self.mod.collate(a, self.ctx))
            for name, x, y in (("A", first[0], second_a), ("B", first[1], second_b)):
                diff = [k for k in x if not _same(x[k], y[k])]
                if diff:
                    raise _Failed(f"collating batch {name} again after the other gave different {diff}: state "
                                  "carried between calls")
            return "same batches in either order"

        @self.check("batch", needs=("collate-pure",))
        def _() -> str:
            fields = _batch_fields(self.state["batch"])
            for k, rank in BATCH_RANKS.items():
                v = fields.get(k)
                if not isinstance(v, torch.Tensor) or v.dim() != rank:
                    raise _Failed(f"batch field {k} must be a tensor of rank {rank}, got "
                                  f"{type(v).__name__ if not isinstance(v, torch.Tensor) else tuple(v.shape)}")
            return "upstream batch fields present"

        @self.check("checkpoint", uses=("build_model", "DEFAULT_TRAIN"))
        def _() -> str:
            from harness.engine.evidence import base_name
            from safetensors import safe_open

            torch.manual_seed(0)
            model = self.mod.build_model(self.ctx, self.mod.DEFAULT_TRAIN)
            self.state["model"] = model
            keys: set[str] = set()
            for f in sorted(Path(self.ctx.model_path).glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as fh:
                    keys.update(fh.keys())
            names = {base_name(n) for n, _ in model.named_parameters() if "lora_" not in n}
            names |= {base_name(n) for n, _ in model.named_buffers() if "lora_" not in n and base_name(n) in keys}
            missing = sorted(keys - names)
            extra = sorted(n for n in names - keys)
            if missing or extra:
                raise _Failed(f"{len(missing)} checkpoint weights not loaded (first {missing[:3]}), {len(extra)} "
                              f"parameters not in the checkpoint (first {extra[:3]})")
            return f"all {len(keys)} checkpoint weights loaded"

        @self.check("train-mode", needs=("checkpoint",))
        def _() -> str:
            if not self.state["model"].training:
                raise _Failed("build_model returns the model in eval() mode: call model.train() before returning it")
            return "train()"

        @self.check("forward", uses=("forward",), needs=("checkpoint", "collate-pure"))
        def _() -> str:
            from harness.engine.runner import LORA_B_STD, set_lora_b

            model = self.state["model"]
            set_lora_b({n: p for n, p in model.named_parameters() if p.requires_grad}, std=LORA_B_STD, seed=0)
            out = self.mod.forward(model, self.state["batch"], self.ctx)
            if not isinstance(out, ForwardOutputs):
                raise _Failed("make forward return higgs_common.stages.ForwardOutputs")
            if out.logits.dim() != 3 or (out.audio_logits is not None and out.audio_logits.dim() != 3):
                raise _Failed(f"logits {tuple(out.logits.shape)} must be (B, L, V), audio_logits (N, C, K)")
            self.state["outputs"] = out
            return f"logits {tuple(out.logits.shape)}"

        @self.check("loss", uses=("loss",), needs=("forward",))
        def _() -> str:
            lb = self.mod.loss(self.state["outputs"], self.state["batch"], self.ctx)
            if not isinstance(lb, LossBreakdown):
                raise _Failed("make loss return higgs_common.stages.LossBreakdown")
            if lb.total.dim() != 0 or not bool(torch.isfinite(lb.total)) or not lb.total.requires_grad:
                raise _Failed("LossBreakdown.total must be a finite scalar that keeps the autograd graph")
            self.state["loss"] = lb
            return f"total {float(lb.total.detach()):.4g}"

        @self.check("optional-outputs", needs=("loss",))
        def _() -> str:
            return optional_output_costs(self.state["outputs"], self.state["loss"])

        @self.check("gradients", uses=("backward",), needs=("loss",))
        def _() -> str:
            model = self.state["model"]
            grads = self.mod.backward(self.state["loss"], model)
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            if set(grads) != trainable:
                raise _Failed(f"backward returned {len(grads)} names for {len(trainable)} trainable parameters")
            none = sorted(n for n, g in grads.items() if g is None)
            zero = sorted(n for n, g in grads.items() if g is not None and bool((g == 0).all()))
            if none or zero:
                raise _Failed(f"the loss does not reach {len(none)} trainable parameter(s) (no gradient, first "
                              f"{none[:2]}) and gives exactly zero to {len(zero)} (first {zero[:2]})")
            return f"gradients reach all {len(trainable)} trainable parameters"

        @self.check("step", uses=("make_optimizer", "step", "DEFAULT_TRAIN"), needs=("gradients",))
        def _() -> str:
            model = self.state["model"]
            # warmup off: a linear warmup's first learning rate is 0 (the schedule itself is checked by the
            # harness's step stage against the declared formula)
            train = self.mod.DEFAULT_TRAIN.replace(warmup_steps=0)
            opt, _sched = self.mod.make_optimizer(model, train)
            before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            after = self.mod.step(model, opt, self.ctx, train)
            moved = sum(1 for n in before if n in after and not torch.equal(before[n], after[n]))
            if not moved:
                raise _Failed("step() did not change any trainable parameter: step must call optimizer.step() on an "
                              "optimizer over the trainable parameters (make_optimizer), after backward")
            return f"{moved} of {len(before)} trainable tensors moved"

        @self.check("faults", uses=("write_native", "dataset", "collate", "build_model", "DEFAULT_TRAIN"))
        def _() -> str:
            bad = dataclasses.replace(self.ctx, faults=frozenset({"no-such-fault-xyz"}))
            native = self.mod.write_native(self.records[:1], Path(self.tmp.name) / "faults")
            for call in (lambda: self.mod.dataset(native, bad), lambda: self.mod.collate(self.state.get("items", [])[:1], bad),
                         lambda: self.mod.build_model(bad, self.mod.DEFAULT_TRAIN)):
                try:
                    call()
                except UnknownFaultError:
                    return "an unknown fault name raises UnknownFaultError"
            raise _Failed("no stage function rejected the unknown fault 'no-such-fault-xyz': check ctx.faults against "
                          "the adapter's FAULTS and raise higgs_common.stages.UnknownFaultError for other names")

        @self.check("config", uses=("effective_config", "DEFAULT_TRAIN"))
        def _() -> str:
            cfg = self.mod.effective_config(self.ctx, self.mod.DEFAULT_TRAIN)
            missing = [s for s in EFFECTIVE_CONFIG_SECTIONS if s not in cfg]
            if missing:
                raise _Failed(f"effective_config lacks sections {missing}: add them (higgs_common/stages.py lists "
                              "each section's keys)")
            return f"{len(EFFECTIVE_CONFIG_SECTIONS)} sections"

        def declared(config: bool) -> tuple[dict[str, Any], int]:
            """Diverged declaration checks of the adapter compared with itself, one per field: those of
            the config stage (what the adapter declares and builds) or of the data-flow stages."""
            from harness.api import compare

            if "self_report" not in self.state:
                self.state["self_report"] = compare(self.spec, self.spec, stage="all", samples=self.samples,
                                                    ddp_world_size=0)
            bad: dict[str, Any] = {}     # both roles of the self-comparison report each field
            n = 0
            for st in self.state["self_report"].stages:
                for f in st.fields:
                    if f.check == "declared" and (st.stage == "config" and not f.field.startswith("defect.")) == config:
                        n += 1
                        if f.diverged:
                            bad.setdefault(_unlabelled(f.field), f)
            return bad, n

        @self.check("conventions", needs=("contract", "types"))
        def _() -> str:
            bad, n = declared(config=True)
            if bad:
                lines = [declaration_failure(f.field, f.reference, f.custom, (f.cause or {}).get("mechanism"))
                         for f in bad.values()]
                raise _Failed(f"{len(bad)} declaration check(s) fail: " + " | ".join(lines))
            return f"{n} declaration checks hold (effective configuration, recipe, LoRA build)"

        @self.check("declared-behaviour", needs=("contract", "types"))
        def _() -> str:
            bad, n = declared(config=False)
            if not bad:
                return f"{n} checks hold: the pipeline does what its conventions declare"
            first = sorted(bad.values(), key=lambda f: not f.field.startswith("defect."))[:3]
            return (f"FINDING (not a failure): the pipeline deviates from its declared conventions at {len(bad)} of "
                    f"{n} checks, first: " + " | ".join(
                        declaration_failure(f.field, f.reference, f.custom, (f.cause or {}).get("mechanism"))
                        for f in first)
                    + ". A bug in the pipeline (compare reports each with its cause), or a declaration to correct")

        self.tmp.cleanup()
        return self.results


def optional_output_costs(outputs: ForwardOutputs, lb: LossBreakdown) -> str:
    """What the optional outputs this adapter leaves None cost (`higgs_common.stages.OPTIONAL_OUTPUTS`):
    comparisons and causes the harness cannot make with it; never a divergence."""
    lost = {**{f"ForwardOutputs.{k}": v for k, v in omitted_outputs("forward", outputs).items()},
            **{f"LossBreakdown.{k}": v for k, v in omitted_outputs("loss", lb).items()}}
    if not lost:
        return "every optional output provided"
    return (f"{len(lost)} optional output(s) omitted (not compared, never a divergence; "
            "higgs_common.capture can recover them from a fused forward+loss): "
            + "; ".join(f"{k} -> loses {v}" for k, v in lost.items()))


def run_checks(spec: str, *, samples: int = 4) -> list[Check]:
    return Conformance(spec, samples=samples).run()
