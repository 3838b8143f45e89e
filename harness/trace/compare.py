"""Align two traces and diff them: the engine behind `higgs-diff compare-traces A B`.

A is the run you trust (a clean run, the reference, the run before a change), B the run under
test.  Steps are aligned by number, ranks by number, micro-batches by order within a step,
cross-entropy calls by order, parameters by canonical name (`higgs_common.param_names`: DDP,
torch.compile and peft wrappers removed, a wrapper attribute such as ``model.`` found by
comparing the two name sets).

Two traces of the **same program** (same ``python -m`` module or script: a fault switched on, a
resumed run, an option changed, speed paths off) are compared tensor by tensor, in the order one
step runs: the batch reaching the model (``dataset``: the inputs the model reads; ``collator``:
labels, masks and offsets built from them), model outputs and, with ``--layers``, every decoder
layer (``forward``), cross-entropy calls and the back-propagated loss (``loss``), gradients
(``backward``), optimizer hyperparameters, clipping, parameters after the step, AdamW state and
the learning rate (``step``), and the logged losses (``log``).  The first step with an unexpected
divergence is reported in full; later steps differ as its consequence and are not listed.

Two traces of **different programs** (the reference CLI and the custom CLI) batch, order and lay
out their data differently, so only what must agree whatever the layout is compared: the model
both load (every base parameter's name and shape), the heads their losses score (class counts),
and each run's symptoms.  For a stage-by-stage numeric comparison of two different pipelines on
identical inputs use `higgs-diff compare` (the stage replay).

Symptoms (`harness.trace.symptoms`) of both traces come first in the report; a symptom of one
run that the other does not have is a divergence of its stage.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from harness.engine.diff import FieldDiff, diff_scalars, diff_tensors
from harness.explain.relations import infer
from harness.report.model import Report, StageResult
from harness.trace.load import StepTrace, Trace, number
from harness.trace.recorder import BRANCH_NAMES, UNREADABLE
from harness.trace.symptoms import (Symptom, is_run_summary, head_kind, kind_key, shape_numel, symptoms,
                                     where)
from higgs_common.param_names import common_prefix_alignment

TRACE_STAGES = ("dataset", "collator", "forward", "loss", "backward", "step", "log", "run")
_COLLATOR_WORDS = ("label", "mask", "start", "loc", "position")


@dataclass(frozen=True)
class Tolerance:
    """Float tolerance of a trace comparison: None = torch.testing's defaults for the dtype."""

    rtol: float | None = None
    atol: float | None = None
    # Two runs with other kernels agree on the gradients of the first step within rounding, but AdamW
    # amplifies it: its first update is lr * g / |g| = +-lr per element, so an element whose gradient
    # lies within rounding of zero moves by +-lr in one run and -+lr in the other, and from then on
    # the weights differ.  With `weights_drift`, the parameters and AdamW moments after an update, and
    # at later steps every tensor computed from the weights (model outputs, per-position CE, gradients),
    # may differ as that drift (shown as expected, with the reason) while the batch, the loss handed to
    # backward(), the logged values and every setting agree; the first step's gradients stay held to
    # the tolerance.
    weights_drift: bool = False

    @classmethod
    def for_precision(cls, precision: str) -> "Tolerance":
        """``exact``: the dtype's defaults (same program, same device); ``bf16``: one bf16 rounding of the
        compared values plus accumulated rounding of a bf16 network (unit roundoff 2^-8, x4 for the
        reductions of a forward/backward), with weight drift allowed after the first step, used to compare
        speed paths (other kernels, other reduction orders) with the plain pipeline."""
        if precision == "bf16":
            return cls(rtol=4 * 2.0 ** -8, atol=1e-3, weights_drift=True)
        return cls()


def batch_stage(field_name: str) -> str:
    """Inputs the model reads (ids, codes, features) belong to the dataset; labels, masks and offsets
    built from them to the collator."""
    return "collator" if any(w in field_name.lower() for w in _COLLATOR_WORDS) else "dataset"


class _Collector:
    """FieldDiffs of one comparison, per stage, with causes that name the call site."""

    def __init__(self, a: Trace, b: Trace, tol: Tolerance) -> None:
        self.a, self.b, self.tol = a, b, tol
        self.drift_atol = 0.0     # the current step's first-order loss drift bound (weights_drift_bound)
        self.fields: dict[str, list[FieldDiff]] = {s: [] for s in TRACE_STAGES}

    def add(self, fd: FieldDiff, site_b: Any = None, site_a: Any = None, words: str | None = None,
            ta: Any = None, tb: Any = None) -> FieldDiff:
        if fd.diverged:
            rel = None
            if isinstance(ta, torch.Tensor) and isinstance(tb, torch.Tensor):
                try:
                    rel = infer(ta, tb)
                except Exception as exc:   # noqa: BLE001  (a relation is an explanation, never a crash)
                    fd.note = f"relation not inferred: {type(exc).__name__}: {exc}"
            if rel is not None and rel.kind == "none":
                rel = lower_precision(ta, tb) or rel
            if rel is not None:
                fd.relation = rel.to_json()
                fd.relation["words"] = (fd.relation["words"].replace("on the reference side", "in A")
                                        .replace("on the custom side", "in B").replace("the reference", "A")
                                        .replace("the custom", "B"))
            loc_b, loc_a = where(site_b), where(site_a)
            mech = words or f"B's {fd.field} differs from A's"
            if fd.relation:
                mech += f" ({fd.relation['words']})"
            if loc_b:
                mech += f"; produced in B at {loc_b}"
            if loc_a and loc_a != loc_b:
                mech += f" (in A at {loc_a})"
            fd.cause = {"mechanism": mech, "evidence": _evidence(fd), "rule": "trace"}
        self.fields.setdefault(fd.stage, []).append(fd)
        return fd

    def tensors(self, stage: str, field: str, sa: StepTrace, da: Any, sb: StepTrace, db: Any,
                site_b: Any = None, site_a: Any = None, words: str | None = None) -> FieldDiff:
        """Diff two recorded tensors (or, when only summaries were kept, their sums)."""
        ta, tb = sa.tensor(da), sb.tensor(db)
        if da is None and db is None:
            return self.add(FieldDiff(stage, field, "equal", note="absent in both runs"))
        if da is None or db is None:
            fd = FieldDiff(stage, field, "missing", reference=_shape_words(da), custom=_shape_words(db),
                           note=f"only {'B' if da is None else 'A'} has it")
            return self.add(fd, site_b, site_a, words or f"{field} exists in only one run")
        if ta is not None and tb is not None:
            fd = diff_tensors(ta, tb, stage=stage, field=field, rtol=self.tol.rtol, atol=self.tol.atol)
            return self.add(fd, site_b, site_a, words, ta, tb)
        # Summaries (a tensor above --max-numel on at least one side): shape, then the summary keys both
        # sides have (a stored tensor's summary is computed here).  Tolerances follow from the element-wise
        # one: |a_i - b_i| <= rtol |a_i| bounds |sum|a| - sum|b|| by rtol sum|a| and |max|a| - max|b|| by
        # rtol max|a|; the signed sum only by rtol sum|a| (cancellation).
        if da.get("shape") != db.get("shape"):
            fd = FieldDiff(stage, field, "shape", reference=da.get("shape"), custom=db.get("shape"))
            return self.add(fd, site_b, site_a, words)
        sa_, sb_ = summary_of(ta, da), summary_of(tb, db)
        n = max(1, shape_numel(da.get("shape")))
        rtol = self.tol.rtol or 1.3e-6
        atol = (self.tol.atol or 1e-5)
        abs_a = number(sa_.get("abs_sum")) or 0.0
        bounds = {"abs_sum": (rtol, atol * n), "max_abs": (rtol, atol), "sum": (0.0, rtol * abs_a + atol * n)}
        for key in ("nonfinite", "abs_sum", "max_abs", "sum"):
            va, vb = sa_.get(key), sb_.get(key)
            if va is None or vb is None or (key == "nonfinite" and (va < 0 or vb < 0)):
                continue        # not summarised the same way on both sides
            r, t = bounds.get(key, (0.0, 0.0))
            fd = diff_scalars(float(va), float(vb), stage=stage, field=f"{field}:{key}", rtol=r, atol=t)
            if fd.diverged:
                fd.note = "compared by summary (a tensor above --max-numel)"
                return self.add(fd, site_b, site_a, words)
        return self.add(FieldDiff(stage, field, "equal", numel=n, note="summaries equal"))

    def scalar(self, stage: str, field: str, va: Any, vb: Any, site_b: Any = None, words: str | None = None,
               rtol: float | None = None, atol: float | None = None) -> FieldDiff:
        return self.add(diff_scalars(va, vb, stage=stage, field=field, rtol=rtol, atol=atol), site_b, None, words)

    def unexpected(self, stages: tuple[str, ...] = TRACE_STAGES) -> bool:
        return any(f.diverged and not f.expected for s in stages for f in self.fields.get(s, []))


