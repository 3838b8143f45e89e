"""The diff engine: compare one field of the reference pipeline with the same field of the custom one.

Why a custom engine instead of `torch.testing.assert_close`: the harness needs *data* about a
divergence (how many elements, where the first one is, both values there, what that position
means), not an exception, and it must never crash on a shape/dtype/missing mismatch, because a
crash there would hide exactly the bug the harness is looking for.  Tolerances follow
`torch.testing` defaults so numbers mean what people expect.

Rules (see `diff_tensors`):
- integer and bool tensors are compared exactly;
- floating tensors pass where ``|ref - cus| <= atol + rtol * |ref|`` (the reference is the
  "expected" side); NaN == NaN and +Inf == +Inf count as equal, any other pairing that involves a
  NaN/Inf is a mismatch and is also counted in ``nan_mismatch``;
- the status is ``"nonfinite"`` when any mismatch involves a NaN/Inf, else ``"mismatch"``;
- work happens on the reference tensor's device; only a handful of scalars come back to the host.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

STATUSES = ("equal", "mismatch", "shape", "dtype", "missing", "nonfinite")

# Masks larger than this are not kept for heatmaps (a (8, 1e5) code grid is fine; logits are not).
MASK_KEEP_LIMIT = 1_000_000

Index = tuple[int, ...]


@dataclass
class FieldDiff:
    """The comparison of one named field at one stage; JSON-able through `to_json`."""

    stage: str
    field: str
    status: str                        # one of STATUSES
    expected: bool = False             # set by the expected-difference catalogue
    expected_reason: str | None = None
    sample: str | None = None          # sample id of the first mismatch, if known
    numel: int = 0
    mismatches: int = 0
    max_abs: float | None = None       # over positions where both sides are finite
    max_rel: float | None = None       # |ref - cus| / |ref| over the same positions
    first_index: list[int] | None = None   # row-major first mismatching position
    reference: Any = None              # value at first_index (or shape/dtype/description)
    custom: Any = None
    decoded: str | None = None         # human meaning of first_index
    rtol: float | None = None
    atol: float | None = None
    ref_shape: list[int] | None = None
    custom_shape: list[int] | None = None
    ref_dtype: str | None = None
    custom_dtype: str | None = None
    nan_mismatch: int = 0              # mismatches where at least one side is NaN/Inf
    mismatch_mask: "torch.Tensor | None" = None   # bool, CPU, same shape; for heatmaps only
    note: str | None = None
    # "cross": reference vs custom; "declared": one side (`side`) vs what its declared conventions
    # say it must produce (the 'reference' value is then the declared one, 'custom' the actual one).
    check: str = "cross"
    side: str | None = None
    tolerance_rule: str | None = None  # where the float tolerance comes from (harness.engine.tolerance)
    relation: dict | None = None       # harness.explain.relations.Relation.to_json() of a divergence
    cause: dict | None = None          # harness.explain.causes: {"mechanism", "evidence", "rule"}
    window: dict | None = None         # decoded values around first_index on both sides (reports)
    axes: list[str] | None = None      # what each dimension means, e.g. ["frame", "codebook"] (plots, windows)

    @property
    def diverged(self) -> bool:
        return self.status != "equal"

    @property
    def unexpected(self) -> bool:
        """Diverged and not declared in the expected-difference catalogue."""
        return self.diverged and not self.expected

    @property
    def columns(self) -> tuple[str, str]:
        """What the two compared values are: ("reference", "custom") or ("declared", "actual")."""
        if self.check == "declared":
            return (f"declared ({self.side})", f"actual ({self.side})")
        return ("reference", "custom")

    def summary(self) -> str:
        """One line for tables and terminals."""
        if self.status == "equal":
            return "equal"
        if self.status in ("shape", "dtype", "missing"):
            return f"{self.status}: reference={_fmt(self.reference)} custom={_fmt(self.custom)}"
        where = "" if self.first_index is None else f" first at {self.first_index}"
        return (f"{self.status}: {self.mismatches}/{self.numel} differ{where} "
                f"(reference={_fmt(self.reference)} custom={_fmt(self.custom)})")

    def to_json(self) -> dict:
        """JSON-safe and deterministic: floats rounded to 6 significant digits, no mask."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "mismatch_mask":
                continue
            out[f.name] = jsonable(getattr(self, f.name))
        # JSON meaning (report schema 2): "differs" = the values differ; "expected" = they differ as
        # declared; "diverged" = they differ and that is NOT declared (differs and not expected).
        out["differs"] = self.diverged
        out["diverged"] = self.unexpected
        return out


