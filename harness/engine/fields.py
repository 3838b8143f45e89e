"""Compare one field (or a mapping of fields) of the two sides: expected differences, tolerances,
and, for every unexpected divergence, the relation between the two values.

`FieldComparer.compare` is the single path every field of every stage goes through:

1. the catalogue (`harness.semantics.expectations.Catalogue`) may declare the difference expected:
   with a `transform`, the custom value is diffed against the transformed reference value (a wrong
   element still shows at its index); with a `holds` predicate, the raw difference is expected only
   while the predicate is true;
2. floats use the field's `Tolerance` (`harness.engine.tolerance`), unless the user overrides it
   with `--tolerance FIELD=RTOL,ATOL`;
3. an unexpected divergence gets `relation` (`harness.explain.relations.infer`) computed from the
   two values that were compared, with the axes and context the stage supplies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from harness.engine.diff import FieldDiff, default_tolerance, diff_scalars, diff_tensors
from harness.engine.tolerance import Tolerance
from harness.explain import relations as R
from harness.explain.window import window
from harness.semantics.expectations import Catalogue

Index = tuple[int, ...]


@dataclass
class FieldSpec:
    """How to compare and explain one field (all optional)."""

    tol: Tolerance | None = None
    axes: Sequence[str] | None = None
    rel_ctx: R.Context | None = None
    decode: Callable[[Index], str] | None = None
    sample_of: Callable[[Index], str | None] | None = None
    keep_mask: bool = False
    sample: str | None = None
    info: dict = field(default_factory=dict)
    check: str = "cross"
    side: str | None = None
    token: Callable[[int], str] | None = None       # id -> token text, for the decoded window


class FieldComparer:
    """Field diffs under one catalogue, one set of user tolerance overrides, one device."""

    def __init__(self, catalogue: Catalogue, overrides: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.catalogue = catalogue
        self.overrides = dict(overrides or {})

    def _override(self, name: str) -> tuple[float, float] | None:
        if name in self.overrides:
            return self.overrides[name]
        for key, tol in self.overrides.items():
            if key.endswith("*") and name.startswith(key[:-1]):
                return tol
        return None

    def _raw(self, stage: str, name: str, a: Any, b: Any, spec: FieldSpec) -> FieldDiff:
        user = self._override(name)
        tol = spec.tol
        rtol, atol, bound, rule = None, None, None, None
        if user is not None:
            rtol, atol, rule = user[0], user[1], "user override (--tolerance)"
        elif tol is not None:
            rtol, atol, bound, rule = tol.rtol, tol.atol, tol.bound, tol.rule
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            # the mask is always kept here: the relation counts the comparison's own mismatches
            # (`compare` drops it again unless the spec asks for it, e.g. for a heatmap)
            d = diff_tensors(a, b, stage=stage, field=name, rtol=rtol, atol=atol, decode=spec.decode,
                             sample_of=spec.sample_of, keep_mask=True, bound=bound)
        else:
            d = diff_scalars(a, b, stage=stage, field=name, rtol=rtol, atol=atol)
        if d.rtol is not None and rule is None and d.rtol > 0:
            rule = "torch.testing defaults for the dtype"
        d.tolerance_rule = rule
        if spec.sample is not None and d.sample is None:
            d.sample = spec.sample
        d.check, d.side = spec.check, spec.side
        d.axes = list(spec.axes) if spec.axes is not None else None
        return d

    def compare(self, stage: str, name: str, ref: Any, cus: Any, spec: FieldSpec | None = None,
                entry: Any = None) -> FieldDiff:
        """Diff one field (module docstring); never raises on odd values.  `entry`: an expected
        difference to use instead of the catalogue's (derived by the caller for this field)."""
        spec = spec or FieldSpec()
        if entry is None and spec.check == "cross":
            entry = self.catalogue.lookup(stage, name)
        compared = (ref, cus)
        if entry is None:
            d = self._raw(stage, name, ref, cus, spec)
        elif entry.transform is not None:
            want = entry.transform(ref, spec.info)
            against = self._raw(stage, name, want, cus, spec)
            if not against.diverged:
                d = self._raw(stage, name, ref, cus, spec)
                d.expected = d.diverged
                d.expected_reason = f"[{entry.id}] {entry.reason}" if d.diverged else None
                return _drop_mask(d, spec)
            against.note = (f"custom differs from the expectation derived from the declared conventions "
                            f"[{entry.id}]: the 'reference' column shows the reference value transformed as "
                            f"the declarations say")
            d, compared = against, (want, cus)
        else:
            d = self._raw(stage, name, ref, cus, spec)
            if d.diverged and entry.holds(ref, cus, spec.info):
                d.expected = True
                d.expected_reason = f"[{entry.id}] {entry.reason}"
            elif d.diverged:
                d.note = f"differs, but not as declared [{entry.id}]: {entry.reason}"
        if d.unexpected:
            d.relation = explain(compared[0], compared[1], spec, differs=d.mismatch_mask)
            d.window = window(compared[0], compared[1], d.first_index, axes=spec.axes, token=spec.token)
        return _drop_mask(d, spec)

    def compare_mapping(self, stage: str, prefix: str, ref: Mapping[str, Any] | None, cus: Mapping[str, Any] | None,
                        spec_for: Callable[[str, Any], FieldSpec]) -> list[FieldDiff]:
        """Diff {name: tensor} mappings (gradients, parameters), hundreds of fields on a real model.

        A first pass checks every same-shape floating pair on the device and brings ONE vector of
        flags to the host; only fields outside tolerance get the full diff (first index, values,
        statistics, relation).  Without it, the per-field host syncs cost more than the backward
        pass they check.  A name present on one side only, or None (no gradient) on one side, is a
        "missing" divergence; exactly-zero on one side where the other is not is always a divergence.
        """
        ref, cus = dict(ref or {}), dict(cus or {})
        names = sorted(set(ref) | set(cus))
        specs = {n: spec_for(n, ref.get(n)) for n in names}
        within = self._all_within(stage, prefix, ref, cus, names, specs)
        out = []
        for n in names:
            fname = f"{prefix}/{n}"
            a, b = ref.get(n), cus.get(n)
            if within.get(n):
                spec = specs[n]
                out.append(FieldDiff(stage, fname, "equal", numel=a.numel(), rtol=spec.tol.rtol if spec.tol else None,
                                     atol=spec.tol.atol if spec.tol else None, ref_shape=list(a.shape),
                                     custom_shape=list(b.shape), ref_dtype=str(a.dtype), custom_dtype=str(b.dtype),
                                     tolerance_rule=spec.tol.rule if spec.tol else None, check=spec.check,
                                     side=spec.side))
                continue
            d = self.compare(stage, fname, a, b, specs[n])
            if (d.status == "equal" and isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                    and a.numel() and bool((a == 0).all()) != bool((b == 0).all())):
                zero_side = "reference" if bool((a == 0).all()) else "custom"
                d.status, d.mismatches = "mismatch", int((a != b).sum())
                d.note = (f"exactly zero on the {zero_side} side while the other side is not (within tolerance, but "
                          "an exact zero means nothing reached it)")
                d.relation = explain(a, b, specs[n])
            if d.status == "missing" and (n in ref) and (n in cus):
                none_side = "reference" if a is None else "custom"
                d.note = (f"no gradient reached this trainable parameter on the {none_side} side (None): it is not "
                          "connected to the loss there")
            elif d.status == "missing":
                d.note = f"only the {'reference' if n in ref else 'custom'} side has this name"
            out.append(d)
        return out

    def _all_within(self, stage: str, prefix: str, ref: dict, cus: dict, names: list[str],
                    specs: dict[str, FieldSpec]) -> dict[str, bool]:
        fast = [n for n in names
                if isinstance(ref.get(n), torch.Tensor) and isinstance(cus.get(n), torch.Tensor)
                and ref[n].shape == cus[n].shape and ref[n].dtype == cus[n].dtype and ref[n].is_floating_point()
                and self.catalogue.lookup(stage, f"{prefix}/{n}") is None and self._override(f"{prefix}/{n}") is None
                and specs[n].tol is not None and specs[n].tol.bound is None]
        if not fast:
            return {}
        flags = []
        for n in fast:
            a, b = ref[n], cus[n].to(ref[n].device)
            tol = specs[n].tol
            close = torch.isclose(b, a, rtol=tol.rtol, atol=tol.atol, equal_nan=True).all()
            # exactly zero on one side only is a divergence whatever the tolerance
            zero_one_side = (a == 0).all() ^ (b == 0).all()
            flags.append(close & ~zero_one_side)
        return dict(zip(fast, torch.stack(flags).tolist()))