def lower_precision(ta: torch.Tensor, tb: torch.Tensor):
    """A `Relation` when two float tensors differ in (nearly) every element by a relative amount the size
    of lower-precision arithmetic (norm-wise between 2^-14 and 2^-5: bf16's unit roundoff is 2^-8, fp16's
    and TF32's 2^-11): one run computes at lower precision than the other (autocast, a bf16 cast, TF32),
    not a change of what is computed, which moves some elements by more.  None otherwise."""
    from harness.explain.relations import Relation

    if not (ta.is_floating_point() and tb.is_floating_point()) or ta.shape != tb.shape or ta.numel() < 8:
        return None
    a, b = ta.detach().double().flatten(), tb.detach().double().flatten()
    finite = torch.isfinite(a) & torch.isfinite(b) & (a != 0)
    if int(finite.sum()) < 8 or float(((a != b) & finite).float().mean()) < 0.5:
        return None
    err = float((a[finite] - b[finite]).norm()) / max(float(a[finite].norm()), 1e-30)
    if not 2.0 ** -14 <= err <= 2.0 ** -5:
        return None
    bits = -math.log2(err)
    fmt = "bf16 (8-bit significand)" if err >= 2.0 ** -10 else "fp16 or TF32 (11-bit significand)"
    return Relation("lower_precision", f"every element moves by about 2^-{bits:.1f} relative (norm-wise), the size "
                                       f"of {fmt} arithmetic: one run computes at lower precision than the other",
                    details={"relative_error": err, "format": fmt.split()[0]})


def summary_of(t: torch.Tensor | None, desc: dict[str, Any]) -> dict[str, Any]:
    """The summary keys of a recorded tensor: computed from the tensor when it was stored, else the
    description's own (whichever of nonfinite, abs_sum, max_abs, sum it has; only nonfinite when it is > 0)."""
    if t is None or not t.is_floating_point():
        return {k: desc.get(k) for k in ("nonfinite", "abs_sum", "max_abs", "sum") if number(desc.get(k)) is not None}
    f = t.double()
    nonfinite = int((~torch.isfinite(f)).sum())
    if nonfinite:                  # as the recorder summarises: sums of inf/NaN say nothing more
        return {"nonfinite": nonfinite}
    return {"nonfinite": 0, "abs_sum": float(f.abs().sum()), "max_abs": float(f.abs().max()) if f.numel() else 0.0,
            "sum": float(f.sum())}


def _shape_words(desc: Any) -> Any:
    if isinstance(desc, dict):
        return f"{desc.get('dtype')}{desc.get('shape')}"
    return desc


def _evidence(fd: FieldDiff) -> str:
    if fd.status in ("shape", "dtype", "missing"):
        return f"{fd.status}: A={fd.reference} B={fd.custom}"
    where_ = "" if fd.first_index is None else f" first at {fd.first_index}"
    return f"{fd.mismatches}/{fd.numel} differ{where_} (A={fd.reference} B={fd.custom})"


# ------------------------------------------------------------------------------ same program
def _compare_batches(c: _Collector, s: int, sa: StepTrace, sb: StepTrace) -> None:
    ca, cb = sa.model_calls, sb.model_calls
    for k, (ma, mb) in enumerate(zip(ca, cb)):
        ia, ib = ma.get("inputs") or {}, mb.get("inputs") or {}
        names = list(ia) + [n for n in ib if n not in ia]
        ordered = sorted(names, key=lambda n: batch_stage(n) == "collator")   # model inputs before labels
        for name in ordered:
            stage = batch_stage(name)
            fd = c.tensors(stage, f"step{s}.mb{k}.{name}", sa, ia.get(name), sb, ib.get(name), mb.get("call_site"),
                           ma.get("call_site"), words=f"the batch reaching the model differs in {name}")
            if fd.diverged and fd.cause:
                src = copied_from(sb.tensor(ib.get(name)), {n: sb.tensor(d) for n, d in ib.items() if n != name})
                if src:
                    fd.cause["mechanism"] = (f"B feeds the content of its {src} as {name}: " + fd.cause["mechanism"])
                else:
                    moved = rows_elsewhere(c.a, name, sb.tensor(ib.get(name)), s, k)
                    if moved:
                        fd.cause["mechanism"] = moved + "; " + fd.cause["mechanism"]
    # A different count is batching (collator) when both steps ran to the update, else the run ended early.
    complete = sa.complete and sb.complete
    c.scalar("collator" if complete else "run", f"step{s}.micro_batches", len(ca), len(cb),
             words="the two runs feed a different number of micro-batches per optimizer step" if complete
             else "one run ended inside this step, before all its micro-batches ran")