# --------------------------------------------------------------------------------------------
# JSON helpers (shared with report.py)

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def round_float(x: float) -> float | str:
    """6 significant digits; non-finite floats become strings because JSON has no NaN/Inf."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(f"{x:.6g}")


def jsonable(x: Any) -> Any:
    """Convert to plain JSON types deterministically (no memory addresses, rounded floats)."""
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return round_float(x)
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (torch.dtype, torch.device)):
        return str(x)
    if isinstance(x, torch.Size):
        return list(x)
    if isinstance(x, torch.Tensor):
        if x.numel() <= 64:
            return jsonable(x.detach().cpu().tolist())
        return f"Tensor(shape={list(x.shape)}, dtype={x.dtype})"
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        if hasattr(x, "to_json"):
            return jsonable(x.to_json())
        return jsonable({f.name: getattr(x, f.name) for f in dataclasses.fields(x)})
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (set, frozenset)):
        return sorted((jsonable(v) for v in x), key=repr)
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", None) == 0:  # numpy scalar
        return jsonable(x.item())
    if hasattr(x, "tolist") and callable(x.tolist):                            # numpy array
        return jsonable(x.tolist())
    return _ADDRESS.sub("", repr(x))


def _fmt(x: Any) -> str:
    """Short human rendering of a value (6 significant digits for floats)."""
    if isinstance(x, float):
        return str(round_float(x))
    return str(jsonable(x))


# --------------------------------------------------------------------------------------------
# Tolerances

_DEFAULT_TOL: dict[torch.dtype, tuple[float, float]] = {
    # (rtol, atol), as torch.testing.assert_close
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
    torch.complex32: (1e-3, 1e-5),
    torch.complex64: (1.3e-6, 1e-5),
    torch.complex128: (1e-7, 1e-7),
}


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) that `torch.testing.assert_close` uses for `dtype`; exact for ints/bools."""
    if dtype in _DEFAULT_TOL:
        return _DEFAULT_TOL[dtype]
    if dtype.is_floating_point or dtype.is_complex:   # float8 variants and friends
        return _DEFAULT_TOL[torch.bfloat16]
    return (0.0, 0.0)


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_floating_point or dtype.is_complex:
        return "float"
    return "int"


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"Tensor(shape={list(x.shape)}, dtype={x.dtype})"
    return _ADDRESS.sub("", repr(x))[:200]


def _unravel(flat: int, shape: tuple[int, ...]) -> list[int]:
    index = []
    for dim in reversed(shape):
        index.append(flat % dim)
        flat //= dim
    return list(reversed(index))


def _as_tensor(x: Any, *, stage: str, field: str, side: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"diff_tensors: stage={stage!r} field={field!r}: the {side} value "
                        f"({type(x).__name__}) is not a tensor and cannot become one: {err}") from err


# --------------------------------------------------------------------------------------------
# Tensors

def _absent(reference: Any, custom: Any, *, stage: str, field: str) -> FieldDiff:
    """The diff when at least one side has no value (None)."""
    if reference is None and custom is None:
        return FieldDiff(stage, field, "equal", note="absent on both sides")
    return FieldDiff(stage, field, "missing",
                     reference=None if reference is None else _describe(reference),
                     custom=None if custom is None else _describe(custom),
                     note=f"{'reference' if reference is None else 'custom'} side has no value")


