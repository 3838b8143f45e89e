"""Conformance checks of one adapter against the stage contract, on the embedded tiny checkpoint.

Each check returns `Check(name, passed, reason)`; `run_checks(spec)` runs them in order and keeps
going after a failure where it can (a later check that needs an earlier one's output is reported
as failed "because <earlier> failed").  What is checked (higgs_common/stages.py documents the
contract):

 1. contract      every required name exists; functions take the documented parameters
 2. types         NAME is a str, CONVENTIONS a Conventions, DEFAULT_TRAIN a TrainConfig
 3. dataset       write_native + dataset give one DatasetItem per record, in order, with valid
                  audio indices and (L,) token ids / labels, (C, T) codes
 4. collate-pure  collate does not mutate its input items
 5. collate-order collating batch A then B equals B then A (no state carried between calls)
 6. batch         the batch has the upstream fields with the right ranks
 7. checkpoint    build_model loads every checkpoint weight: no missing keys, no extra keys but adapters
 8. train-mode    build_model returns a module in train() mode
 9. forward       ForwardOutputs with (B, L, V) logits and (N, C, K) audio logits
10. loss          a LossBreakdown whose total is a finite differentiable scalar
10b. optional-outputs  lists the optional outputs (OPTIONAL_OUTPUTS) left None and what each costs
11. gradients     the loss reaches every trainable parameter (LoRA B set non-zero first, as the
                  harness does): no None, no all-zero gradient
12. step          make_optimizer + step change the trainable parameters
13. faults        an unknown fault name raises UnknownFaultError
14. config        effective_config has every section of EFFECTIVE_CONFIG_SECTIONS
15. conventions   the declared conventions match the outputs: the adapter compared with itself by
                  the harness has no diverged declaration check (`<field>@<side>`)
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

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


class Conformance:
    """Runs the checks of the module docstring on one adapter SPEC."""

    def __init__(self, spec: str, *, samples: int = 4) -> None:
        self.spec = spec
        self.samples = samples
        self.results: list[Check] = []
        self.state: dict[str, Any] = {}

    def check(self, name: str, needs: tuple[str, ...] = ()):
        def deco(fn: Callable[[], str]) -> None:
            missing = [n for n in needs if not any(c.name == n and c.passed for c in self.results)]
            if missing:
                self.results.append(Check(name, False, f"not run because {', '.join(missing)} failed"))
                return
            try:
                self.results.append(Check(name, True, fn() or "ok"))
            except _Failed as exc:
                self.results.append(Check(name, False, str(exc)))
            except Exception as exc:  # noqa: BLE001 - an adapter raising is the finding this check reports
                self.results.append(Check(name, False, f"raised {type(exc).__name__}: {exc}"))
        return deco

    def run(self) -> list[Check]:
        from harness.api import select_records
        from higgs_common import DEFAULT_MANIFEST
        from higgs_common.context import build_context
        from higgs_common.manifest import load_manifest

        @self.check("contract")
        def _() -> str:
            try:
                self.mod = with_derived_stages(import_spec(self.spec))
            except AdapterError as exc:
                raise _Failed(str(exc)) from exc
            missing = missing_contract(self.mod)
            if missing:
                raise _Failed(f"missing {missing}")
            bad = []
            for name, want in SIGNATURES.items():
                got = _positional(getattr(self.mod, name))
                if got[:len(want)] != list(want) and len(got) < len(want):
                    bad.append(f"{name}{tuple(got)} (contract: {name}{want})")
            if bad:
                raise _Failed("wrong signatures: " + "; ".join(bad))
            return f"{len(SIGNATURES)} functions with the contract's parameters"

        @self.check("types", needs=("contract",))
        def _() -> str:
            m = self.mod
            if not isinstance(m.NAME, str):
                raise _Failed(f"NAME is {type(m.NAME).__name__}, not str")
            if not isinstance(m.CONVENTIONS, Conventions):
                raise _Failed("CONVENTIONS is not a higgs_common.conventions.Conventions")
            if not isinstance(m.DEFAULT_TRAIN, TrainConfig):
                raise _Failed("DEFAULT_TRAIN is not a higgs_common.stages.TrainConfig")
            return f"NAME={m.NAME!r}"

        self.ctx = build_context()
        self.records = select_records(load_manifest(DEFAULT_MANIFEST), self.samples)
        self.tmp = tempfile.TemporaryDirectory(prefix="higgs-check-adapter-")

        @self.check("dataset", needs=("types",))
        def _() -> str:
            native = self.mod.write_native(self.records, Path(self.tmp.name) / "native")
            items = self.mod.dataset(native, self.ctx)
            if not isinstance(items, list) or not all(isinstance(i, DatasetItem) for i in items):
                raise _Failed("dataset must return list[DatasetItem]")
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
                    raise _Failed(f"{it.sample_id}: input_ids/label_ids must be (L,) of equal length")
                if s.audio_ids_concat.dim() != 2 or s.audio_ids_concat.shape[0] != self.ctx.model_config.audio_num_codebooks:
                    raise _Failed(f"{it.sample_id}: audio_ids_concat must be (num_codebooks, T)")
            self.state["items"] = items
            return f"{len(items)} items, in record order"

        @self.check("collate-pure", needs=("dataset",))
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

        @self.check("collate-order", needs=("dataset",))
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

        @self.check("checkpoint", needs=("types",))
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
                raise _Failed("build_model must return the model in train() mode")
            return "train()"

        @self.check("forward", needs=("checkpoint", "batch"))
        def _() -> str:
            from harness.engine.runner import LORA_B_STD, set_lora_b

            model = self.state["model"]
            set_lora_b({n: p for n, p in model.named_parameters() if p.requires_grad}, std=LORA_B_STD, seed=0)
            out = self.mod.forward(model, self.state["batch"], self.ctx)
            if not isinstance(out, ForwardOutputs):
                raise _Failed("forward must return ForwardOutputs")
            if out.logits.dim() != 3 or (out.audio_logits is not None and out.audio_logits.dim() != 3):
                raise _Failed(f"logits {tuple(out.logits.shape)} must be (B, L, V), audio_logits (N, C, K)")
            self.state["outputs"] = out
            return f"logits {tuple(out.logits.shape)}"

        @self.check("loss", needs=("forward",))
        def _() -> str:
            lb = self.mod.loss(self.state["outputs"], self.state["batch"], self.ctx)
            if not isinstance(lb, LossBreakdown):
                raise _Failed("loss must return LossBreakdown")
            if lb.total.dim() != 0 or not bool(torch.isfinite(lb.total)) or not lb.total.requires_grad:
                raise _Failed("LossBreakdown.total must be a finite scalar that keeps the autograd graph")
            self.state["loss"] = lb
            return f"total {float(lb.total.detach()):.4g}"

        @self.check("optional-outputs", needs=("loss",))
        def _() -> str:
            return optional_output_costs(self.state["outputs"], self.state["loss"])

        @self.check("gradients", needs=("loss",))
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

        @self.check("step", needs=("gradients",))
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
                raise _Failed("step() did not change any trainable parameter")
            return f"{moved} of {len(before)} trainable tensors moved"

        @self.check("faults", needs=("types",))
        def _() -> str:
            bad = dataclasses.replace(self.ctx, faults=frozenset({"no-such-fault-xyz"}))
            native = self.mod.write_native(self.records[:1], Path(self.tmp.name) / "faults")
            for call in (lambda: self.mod.dataset(native, bad), lambda: self.mod.collate(self.state.get("items", [])[:1], bad),
                         lambda: self.mod.build_model(bad, self.mod.DEFAULT_TRAIN)):
                try:
                    call()
                except UnknownFaultError:
                    return "an unknown fault name raises UnknownFaultError"
            raise _Failed("no stage function rejected the unknown fault 'no-such-fault-xyz' with UnknownFaultError")

        @self.check("config", needs=("types",))
        def _() -> str:
            cfg = self.mod.effective_config(self.ctx, self.mod.DEFAULT_TRAIN)
            missing = [s for s in EFFECTIVE_CONFIG_SECTIONS if s not in cfg]
            if missing:
                raise _Failed(f"effective_config lacks sections {missing}")
            return f"{len(EFFECTIVE_CONFIG_SECTIONS)} sections"

        @self.check("conventions", needs=("dataset", "batch", "loss"))
        def _() -> str:
            from harness.api import compare

            report = compare(self.spec, self.spec, stage="all", samples=self.samples, ddp_world_size=0)
            bad = [f for st in report.stages for f in st.fields if f.check == "declared" and f.diverged]
            if bad:
                f = bad[0]
                raise _Failed(f"{len(bad)} declaration check(s) fail; first {f.stage}/{f.field}: declared "
                              f"{f.reference!r}, actual {f.custom!r}")
            n = sum(1 for st in report.stages for f in st.fields if f.check == "declared")
            return f"{n} declaration checks hold (dataset, collator, loss, backward, step, config)"

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