def _row_keys(t: Any) -> list[bytes]:
    """Padding-free identity of each row (dim 0) of an integer batch tensor: the row without the trailing
    run of its last value (the padding), so one sample keys alike in batches padded to other lengths."""
    if not isinstance(t, torch.Tensor) or t.dim() < 2 or t.is_floating_point() or t.shape[0] == 0:
        return []
    keys = []
    for row in t.reshape(t.shape[0], -1):
        n = row.numel()
        while n > 1 and bool(row[n - 1] == row[-1]):
            n -= 1
        keys.append(row[:n].numpy().tobytes())
    return keys


def rows_elsewhere(a: Trace, name: str, tb: Any, s: int, k: int) -> str | None:
    """When most rows (samples) of B's micro-batch k of step s are rows A's run feeds at other places
    (padding left out), the words saying so: same samples, another order.  None otherwise (or when the
    tensors were kept as summaries only)."""
    rows_b = _row_keys(tb)
    if not rows_b:
        return None
    seen: dict[bytes, tuple[int, int]] = {}
    for st in a.rank_steps(0):
        for j, call in enumerate(st.model_calls):
            for key in _row_keys(st.tensor((call.get("inputs") or {}).get(name))):
                seen.setdefault(key, (st.step, j))
    found = [seen[h] for h in rows_b if h in seen and seen[h] != (s, k)]
    if 2 * len(found) < len(rows_b):
        return None
    at = sorted(set(found))[:3]
    return (f"B feeds samples A's run also feeds, in another order ({len(found)} of {len(rows_b)} rows of this "
            f"micro-batch are A's at " + ", ".join(f"step {x} micro-batch {y}" for x, y in at)
            + "): the sample order (shuffle seed, sampler or grouping) differs")


def copied_from(t: torch.Tensor | None, others: dict[str, torch.Tensor | None]) -> str | None:
    """The name of another batch field whose content `t` repeats (same values, ignoring padding layout):
    a field filled from the wrong source."""
    if t is None or t.numel() == 0:
        return None
    for name, o in others.items():
        if o is None or o.numel() == 0 or o.dtype != t.dtype:
            continue
        if o.shape == t.shape and torch.equal(o, t):
            return name
        if o.dim() == t.dim() == 2 and o.shape[0] == t.shape[0] and o.shape[1] >= t.shape[1] \
                and torch.equal(o[:, : t.shape[1]], t):
            return name
    return None


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict) and "key" in value and "shape" in value:
        out[prefix] = value
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _flatten(f"{prefix}.{i}" if prefix else str(i), v, out)
    return out


def _compare_forward(c: _Collector, s: int, sa: StepTrace, sb: StepTrace, pa: str, pb: str,
                     first: bool = False) -> None:
    """`first`: the first compared step (step 1, or the first of a recorded window), where the sets of
    trainable parameters are compared."""
    if first and sa.optimizer and sb.optimizer:
        na = {n[len(pa):] for n in sa.grads()}
        nb = {n[len(pb):] for n in sb.grads()}
        if na != nb:
            only_a, only_b = sorted(na - nb), sorted(nb - na)
            fd = FieldDiff("forward", "trainable_parameters", "mismatch", numel=len(na | nb),
                           mismatches=len(only_a) + len(only_b), reference=len(na), custom=len(nb),
                           note=f"only in A: {only_a[:5]}; only in B: {only_b[:5]}")
            c.add(fd, (sb.optimizer or {}).get("call_site"), None,
                  f"the two runs train different parameters ({len(only_b)} only in B, {len(only_a)} only in A): "
                  "a module added or removed (e.g. layers absent from the checkpoint, initialised at random) "
                  "or LoRA targets that differ")
    # With --layers, each model call's layer and dual-FFN branch outputs come first, in the order they ran: the
    # first of them that differs is where the runs part, before the model's output shows it.
    la = {(r.get("call"), r.get("module")): r for r in sa.records("layers")}
    lb = {(r.get("call"), r.get("module")): r for r in sb.records("layers")}
    for k, (ma, mb) in enumerate(zip(sa.model_calls, sb.model_calls)):
        for key in [x for x in la if x[0] == k and x in lb]:
            what = "dual-FFN branch" if str(key[1]).rsplit(".", 1)[-1] in BRANCH_NAMES else "decoder layer"
            site_b = lb[key].get("call_site")
            caller = where(site_b[1:]) if isinstance(site_b, list) and len(site_b) > 1 else None
            c.tensors("forward", f"step{s}.mb{k}.layer.{key[1]}", sa, la[key].get("output"), sb, lb[key].get("output"),
                      site_b, la[key].get("call_site"),
                      words=f"{what} {key[1]} outputs differ: the runs part at this {what.split()[-1]}"
                            + (f" (B's layer forward that feeds it its rows: {caller})" if caller else ""))
        oa, ob = _flatten("", ma.get("outputs"), {}), _flatten("", mb.get("outputs"), {})
        for name in list(oa) + [n for n in ob if n not in oa]:
            c.tensors("forward", f"step{s}.mb{k}.out.{name}", sa, oa.get(name), sb, ob.get(name), mb.get("call_site"),
                      ma.get("call_site"), words=f"the model's output {name} differs on the same batch")