def diff_tensors(reference: Any, custom: Any, *, stage: str, field: str,
                 rtol: float | None = None, atol: float | None = None,
                 decode: Callable[[Index], str] | None = None,
                 sample_of: Callable[[Index], str | None] | None = None,
                 keep_mask: bool = False, bound: torch.Tensor | None = None) -> FieldDiff:
    """Compare two tensors element-wise and describe the first divergence.

    `rtol`/`atol`: if either is None, both come from `default_tolerance` of the compared dtype.
    `bound`: an element-wise admissible absolute difference added to atol (same shape, or
    broadcastable), for tolerances propagated through an operation (harness.engine.tolerance).
    `decode(index)` turns the first mismatching index into words (token text, codebook/frame);
    `sample_of(index)` names the sample it belongs to.  `keep_mask` keeps a CPU bool mask of
    mismatching positions (only when the field has <= MASK_KEEP_LIMIT elements).
    """
    if reference is None or custom is None:
        return _absent(reference, custom, stage=stage, field=field)
    ref = _as_tensor(reference, stage=stage, field=field, side="reference")
    cus = _as_tensor(custom, stage=stage, field=field, side="custom")
    base = dict(ref_shape=list(ref.shape), custom_shape=list(cus.shape),
                ref_dtype=str(ref.dtype), custom_dtype=str(cus.dtype))

    if ref.shape != cus.shape:
        return FieldDiff(stage, field, "shape", reference=list(ref.shape), custom=list(cus.shape),
                         numel=ref.numel(), **base)
    kind_ref, kind_cus = _kind(ref.dtype), _kind(cus.dtype)
    if kind_ref != kind_cus:
        return FieldDiff(stage, field, "dtype", reference=str(ref.dtype), custom=str(cus.dtype),
                         numel=ref.numel(), **base)

    notes: list[str] = []
    if cus.device != ref.device:
        notes.append(f"custom moved from {cus.device} to {ref.device}")
        cus = cus.to(ref.device)

    if kind_ref == "float":
        work = torch.promote_types(torch.promote_types(ref.dtype, cus.dtype), torch.float32)
        if rtol is None or atol is None:
            r1, a1 = default_tolerance(ref.dtype)
            r2, a2 = default_tolerance(cus.dtype)
            rtol, atol = max(r1, r2), max(a1, a2)
        if ref.dtype != cus.dtype:
            notes.append(f"dtypes differ ({ref.dtype} vs {cus.dtype}); compared in {work} "
                         f"with rtol={rtol:g} atol={atol:g}")
        extra = None if bound is None else bound.to(ref.device, work)
        mask, stats = _float_mismatch(ref.to(work), cus.to(work), rtol, atol, extra)
    else:
        rtol, atol = 0.0, 0.0
        if ref.dtype != cus.dtype:
            notes.append(f"dtypes differ ({ref.dtype} vs {cus.dtype}); compared exactly")
        mask, stats = _exact_mismatch(ref, cus, kind_ref)

    numel = ref.numel()
    mismatches, nan_mismatch, max_abs, max_rel, first_flat = stats
    result = FieldDiff(stage, field, "equal", numel=numel, mismatches=mismatches,
                       max_abs=max_abs, max_rel=max_rel, rtol=rtol, atol=atol,
                       nan_mismatch=nan_mismatch, note="; ".join(notes) or None, **base)
    if keep_mask and numel <= MASK_KEEP_LIMIT:
        result.mismatch_mask = mask.detach().to("cpu", torch.bool)
    if mismatches == 0:
        return result
    result.status = "nonfinite" if nan_mismatch > 0 else "mismatch"
    index = _unravel(first_flat, tuple(ref.shape))
    result.first_index = index
    result.reference = ref[tuple(index)].item()
    result.custom = cus[tuple(index)].item()
    if decode is not None:
        result.decoded = decode(tuple(index))
    if sample_of is not None:
        result.sample = sample_of(tuple(index))
    return result


def _first_true(mask: torch.Tensor) -> torch.Tensor:
    """Flat row-major index of the first True (argmax returns the first maximum)."""
    return mask.reshape(-1).to(torch.uint8).argmax()


def _float_mismatch(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float, bound: torch.Tensor | None = None):
    """(mask, (mismatches, nan_mismatch, max_abs, max_rel, first_flat)); a is the reference."""
    if a.numel() == 0:
        return torch.zeros_like(a, dtype=torch.bool), (0, 0, None, None, 0)
    both_finite = torch.isfinite(a) & torch.isfinite(b)
    diff = (a - b).abs()
    diff = torch.where(both_finite, diff, torch.zeros_like(diff))
    tol = atol + rtol * a.abs()
    if bound is not None:
        tol = tol + bound
    close = both_finite & (diff <= tol)
    # NaN pairs and same-signed infinities agree; everything else non-finite disagrees.
    nonfinite_same = ~both_finite & ((a == b) | (torch.isnan(a) & torch.isnan(b)))
    mask = ~(close | nonfinite_same)
    abs_a = a.abs()
    rel = torch.where(diff == 0, torch.zeros_like(diff), diff / abs_a)   # x/0 -> inf
    rel = torch.where(both_finite, rel, torch.zeros_like(rel))
    stats = torch.stack([
        mask.sum().to(torch.float64),
        (mask & ~both_finite).sum().to(torch.float64),
        diff.max().to(torch.float64),
        rel.max().to(torch.float64),
        _first_true(mask).to(torch.float64),
        both_finite.any().to(torch.float64),
    ]).tolist()                                                          # one device sync
    mism, nan_m, max_abs, max_rel, first, any_finite = stats
    if not any_finite:
        max_abs = max_rel = None
    return mask, (int(mism), int(nan_m), max_abs, max_rel, int(first))


def _exact_mismatch(a: torch.Tensor, b: torch.Tensor, kind: str):
    if a.numel() == 0:
        return torch.zeros_like(a, dtype=torch.bool), (0, 0, None, None, 0)
    if a.dtype != b.dtype:
        a, b = a.to(torch.int64), b.to(torch.int64)
    mask = a != b
    parts = [mask.sum(), _first_true(mask)]
    if kind == "int":
        parts.append((a.to(torch.int64) - b.to(torch.int64)).abs().max())
    values = torch.stack([p.to(torch.int64) for p in parts]).tolist()
    max_abs = float(values[2]) if kind == "int" else None
    return mask, (int(values[0]), 0, max_abs, None, int(values[1]))