def _drop_mask(d: FieldDiff, spec: FieldSpec) -> FieldDiff:
    """Keep the mismatch mask only where the field's spec asks for it (heatmaps)."""
    if not spec.keep_mask:
        d.mismatch_mask = None
    return d


def explain(ref: Any, cus: Any, spec: FieldSpec, *, differs: torch.Tensor | None = None) -> dict | None:
    """The relation between two compared values, as JSON (never raises: a failed inference says so).

    `differs`: the comparison's own mismatch mask (bool, shape of `ref`); when given, a relation that
    counts differing elements counts these, so the report never shows two counts for one field."""
    ctx = spec.rel_ctx or R.Context()
    if spec.tol is not None:
        ctx = R.Context(ctx.special_ids, ctx.kind_of, ctx.scale_sources, rtol=max(spec.tol.rtol, R.FIT_RTOL),
                        atol=max(spec.tol.atol, R.FIT_ATOL))
    if differs is not None:
        ctx = dataclasses.replace(ctx, differs=differs)
    try:
        return R.infer(ref, cus, axes=spec.axes, ctx=ctx).to_json()
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:   # explanation must not hide the finding
        return {"kind": "none", "words": f"relation inference failed: {type(exc).__name__}: {exc}", "axis": None,
                "details": {}}


def default_float_tolerance(dtype: torch.dtype) -> Tolerance:
    r, a = default_tolerance(dtype)
    return Tolerance(r, a, f"torch.testing defaults for {dtype}")