def _compare_loss(c: _Collector, s: int, sa: StepTrace, sb: StepTrace) -> None:
    ca, cb = sa.ce_calls, sb.ce_calls
    widest = kind_key([sa, sb])
    ga = [x for x in ca if x.get("requires_grad")]
    gb = [x for x in cb if x.get("requires_grad")]
    why = []
    for kind in sorted({head_kind(x, widest) for x in ga} - {head_kind(x, widest) for x in gb}):
        detached = [x for x in cb if not x.get("requires_grad") and head_kind(x, widest) == kind]
        why.append(f"B computes its {kind} cross-entropy on logits that do not require a gradient (detached, or "
                   f"under no_grad): that term trains nothing, no gradient reaches the {kind} head through it"
                   if detached else f"B never scores the {kind} head in training")
    c.scalar("loss", f"step{s}.cross_entropy_calls", len(ga), len(gb), (gb or ga or [{}])[0].get("call_site"),
             words=f"the loss makes a different number of training cross-entropy calls (A {len(ga)}, B {len(gb)}: "
                   f"A scores {sorted({head_kind(x, widest) for x in ga})}, B {sorted({head_kind(x, widest) for x in gb})})"
                   + "".join(f"; {w}" for w in why))
    for k, (xa, xb) in enumerate(zip(ga, gb)):
        kind = head_kind(xa, widest)
        site = xb.get("call_site")
        f = f"step{s}.ce{k}({kind})"
        for opt in ("classes", "reduction", "ignore_index", "label_smoothing"):
            c.scalar("loss", f"{f}.{opt}", xa.get(opt), xb.get(opt), site,
                     words=f"the {kind} cross-entropy is called with a different {opt}")
        c.tensors("loss", f"{f}.target", sa, xa.get("target"), sb, xb.get("target"), site, xa.get("call_site"),
                  words=f"the {kind} cross-entropy scores different targets (labels shifted, masked or from other "
                        "positions)")
        c.tensors("loss", f"{f}.per_position", sa, xa.get("per_position"), sb, xb.get("per_position"), site,
                  xa.get("call_site"), words=f"the {kind} per-position cross-entropy differs")
        c.tensors("loss", f"{f}.result", sa, xa.get("result"), sb, xb.get("result"), site, xa.get("call_site"),
                  words=f"the {kind} cross-entropy's result differs (reduction or weighting)")
    ba, bb = sa.backward, sb.backward
    c.scalar("loss", f"step{s}.backward_calls", len(ba), len(bb), (bb or [{}])[0].get("call_site"),
             words="backward() runs a different number of times per step")
    for k, (xa, xb) in enumerate(zip(ba, bb)):
        c.scalar("loss", f"step{s}.backward{k}.has_graph", bool(xa.get("requires_grad")), bool(xb.get("requires_grad")),
                 xb.get("call_site"), words="one run back-propagates a loss without a graph")
        if c.drift_atol:
            va, vb = (summary_of(st.tensor(x.get("value")), x.get("value") or {}).get("sum") for st, x in
                      ((sa, xa), (sb, xb)))
            fd = c.scalar("loss", f"step{s}.backward{k}.loss", va, vb, xb.get("call_site"),
                          words="the loss handed to backward() differs (its terms, weights or scaling)",
                          rtol=c.tol.rtol, atol=max(c.tol.atol or 0.0, c.drift_atol))
            fd.note = _drift_note(c.drift_atol)
        else:
            c.tensors("loss", f"step{s}.backward{k}.loss", sa, xa.get("value"), sb, xb.get("value"),
                      xb.get("call_site"), xa.get("call_site"),
                      words="the loss handed to backward() differs (its terms, weights or scaling)")


def _compare_grads(c: _Collector, s: int, sa: StepTrace, sb: StepTrace, pa: str, pb: str) -> None:
    ga = {n[len(pa):]: d for n, d in sa.grads().items()}
    gb = {n[len(pb):]: d for n, d in sb.grads().items()}
    site = (sb.backward or [{}])[-1].get("call_site")
    for name in [n for n in ga if n in gb]:
        da, db = ga[name], gb[name]
        if da is None or db is None:
            c.add(FieldDiff("backward", f"step{s}.grad.{name}", "equal" if da is db else "missing",
                            reference=None if da is None else "gradient", custom=None if db is None else "gradient"),
                  site, None, "a gradient reaches this parameter in only one run")
            continue
        c.tensors("backward", f"step{s}.grad.{name}", sa, da, sb, db, site,
                  words="the gradient after backward (and any all-reduce and clipping) differs")


def _compare_step(c: _Collector, s: int, sa: StepTrace, sb: StepTrace, pa: str, pb: str) -> None:
    site = (sb.optimizer or {}).get("call_site")
    gra, grb = sa.param_groups(), sb.param_groups()
    c.scalar("step", f"step{s}.param_groups", len(gra), len(grb), site,
             words="the optimizers have a different number of parameter groups")
    for g, (xa, xb) in enumerate(zip(gra, grb)):
        for key in ("lr", "initial_lr", "weight_decay", "eps", "betas", "momentum", "num_params"):
            if key in xa or key in xb:
                c.scalar("step", f"step{s}.group{g}.{key}", xa.get(key), xb.get(key), site,
                         words=f"optimizer setting {key} of param group {g} differs")
    cla, clb = sa.records("clip_grad_norm"), sb.records("clip_grad_norm")
    c.scalar("step", f"step{s}.clip_calls", len(cla), len(clb), (clb or cla or [{}])[0].get("call_site"),
             words="gradient clipping runs in only one of the runs")
    for k, (xa, xb) in enumerate(zip(cla, clb)):
        c.scalar("step", f"step{s}.clip{k}.max_norm", xa.get("max_norm"), xb.get("max_norm"), xb.get("call_site"),
                 words="gradients are clipped to a different norm")
        c.scalar("step", f"step{s}.clip{k}.total_norm", xa.get("total_norm"), xb.get("total_norm"),
                 xb.get("call_site"), words="the gradient norm before clipping differs",
                 rtol=c.tol.rtol or 1e-5, atol=c.tol.atol or 1e-7)
    pa_, pb_ = ({n[len(p):]: d for n, d in st.params_after().items()} for st, p in ((sa, pa), (sb, pb)))
    for name in [n for n in pa_ if n in pb_]:
        c.tensors("step", f"step{s}.param.{name}", sa, pa_[name], sb, pb_[name], site,
                  words="the parameter after the optimizer step differs")
    sta = {n[len(pa):]: d for n, d in sa.optimizer_state().items()}
    stb = {n[len(pb):]: d for n, d in sb.optimizer_state().items()}
    for name in [n for n in sta if n in stb]:
        for key in sorted(set(sta[name]) | set(stb[name])):
            va, vb = sta[name].get(key), stb[name].get(key)
            if isinstance(va, dict) or isinstance(vb, dict):
                c.tensors("step", f"step{s}.state.{name}.{key}", sa, va if isinstance(va, dict) else None, sb,
                          vb if isinstance(vb, dict) else None, site, words=f"optimizer state {key} differs")
            else:
                c.scalar("step", f"step{s}.state.{name}.{key}", va, vb, site, words=f"optimizer state {key} differs")
    sca, scb = sa.records("scheduler"), sb.records("scheduler")
    la = [x.get("last_lr") for x in sca]
    lb = [x.get("last_lr") for x in scb]
    c.scalar("step", f"step{s}.scheduler_lr", la[-1] if la else None, lb[-1] if lb else None,
             (scb or sca or [{}])[-1].get("call_site"), words="the learning-rate scheduler sets a different rate")
    if sca and scb and sa.optimizer and sb.optimizer:
        order_a = [(number(x.get("seq")) or 0) > (number(sa.optimizer.get("seq")) or 0) for x in sca]
        order_b = [(number(x.get("seq")) or 0) > (number(sb.optimizer.get("seq")) or 0) for x in scb]
        c.scalar("step", f"step{s}.scheduler_after_optimizer", order_a[-1], order_b[-1], scb[-1].get("call_site"),
                 words="scheduler.step() runs on the other side of optimizer.step()")