# --------------------------------------------------------------------------------------------
# Python scalars and mappings

def _scalar_kind(x: Any) -> str:
    if isinstance(x, bool):
        return "bool"
    if isinstance(x, int):
        return "int"
    if isinstance(x, float):
        return "float"
    if isinstance(x, str):
        return "str"
    return type(x).__name__


def diff_scalars(reference: Any, custom: Any, *, stage: str, field: str,
                 rtol: float | None = None, atol: float | None = None) -> FieldDiff:
    """Compare python numbers/bools/strings/None (tensors are handed to `diff_tensors`).

    Strings, ints and bools are exact; floats use float64 default tolerances unless given, with
    the same NaN/Inf rules as tensors; int vs float (or any kind change) is a "dtype" status;
    other values (tuples, lists, ...) are compared with ``==``.
    """
    if isinstance(reference, torch.Tensor) or isinstance(custom, torch.Tensor):
        return diff_tensors(reference, custom, stage=stage, field=field, rtol=rtol, atol=atol)
    reference = reference.item() if _is_numpy_scalar(reference) else reference
    custom = custom.item() if _is_numpy_scalar(custom) else custom
    if reference is None or custom is None:
        return _absent(reference, custom, stage=stage, field=field)
    k_ref, k_cus = _scalar_kind(reference), _scalar_kind(custom)
    base = dict(numel=1, ref_dtype=k_ref, custom_dtype=k_cus)
    if k_ref != k_cus:
        return FieldDiff(stage, field, "dtype", reference=k_ref, custom=k_cus,
                         note=f"reference={_describe(reference)} custom={_describe(custom)}", **base)
    if k_ref == "float":
        if rtol is None or atol is None:
            rtol, atol = default_tolerance(torch.float64)
        a, b = reference, custom
        finite = math.isfinite(a) and math.isfinite(b)
        if finite:
            diff = abs(a - b)
            equal = diff <= atol + rtol * abs(a)
            rel = 0.0 if diff == 0 else (math.inf if a == 0 else diff / abs(a))
            res = FieldDiff(stage, field, "equal" if equal else "mismatch", max_abs=diff,
                            max_rel=rel, rtol=rtol, atol=atol, **base)
        else:
            equal = a == b or (math.isnan(a) and math.isnan(b))
            res = FieldDiff(stage, field, "equal" if equal else "nonfinite", rtol=rtol, atol=atol,
                            nan_mismatch=0 if equal else 1, **base)
    else:
        equal = reference == custom
        res = FieldDiff(stage, field, "equal" if equal else "mismatch",
                        rtol=0.0, atol=0.0, **base)
        if k_ref == "int":
            res.max_abs = float(abs(reference - custom))
    if not equal:
        res.mismatches = 1
        res.first_index = []
        res.reference = reference if k_ref in ("bool", "int", "float", "str") else jsonable(reference)
        res.custom = custom if k_ref in ("bool", "int", "float", "str") else jsonable(custom)
    return res


def _is_numpy_scalar(x: Any) -> bool:
    return (type(x).__module__ == "numpy" and getattr(x, "ndim", None) == 0
            and hasattr(x, "item"))


def diff_mapping(ref: Mapping[str, Any] | None, cus: Mapping[str, Any] | None, *, stage: str,
                 field_prefix: str = "", rtol: float | None = None, atol: float | None = None,
                 keep_mask: bool = False) -> list[FieldDiff]:
    """Diff every key of two dicts (e.g. gradients by parameter name), in sorted key order.

    Field names are ``f"{field_prefix}.{key}"`` (just ``key`` when the prefix is empty).  A key
    present on one side only gives a "missing" entry; non-tensor values go to `diff_scalars`.
    """
    ref = ref or {}
    cus = cus or {}
    out: list[FieldDiff] = []
    for key in sorted(set(ref) | set(cus), key=str):
        name = f"{field_prefix}.{key}" if field_prefix else str(key)
        r, c = ref.get(key), cus.get(key)
        if key not in ref or key not in cus:
            out.append(FieldDiff(stage, name, "missing",
                                 reference=_describe(r) if key in ref else None,
                                 custom=_describe(c) if key in cus else None,
                                 note=f"key only on the {'reference' if key in ref else 'custom'} side"))
        elif isinstance(r, torch.Tensor) or isinstance(c, torch.Tensor):
            out.append(diff_tensors(r, c, stage=stage, field=name, rtol=rtol, atol=atol,
                                    keep_mask=keep_mask))
        else:
            out.append(diff_scalars(r, c, stage=stage, field=name, rtol=rtol, atol=atol))
    return out