# Logged values that are settings or counters, not computed from the weights: never widened by drift.
SETTING_TAGS = ("lr", "learning_rate", "epoch", "step", "tokens", "samples")


def _compare_logs(c: _Collector, s: int, sa: StepTrace, sb: StepTrace) -> None:
    la, lb = sa.logged(), sb.logged()
    sites = {k: r.get("call_site") for r in sb.records("logged") for k in (r.get("values") if isinstance(r.get("values"), dict) else {})}
    for tag in [t for t in la if t in lb]:
        if "time" in tag or "runtime" in tag or "per_second" in tag or tag.endswith("wall_s") \
                or is_run_summary(tag):
            continue
        drift = c.drift_atol if not any(w in tag.lower() for w in SETTING_TAGS) else 0.0
        how = logged_value_origin(c.a, s, tag, la[tag], lb[tag], sb)
        fd = c.scalar("log", f"step{s}.logged.{tag}", la[tag], lb[tag], sites.get(tag.split(":", 1)[-1]),
                      words=f"the program logs a different {tag.split(':', 1)[-1]}" + (f": {how}" if how else ""),
                      rtol=max(1e-4, c.tol.rtol or 0.0), atol=max(1e-6, c.tol.atol or 0.0, drift))
        if drift:
            fd.note = _drift_note(drift)
    for tag in [t for t in la if t not in lb and not is_run_summary(t)] + \
            [t for t in lb if t not in la and not is_run_summary(t)]:
        c.add(FieldDiff("log", f"step{s}.logged.{tag}", "missing", reference=la.get(tag), custom=lb.get(tag),
                        note="logged in one run only"), sites.get(tag.split(":", 1)[-1]), None,
              "one run logs a value the other does not")


def _close(x: float, y: float) -> bool:
    return math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-12)     # False for inf and NaN


def logged_value_origin(a: Trace, s: int, tag: str, va: Any, vb: Any, sb: StepTrace) -> str | None:
    """Where B's logged value comes from when it is not A's, in words (None when no candidate fits):
    a running sum or mean of A's values of the same tag over steps 1..s (accumulators never reset between
    logs), A's value times or over B's micro-batch count (summed instead of averaged, or averaged twice),
    or the result of ONE of B's cross-entropy calls (one micro-batch's loss, not the step's)."""
    x, y = number(va), number(vb)
    if x is None or y is None or _close(x, y):
        return None
    name = tag.split(":", 1)[-1]
    history = [number(st.logged().get(tag)) for st in a.rank_steps(0) if st.step <= s]
    history = [h for h in history if h is not None]
    if len(history) >= 2:
        if _close(y, sum(history)):
            return (f"B's value is the sum of A's {name} over steps 1-{s}: an accumulator that is never reset "
                    "between logs")
        if _close(y, sum(history) / len(history)):
            return (f"B's value is the mean of A's {name} over steps 1-{s}: the sums behind it are never reset "
                    "between logs (a running mean since the start)")
    m = len(sb.model_calls)
    if m > 1 and _close(y, x * m):
        return f"B's value is {m} x A's: summed over the step's {m} micro-batches instead of averaged"
    if m > 1 and _close(y, x / m):
        return f"B's value is A's / {m}: divided by the step's {m} micro-batches once more"
    for (mb, classes), v in _micro_batch_ce(sb).items():
        if _close(y, v):
            return (f"B's value is the {classes}-class cross-entropy of micro-batch {mb} alone (of {m}): one "
                    f"micro-batch's loss, not the step's")
    return None


def _micro_batch_ce(st: StepTrace) -> dict[tuple[int, int], float]:
    """Per (micro-batch, class count): the mean cross-entropy over its supervised targets, from the step's
    CE calls (chunked calls of one head in one micro-batch pooled; `sum` and per-position (`none`) results
    summed and divided by the supervised count, `mean` results weighted by it).  A call belongs to the last
    model call before it."""
    calls = sorted((c.get("seq") or 0) for c in st.model_calls)
    pooled: dict[tuple[int, int], list[float]] = {}
    for ce in st.ce_calls:
        t = st.tensor(ce.get("result"))
        v = float(t.double().sum()) if t is not None and t.numel() else number((ce.get("result") or {}).get("sum"))
        n = number(ce.get("supervised"))
        if v is None or ce.get("reduction") not in ("mean", "sum", "none"):
            continue
        mb = max(0, sum(1 for q in calls if q < (ce.get("seq") or 0)) - 1)
        acc = pooled.setdefault((mb, int(ce.get("classes") or 0)), [0.0, 0.0])   # sum of losses, supervised count
        if ce.get("reduction") in ("sum", "none"):      # per-position results: ignored positions hold 0
            acc[0] += v
            acc[1] += n or 0.0
        else:
            acc[0] += v * (n or 1.0)
            acc[1] += n or 1.0
    return {k: tot / cnt for k, (tot, cnt) in pooled.items() if cnt > 0}


CONSEQUENCE_FIELDS = (".backward", ".grad.", ".param.", ".state.", ".group", ".clip", ".scheduler")
# Tensors computed from the weights (Tolerance.weights_drift): everything else of a step (the batch, the
# loss handed to backward(), call counts, settings, the learning rate, the logs) does not drift.
WEIGHT_DEPENDENT = (".out.", ".layer.", ".per_position", ".result", ".grad.", ".param.", ".state.", ".total_norm")
# What AdamW's update makes of the gradients: at the first step too, an element whose gradient lies within
# rounding of zero moves by +-lr in one run and -+lr (or 0) in the other.
WEIGHT_UPDATE = (".param.", ".state.")


def _drift_note(atol: float) -> str:
    return f"tolerance widened by the weight-drift bound {atol:.3g} (first order)"


def weights_drift_bound(earlier: list[StepTrace], now: StepTrace) -> float:
    """First-order bound on how far a loss of step `now` may move by weight drift: AdamW moves an element
    by about lr per step (|m_hat / sqrt(v_hat)| <= 1 while gradients do not jump), so two runs' elements
    part by at most 2 * sum(lr of the earlier steps), and |dL| <= ||dL/dtheta||_1 * max|d theta|.  The
    L1 norm is the sum of the recorded gradients' |sum| (run A, this step); 0.0 when not recorded.
    Loose (every element assumed to part by the most) but derived from the run; the first step's
    gradients, the batch and every setting stay held to the plain tolerance."""
    lrs = [max((number(g.get("lr")) or 0.0) for g in st.param_groups()) if st.param_groups() else 0.0
           for st in earlier]
    g1 = 0.0
    for d in now.grads().values():
        if isinstance(d, dict):
            g1 += number(summary_of(now.tensor(d), d).get("abs_sum")) or 0.0
    return 2.0 * sum(lrs) * g1


def _mark_drift(c: _Collector, s: int, first: int) -> None:
    """Step `s` of a comparison that allows weight drift (`Tolerance.weights_drift`): if the batch, the
    loss handed to backward(), the logs and every setting of the step agree (and, at the first step,
    every gradient), divergences of the tensors AdamW's update makes (first step) or of every weight-
    dependent tensor (later steps) are that drift, shown as expected with the reason."""
    tag = f"step{s}."
    drifting = WEIGHT_UPDATE if s == first else WEIGHT_DEPENDENT
    in_step = [f for st in TRACE_STAGES for f in c.fields.get(st, []) if f.field.startswith(tag)]
    strict = [f for f in in_step if not any(k in f.field for k in WEIGHT_DEPENDENT)]
    if s == first:
        strict += [f for f in in_step if ".grad." in f.field]
    if any(f.unexpected for f in strict):
        return
    for f in in_step:
        if f.unexpected and any(k in f.field for k in drifting) and f.status != "shape":
            f.expected = True
            f.expected_reason = (
                "AdamW's update of gradients that agree within rounding: its first update is lr * g / |g| = "
                "+-lr per element whatever the gradient's size, so an element whose gradient lies within "
                "rounding of zero moves differently" if s == first else
                f"weight drift after step {first}: the runs' weights differ by other kernels' rounding, "
                "amplified by AdamW; the batch, the loss, the logs and every setting of this step agree")


def _mark_inconsequential(c: _Collector, s: int) -> None:
    """Divergences inside the forward pass and the loss's cross-entropy calls of step `s` that change
    neither the loss handed to backward(), nor any gradient, nor the update are a different path to
    the same result (a fused or gathered head, chunked cross-entropy, another output layout): they
    are shown as expected, with that reason, below what changes training."""
    tag = f"step{s}."
    in_step = [f for st in ("forward", "loss", "backward", "step") for f in c.fields.get(st, [])
               if f.field.startswith(tag)]
    consequential = [f for f in in_step if f.unexpected and any(k in f.field for k in CONSEQUENCE_FIELDS)]
    checked = [f for f in in_step if any(k in f.field for k in CONSEQUENCE_FIELDS)]
    if consequential or not checked:
        return
    for st in ("forward", "loss"):
        for f in c.fields.get(st, []):
            if f.field.startswith(tag) and f.unexpected and not any(k in f.field for k in CONSEQUENCE_FIELDS):
                f.expected = True
                f.expected_reason = ("changes neither the loss handed to backward(), nor any gradient, nor the "
                                     "update: a different path to the same result")


def compare_same_program(c: _Collector, a: Trace, b: Trace, ranks: list[int], common_steps_only: bool = False) -> str | None:
    """Step by step (aligned by step number) until the first step with an unexpected divergence;
    returns a note on what was left out."""
    steps_a = {r: {st.step: st for st in a.rank_steps(r)} for r in ranks}
    steps_b = {r: {st.step: st for st in b.rank_steps(r)} for r in ranks}
    common = sorted(set(steps_a[ranks[0]]) & set(steps_b[ranks[0]]))
    pa, pb = ("", "")
    if common:
        pa, pb = common_prefix_alignment(steps_a[ranks[0]][common[0]].grads(), steps_b[ranks[0]][common[0]].grads())
    for i, s in enumerate(common):
        for r in ranks:
            sa, sb = steps_a[r].get(s), steps_b[r].get(s)
            if sa is None or sb is None:
                continue
            c.drift_atol = 0.0
            if c.tol.weights_drift and i > 0:
                c.drift_atol = weights_drift_bound([steps_a[r][j] for j in common[:i] if j in steps_a[r]], sa)
            _compare_batches(c, s, sa, sb)
            _compare_forward(c, s, sa, sb, pa, pb, first=i == 0)
            _compare_loss(c, s, sa, sb)
            _compare_grads(c, s, sa, sb, pa, pb)
            _compare_step(c, s, sa, sb, pa, pb)
            _compare_logs(c, s, sa, sb)
            c.scalar("run", f"step{s}.rank{r}.complete", sa.complete, sb.complete,
                     words="one run ended inside this step")
        if c.tol.weights_drift:
            _mark_drift(c, s, common[0])
        _mark_inconsequential(c, s)
        if c.unexpected():
            left = len(common) - (i + 1)
            return (f"stopped after step {s}, the first with an unexpected divergence; "
                    f"{left} later step(s) not listed (they differ as its consequence)") if left else None
    only_a = sorted(set(steps_a[ranks[0]]) - set(common))
    only_b = sorted(set(steps_b[ranks[0]]) - set(common))
    if (only_a or only_b) and not common_steps_only:
        c.scalar("run", "steps_recorded", len(steps_a[ranks[0]]), len(steps_b[ranks[0]]),
                 words=f"the runs recorded different steps (only A: {only_a}, only B: {only_b})")
    return None


# ------------------------------------------------------------------------------ different programs
def compare_different_programs(c: _Collector, a: Trace, b: Trace) -> str:
    sa, sb = (t.rank_steps(0)[0] if t.rank_steps(0) else None for t in (a, b))
    if sa is None or sb is None:
        c.scalar("run", "steps_recorded", len(a.rank_steps(0)), len(b.rank_steps(0)),
                 words="one run recorded no optimizer step")
        return "nothing to compare: a run recorded no step"
    # The heads both losses score: same vocabulary and codebook classes.
    ca = sorted({int(number(x.get("classes")) or 0) for x in sa.ce_calls if x.get("requires_grad")})
    cb = sorted({int(number(x.get("classes")) or 0) for x in sb.ce_calls if x.get("requires_grad")})
    c.scalar("loss", "step1.heads_scored", ca, cb, (sb.ce_calls or [{}])[0].get("call_site"),
             words="the two losses score heads of different widths (a head missing from one loss, or different "
                   "vocabularies/codebook sizes)")
    # Parameters both models train whose names and shapes must agree (same checkpoint).
    pa, pb = common_prefix_alignment(sa.grads(), sb.grads())
    ga = {n[len(pa):]: d for n, d in sa.grads().items()}
    gb = {n[len(pb):]: d for n, d in sb.grads().items()}
    shared = [n for n in ga if n in gb]
    shapes_a = {n: (ga[n] or {}).get("shape") for n in shared}
    shapes_b = {n: (gb[n] or {}).get("shape") for n in shared}
    bad = [n for n in shared if shapes_a[n] != shapes_b[n] and shapes_a[n] and shapes_b[n]]
    fd = FieldDiff("forward", "shared_parameter_shapes", "mismatch" if bad else "equal", numel=len(shared),
                   mismatches=len(bad), note=None if not bad else f"first: {bad[0]} A{shapes_a[bad[0]]} B{shapes_b[bad[0]]}")
    c.add(fd, (sb.optimizer or {}).get("call_site"), None, "parameters of the same name have different shapes: "
          "the two runs do not load the same checkpoint")
    return ("different programs: batches, ordering and loss layouts differ by design, so only the heads scored, "
            "shared parameter shapes and each run's symptoms are compared; use `higgs-diff compare` for a "
            "stage-by-stage diff of the two pipelines on identical inputs")


# ------------------------------------------------------------------------------ symptoms
def symptom_fields(c: _Collector, sym_a: list[Symptom], sym_b: list[Symptom]) -> None:
    """A symptom in one run that the other does not show is a divergence of its stage."""
    keys_a, keys_b = {s.key for s in sym_a}, {s.key for s in sym_b}
    for run, mine, other_keys in (("B", sym_b, keys_a), ("A", sym_a, keys_b)):
        for sym in mine:
            if sym.key in other_keys:
                continue
            stage = sym.stage if sym.stage in TRACE_STAGES else "run"
            fd = FieldDiff(stage, f"symptom.{sym.kind}.{sym.field}", "mismatch", numel=1, mismatches=1,
                           reference="absent" if run == "B" else "present", custom="present" if run == "B" else "absent",
                           note=f"run {run}: {sym.text}")
            fd.cause = {"mechanism": f"run {run}: {sym.text}: {sym.mechanism}"
                        + (f"; at {sym.location}" if sym.location else ""),
                        "evidence": sym.text, "rule": "trace-symptom"}
            c.fields.setdefault(stage, []).insert(0, fd)


def shared_failure(sym_a: list[Symptom], sym_b: list[Symptom]) -> str | None:
    """Both runs failed the same way (same run-error symptom: both raised, or both exited non-zero): what
    they did is not a training run to compare past that point, whatever agreed before it.  None otherwise
    (a failure in one run only is a divergence: `symptom_fields`)."""
    keys_b = {s.key for s in sym_b if s.kind == "run_error"}
    both = [s for s in sym_a if s.kind == "run_error" and s.key in keys_b]
    if not both:
        return None
    other = next(s for s in sym_b if s.key == both[0].key)
    return (f"both runs failed: A: {both[0].text}; B: {other.text}"
            + (f" (at {both[0].location})" if both[0].location else "")
            + ". Fix the command (see command.log in each trace) and trace again.")


def compare_traces(a: Trace, b: Trace, *, tolerance: Tolerance | None = None,
                   progress: Callable[[str], None] | None = None, common_steps_only: bool = False) -> Report:
    """Compare trace B (under test) with trace A (trusted); a `Report` in the usual schema.

    `common_steps_only`: compare the steps both traces recorded and nothing else (a resumed run covers only
    the steps after its checkpoint; a short trace of a long run).
    Never raises on odd trace contents (missing records, None gradients, empty tensors): those are
    findings.  Raises `harness.trace.load.TraceError` only for folders that are not traces.
    """
    tol = tolerance or Tolerance()
    c = _Collector(a, b, tol)
    say = progress or (lambda _msg: None)
    say("symptoms of both runs")
    sym_a, sym_b = symptoms(a), symptoms(b)
    same = a.program() == b.program()
    ranks = [r for r in a.ranks if r in b.ranks] or [0]
    if a.ranks != b.ranks:
        c.scalar("run", "ranks", a.ranks, b.ranks, words="the runs have different numbers of processes")
    note: str | None
    try:
        if same:
            say(f"same program ({a.program()}): step-by-step comparison")
            note = compare_same_program(c, a, b, ranks, common_steps_only)
        else:
            say(f"different programs ({a.program()} vs {b.program()}): structural comparison")
            note = compare_different_programs(c, a, b)
    except Exception as exc:   # noqa: BLE001  (the harness never raises on what a pipeline produced)
        import traceback
        c.fields["run"].append(FieldDiff("run", "comparison", "missing", note=(
            f"comparison stopped on unexpected trace contents: {type(exc).__name__}: {exc}\n"
            + traceback.format_exc(limit=4))))
        note = "comparison incomplete (see the run stage)"
    symptom_fields(c, sym_a, sym_b)
    stages = []
    for name in TRACE_STAGES:
        fields = c.fields.get(name) or []
        if not fields:
            continue
        st = StageResult(name, "ok", fields)
        st.refresh_status()
        stages.append(st)
    failed = shared_failure(sym_a, sym_b)
    if failed:
        run_stage = next((st for st in stages if st.stage == "run"), None)
        if run_stage is None:
            run_stage = StageResult("run", "ok", [])
            stages.append(run_stage)
        run_stage.status, run_stage.error = "error", failed
    report = Report(run_name="compare-traces", mode="trace", stages_requested=list(TRACE_STAGES), stages=stages,
                    config={"a": {"path": str(a.path), "command": a.command_line(), "program": a.program(),
                                  "exit_code": a.exit_code, "ranks": a.ranks,
                                  "steps": {r: len(a.rank_steps(r)) for r in a.ranks}},
                            "b": {"path": str(b.path), "command": b.command_line(), "program": b.program(),
                                  "exit_code": b.exit_code, "ranks": b.ranks,
                                  "steps": {r: len(b.rank_steps(r)) for r in b.ranks}},
                            "same_program": same, "tolerance": {"rtol": tol.rtol, "atol": tol.atol}, "note": note})
    report.symptoms = [dict(s.to_json(), run="A", path=str(a.path)) for s in sym_a] + \
                      [dict(s.to_json(), run="B", path=str(b.path)) for s in sym_b]
    if same:
        _name_a_precision_change(report, a, b)
        _name_a_random_stream_change(report, a, b)
    return report


# ------------------------------------------------------------------------------ random draws
RANDOM_STAGES = ("forward", "loss", "backward", "step", "log")   # where values are computed from random draws
_GENERATOR_WORDS = {"cpu": "the CPU generator (host-side draws: a DataLoader's or sampler's seeds, CPU dropout)",
                    "cuda": "the GPU's generator (dropout masks and other random kernels; torch.compile's "
                            "kernels draw their own seeds)"}


def random_streams_part(a: Trace, b: Trace, upto: int) -> tuple[int, int, list[str]] | None:
    """(step, rank, generators) for the first recorded step up to `upto`, on any rank both runs have,
    after whose forward and backward the two runs' random-number generators stand apart
    (`recorder.rng_fingerprint`, read when the step's gradients are complete), or None where they agree
    at every such step, a trace has no fingerprints (an older trace) or an entry was unreadable."""
    for rank in [r for r in a.ranks if r in b.ranks] or [0]:
        steps_b = {st.step: st for st in b.rank_steps(rank)}
        for sa in a.rank_steps(rank):
            sb = steps_b.get(sa.step)
            if sa.step > upto or sb is None:
                continue
            ra, rb = (sa.optimizer or {}).get("rng"), (sb.optimizer or {}).get("rng")
            if not isinstance(ra, dict) or not isinstance(rb, dict):
                continue
            apart = sorted(k for k in set(ra) & set(rb)
                           if ra[k] != rb[k] and UNREADABLE not in (ra[k], rb[k]))
            if apart:
                return sa.step, rank, apart
    return None


def _explainable_step(fd: FieldDiff | None) -> int | None:
    """The step of a diverged field named `step<N>.…` that has a cause to open with more words."""
    m = re.match(r"step(\d+)\.", fd.field) if fd is not None and fd.cause else None
    return int(m.group(1)) if m else None


def _first_value_divergence(report: Report) -> FieldDiff | None:
    """The first unexplained value mismatch (not a shape, dtype, missing field or count) in a stage
    whose values can come from random draws."""
    for st in report.stages:
        if st.stage not in RANDOM_STAGES:
            continue
        for fd in st.fields:
            if fd.diverged and not fd.expected and fd.status in ("mismatch", "nonfinite"):
                return fd
    return None


def _name_a_random_stream_change(report: Report, a: Trace, b: Trace) -> None:
    """When the runs' random draws had parted by the step of the first value mismatch in the forward,
    loss, backward, step or log stages, say so first in that field's cause: dropout masks (and any
    other random values) then differ between the runs, and so does everything computed from them, by
    the size of that randomness rather than of rounding.  A speed path can do this without changing
    any arithmetic (torch.compile's kernels draw their own seeds; a fused or reordered op draws in
    another order), and so can a changed seed.  The divergence stays one: the harness cannot tell the
    randomness apart from a fault that comes with it.  Data and collator divergences, and shape or
    count differences, are left alone: there the draws differ because the work does."""
    fd = _first_value_divergence(report)
    upto = _explainable_step(fd)
    parted = random_streams_part(a, b, upto) if upto is not None else None
    if parted is None:
        return
    step, rank, gens = parted
    kinds = dict.fromkeys(g.split(":")[0] for g in gens)       # "cpu", "cuda", in order, once each
    words = "; ".join(_GENERATOR_WORDS[k] for k in kinds if k in _GENERATOR_WORDS)
    fd.cause["mechanism"] = (f"the runs drew different random numbers by step {step} (rank {rank}: the state of "
                             f"{', '.join(gens)} after its backward differs; {words}): values computed from "
                             "random draws then differ by more than rounding; compare runs without dropout "
                             "(--lora-dropout 0) to see the arithmetic alone; " + fd.cause["mechanism"])


# ------------------------------------------------------------------------------ precision
_SHORT_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}


def dtype_changes(sa: StepTrace, sb: StepTrace) -> list[tuple[str, str, str]]:
    """(what, dtype in A, dtype in B) for every floating tensor recorded in both steps whose dtype differs:
    model inputs and outputs, cross-entropy inputs, gradients, parameters after the update."""
    out: list[tuple[str, str, str]] = []

    def census(what: str, da: Any, db: Any) -> None:
        ta, tb = (da or {}).get("dtype"), (db or {}).get("dtype")
        if ta != tb and ta in _SHORT_DTYPE and tb in _SHORT_DTYPE:
            out.append((what, ta, tb))
    for k, (ma, mb) in enumerate(zip(sa.model_calls, sb.model_calls)):
        for part in ("inputs", "outputs"):
            fa, fb = _flatten("", ma.get(part), {}), _flatten("", mb.get(part), {})
            for name in fa:
                if name in fb:
                    census(f"the model's {part[:-1]} {name}", fa[name], fb[name])
    for k, (ca, cb) in enumerate(zip(sa.ce_calls, sb.ce_calls)):
        census(f"cross-entropy call {k}'s input", {"dtype": ca.get("input_dtype")}, {"dtype": cb.get("input_dtype")})
    for label, ga, gb in (("gradient of", sa.grads(), sb.grads()), ("parameter", sa.params_after(), sb.params_after())):
        for name in ga:
            if name in gb:
                census(f"the {label} {name}", ga[name], gb[name])
    return out


def _name_a_precision_change(report: Report, a: Trace, b: Trace) -> None:
    """When the first divergence's step holds tensors at another precision in B (autocast turned on, bf16
    weights, a cast), say so first in its cause: the relation and location stay in the rest of it."""
    fd = report.first_divergence_field()
    s = _explainable_step(fd)
    if s is None:
        return
    sa = next((st for st in a.rank_steps(0) if st.step == s), None)
    sb = next((st for st in b.rank_steps(0) if st.step == s), None)
    changes = dtype_changes(sa, sb) if sa is not None and sb is not None else []
    if not changes:
        return
    what, ta, tb = changes[0]
    more = f" (and {len(changes) - 1} more tensors)" if len(changes) > 1 else ""
    fd.cause["mechanism"] = (f"B computes at another precision: {what} is {_SHORT_DTYPE[tb]} ({tb}) in B, "
                             f"{_SHORT_DTYPE[ta]} ({ta}) in A{more} (autocast, weights loaded in another dtype, "
                             f"or a cast); " + fd.cause["mechanism"])
