"""Infer the simplest relation that maps one diverged value onto the other.

Given the reference value and the custom value of a field that diverged, and what the field's axes
mean (sample, codebook, frame, token position, vocabulary, ...), `infer` tries relations from the
simplest up and returns the first that holds exactly (integers) or within the comparison's float
tolerance, in words and as JSON:

 1. absent / all zero on one side (a gradient that is None or exactly 0: detached or unwired);
 2. shapes: transposition; truncation or extension by k along a named axis (and what was cut or
    added);
 3. the onset of NaN/Inf (first index, count);
 4. equality after a dtype round trip (bfloat16, float16) of either side;
 5. sign flip; a constant scale factor, with the named quantities that ratio matches (number of
    micro-batches, world size, codebooks, lora_alpha / r, segments, samples); an additive offset;
 6. a shift by k along a named axis (the overlap equal);
 7. a permutation of the slices along an axis (which order);
 8. for ids and labels: a subset of positions masked (-100) or unmasked, or replaced by one named
    special id, with the kinds of token those positions hold (BOS, EOS, pad, <|AUDIO_OUT|>, a turn
    header, a named turn);
 9. equality up to the order of a reduction (norm-wise error within a float reduction's bound);
10. otherwise: where the differences sit (which slices of which axes), and "no simple relation".

Nothing here knows about pipelines: callers pass axis names and a `Context` with the named ids,
a token-kind classifier and the candidate scale sources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

IGNORE = -100
MAX_SHIFT = 3
MAX_PERMUTE_SLICES = 64
# Float relations are fitted with this relative tolerance (float32 arithmetic on both sides).
FIT_RTOL = 1e-5
FIT_ATOL = 1e-7
UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53, torch.bfloat16: 2.0 ** -8,
                 torch.float16: 2.0 ** -11}


@dataclass
class Relation:
    """How the custom value follows from the reference value (or "none")."""

    kind: str
    words: str
    axis: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "words": self.words, "axis": self.axis, "details": self.details}


@dataclass
class Context:
    """What the engine may name: special ids, token kinds of positions, scale sources.

    special_ids: id -> name (e.g. {-100: "-100 (ignored)", 1025: "stream EOS", 128016: "<|AUDIO_OUT|>"}).
    kind_of: index tuple -> a short token-kind name ("EOS", "user turn", ...), or None.
    scale_sources: name -> value (e.g. {"grad_accum": 2, "num_codebooks": 8, "lora_alpha/r": 2.0}).
    atol, rtol: the comparison's tolerance (floats).
    """

    special_ids: Mapping[int, str] = field(default_factory=dict)
    kind_of: Callable[[tuple[int, ...]], str | None] | None = None
    scale_sources: Mapping[str, float] = field(default_factory=dict)
    rtol: float = FIT_RTOL
    atol: float = FIT_ATOL
    # The comparison's own mismatch mask (bool, the reference's shape), when the caller has it: "no simple
    # relation" then counts and localises exactly the elements the comparison counted.
    differs: torch.Tensor | None = None


def _axis(axes: Sequence[str] | None, dim: int) -> str:
    if axes and dim < len(axes):
        return axes[dim]
    return f"axis {dim}"


def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _close(a: torch.Tensor, b: torch.Tensor, ctx: Context) -> bool:
    if a.shape != b.shape:
        return False
    if not _is_float(a) and not _is_float(b):
        return bool(torch.equal(a, b))
    a64, b64 = a.double(), b.double()
    return bool(torch.isclose(b64, a64, rtol=max(ctx.rtol, FIT_RTOL), atol=max(ctx.atol, FIT_ATOL),
                              equal_nan=True).all())


def infer(reference: Any, custom: Any, *, axes: Sequence[str] | None = None, ctx: Context | None = None) -> Relation:
    """The simplest relation with custom = f(reference) (module docstring).  Never raises on odd input."""
    ctx = ctx or Context()
    if reference is None or custom is None:
        side = "custom" if custom is None else "reference"
        return Relation("absent", f"the {side} side has no value (None)", details={"side": side})
    if not isinstance(reference, torch.Tensor) or not isinstance(custom, torch.Tensor):
        return _scalar(reference, custom, ctx)
    ref, cus = reference.detach().cpu(), custom.detach().cpu()
    if ref.shape != cus.shape:
        return _shape(ref, cus, axes, ctx)
    if ref.numel() == 0:
        return Relation("none", "both empty; no relation to infer")
    for test in (_zero, _nonfinite, _dtype_roundtrip, _sign_scale_offset, _shift, _permutation, _ids_subset,
                 _reduction_order):
        rel = test(ref, cus, axes, ctx)
        if rel is not None:
            return rel
    return _none(ref, cus, axes, ctx)


# ------------------------------------------------------------------------------ scalars


def _strings(ref: str, cus: str) -> Relation:
    """Two texts: what was cut, added or replaced (common prefix and suffix removed)."""
    i = 0
    while i < min(len(ref), len(cus)) and ref[i] == cus[i]:
        i += 1
    j = 0
    while j < min(len(ref), len(cus)) - i and ref[len(ref) - 1 - j] == cus[len(cus) - 1 - j]:
        j += 1
    r_mid, c_mid = ref[i:len(ref) - j], cus[i:len(cus) - j]
    where = "at the end" if j == 0 else ("at the start" if i == 0 else f"at character {i}")
    details = {"position": i, "reference_part": r_mid, "custom_part": c_mid}
    if not c_mid:
        return Relation("truncation", f"the custom text lacks {r_mid!r} {where}", details=details)
    if not r_mid:
        return Relation("extension", f"the custom text adds {c_mid!r} {where}", details=details)
    if ref.strip() == "" or cus.strip() == "":
        return Relation("replaced", f"one text is empty: {ref!r} vs {cus!r}", details=details)
    if not any(ch.isspace() for ch in ref + cus):     # two names (a setting's values): characters mean nothing
        return Relation("replaced", f"{ref!r} on the reference side, {cus!r} on the custom side", details=details)
    return Relation("replaced", f"{r_mid!r} on the reference side is {c_mid!r} on the custom side ({where})",
                    details=details)


def _scalar(reference: Any, custom: Any, ctx: Context) -> Relation:
    if isinstance(reference, str) and isinstance(custom, str):
        return _strings(reference, custom)
    if isinstance(reference, bool) or isinstance(custom, bool) or isinstance(reference, str) or isinstance(custom, str):
        return Relation("none", f"{reference!r} vs {custom!r}", details={"reference": reference, "custom": custom})
    try:
        r, c = float(reference), float(custom)
    except (TypeError, ValueError):
        return Relation("none", f"{reference!r} vs {custom!r}")
    return infer(torch.tensor([r], dtype=torch.float64), torch.tensor([c], dtype=torch.float64), ctx=ctx)


# ------------------------------------------------------------------------------ shapes


def _shape(ref: torch.Tensor, cus: torch.Tensor, axes: Sequence[str] | None, ctx: Context) -> Relation:
    if ref.dim() == 2 and cus.dim() == 2 and tuple(cus.shape) == tuple(ref.shape[::-1]) and _close(ref.T, cus, ctx):
        return Relation("transpose", f"the custom value is the reference transposed ({_axis(axes, 0)} and "
                                     f"{_axis(axes, 1)} swapped)")
    if ref.dim() != cus.dim():
        return Relation("none", f"different ranks: {list(ref.shape)} vs {list(cus.shape)}",
                        details={"reference_shape": list(ref.shape), "custom_shape": list(cus.shape)})
    diff = [d for d in range(ref.dim()) if ref.shape[d] != cus.shape[d]]
    if len(diff) != 1:
        return Relation("none", f"shapes differ in {len(diff)} axes: {list(ref.shape)} vs {list(cus.shape)}",
                        details={"reference_shape": list(ref.shape), "custom_shape": list(cus.shape)})
    d = diff[0]
    n_ref, n_cus = ref.shape[d], cus.shape[d]
    name = _axis(axes, d)
    k = abs(n_ref - n_cus)
    short, long_, kind = (cus, ref, "truncation") if n_cus < n_ref else (ref, cus, "extension")
    n = short.shape[d]
    for where, part in (("end", long_.narrow(d, 0, n)), ("start", long_.narrow(d, long_.shape[d] - n, n))):
        if _close(part, short, ctx):
            extra = long_.narrow(d, n, k) if where == "end" else long_.narrow(d, 0, k)
            what = _describe_values(extra, ctx)
            verb = "cut" if kind == "truncation" else "added"
            return Relation(kind, f"{k} {name} position(s) {verb} at the {where} of {name} on the custom side"
                                  + (f" ({what})" if what else ""),
                            axis=name, details={"k": k, "where": where, "values": what})
    return Relation("none", f"{name} has {n_ref} entries on the reference side and {n_cus} on the custom side, "
                            "and neither is a prefix or suffix of the other",
                    axis=name, details={"reference_shape": list(ref.shape), "custom_shape": list(cus.shape)})


def _describe_values(t: torch.Tensor, ctx: Context) -> str:
    if t.numel() == 0 or _is_float(t):
        return ""
    vals = sorted({int(v) for v in t.reshape(-1).tolist()})
    named = [ctx.special_ids.get(v, str(v)) for v in vals[:4]]
    return "values " + ", ".join(named) + (" ..." if len(vals) > 4 else "")


# ------------------------------------------------------------------------------ same shape


def _zero(ref, cus, axes, ctx) -> Relation | None:
    if not _is_float(ref) and not _is_float(cus):
        return None
    rz, cz = bool((ref == 0).all()), bool((cus == 0).all())
    if cz and not rz:
        return Relation("zero", "the custom value is exactly zero everywhere while the reference's is not "
                                "(nothing reaches it: detached, unwired, or multiplied by zero)",
                        details={"side": "custom"})
    if rz and not cz:
        return Relation("zero", "the reference value is exactly zero everywhere while the custom one is not",
                        details={"side": "reference"})
    return None


def _nonfinite(ref, cus, axes, ctx) -> Relation | None:
    if not _is_float(ref) and not _is_float(cus):
        return None
    rbad, cbad = ~torch.isfinite(ref.double()), ~torch.isfinite(cus.double())
    only = cbad & ~rbad
    side = "custom"
    if not bool(only.any()):
        only, side = rbad & ~cbad, "reference"
    if not bool(only.any()):
        return None
    flat = int(only.reshape(-1).to(torch.uint8).argmax())
    index = list(_unravel(flat, tuple(ref.shape)))
    kinds = []
    src = cus if side == "custom" else ref
    if bool(torch.isnan(src.double())[only].any()):
        kinds.append("NaN")
    if bool(torch.isinf(src.double())[only].any()):
        kinds.append("Inf")
    where = ", ".join(f"{_axis(axes, d)} {i}" for d, i in enumerate(index))
    return Relation("nonfinite_onset", f"{'/'.join(kinds)} appears on the {side} side at {where} "
                                       f"({int(only.sum())} element(s)) where the other side is finite",
                    details={"side": side, "first_index": index, "count": int(only.sum()), "kinds": kinds})


def _dtype_roundtrip(ref, cus, axes, ctx) -> Relation | None:
    if ref.numel() == 1 and bool(torch.equal(ref.double(), ref.double().round())):
        return None       # one whole number (a count) matching another's rounding is a coincidence, not evidence
    if not _is_float(ref) and not _is_float(cus):        # ids / codes through a float cast and back
        for dtype, name in ((torch.bfloat16, "bfloat16"), (torch.float16, "float16")):
            back = ref.to(dtype).to(ref.dtype)
            if not bool(torch.equal(back, ref)) and bool(torch.equal(back, cus.to(ref.dtype))):
                return Relation("dtype_roundtrip", f"the custom values equal the reference values cast to {name} and "
                                                   "back (integers above 256 are not exact in bfloat16)",
                                details={"dtype": name, "side": "custom"})
        return None
    if not (_is_float(ref) and _is_float(cus)) or ref.dtype not in (torch.float32, torch.float64):
        return None
    for dtype, name in ((torch.bfloat16, "bfloat16"), (torch.float16, "float16")):
        if bool(torch.equal(ref.to(dtype).to(ref.dtype), cus)) and not bool(torch.equal(ref, cus)):
            return Relation("dtype_roundtrip", f"the custom value equals the reference value rounded to {name}",
                            details={"dtype": name, "side": "custom"})
        if bool(torch.equal(cus.to(dtype).to(cus.dtype), ref)) and not bool(torch.equal(ref, cus)):
            return Relation("dtype_roundtrip", f"the reference value equals the custom value rounded to {name}",
                            details={"dtype": name, "side": "reference"})
    if not _is_float(ref) or not _is_float(cus):
        return None
    return None


def _sources(ratio: float, ctx: Context) -> list[str]:
    """Named quantities the ratio matches (value or its inverse, within 1e-3 relative)."""
    out = []
    for name, value in ctx.scale_sources.items():
        if not value:
            continue
        for v, label in ((float(value), name), (1.0 / float(value), f"1/{name}")):
            if math.isclose(abs(ratio), v, rel_tol=1e-3):
                out.append(label)
    return out


def _sign_scale_offset(ref, cus, axes, ctx) -> Relation | None:
    if ref.numel() < 2:
        return _scalar_ratio(ref, cus, ctx)
    r, c = ref.double(), cus.double()
    finite = torch.isfinite(r) & torch.isfinite(c)
    if not bool(finite.all()):
        return None
    if _is_float(ref) or _is_float(cus):
        if _close(-r, c, ctx):
            return Relation("sign_flip", "the custom value is the reference value with its sign flipped")
        denom = float((r * r).sum())
        if denom > 0:
            s = float((r * c).sum()) / denom
            # a factor within rounding of 1 is no scale: that is reduction-order noise (tried later)
            if s != 0 and not math.isclose(s, 1.0, rel_tol=10 * FIT_RTOL) and _close(r * s, c, ctx):
                src = _sources(s, ctx)
                return Relation("scale", f"the custom value is {s:.6g} x the reference value"
                                         + (f" (matches {', '.join(src)})" if src else ""),
                                details={"factor": round(s, 6), "sources": src})
        d = float((c - r).median())
        if abs(d) > FIT_ATOL * 10 and _close(r + d, c, ctx):
            return Relation("offset", f"the custom value is the reference value + {d:.6g}",
                            details={"offset": round(d, 6)})
    else:
        d = (c - r)
        if bool((d == d.reshape(-1)[0]).all()) and float(d.reshape(-1)[0]) != 0:
            off = int(d.reshape(-1)[0])
            return Relation("offset", f"every custom value is the reference value {'+' if off > 0 else '-'} {abs(off)}",
                            details={"offset": off})
    return None


def _scalar_ratio(ref, cus, ctx) -> Relation | None:
    r, c = float(ref.reshape(-1)[0]), float(cus.reshape(-1)[0])
    if not (math.isfinite(r) and math.isfinite(c)) or r == 0:
        return None
    s = c / r
    if math.isclose(s, -1.0, rel_tol=1e-9):
        return Relation("sign_flip", "the custom value is the reference value with its sign flipped")
    src = _sources(s, ctx)
    if src:
        return Relation("scale", f"the custom value is {s:.6g} x the reference value (matches {', '.join(src)})",
                        details={"factor": round(s, 6), "sources": src})
    return Relation("scale", f"the custom value is {s:.6g} x the reference value (a single number: the ratio is "
                             "all there is)", details={"factor": round(s, 6), "sources": []})


def _shift(ref, cus, axes, ctx) -> Relation | None:
    best = None
    for d in range(ref.dim()):
        n = ref.shape[d]
        for k in sorted(range(-MAX_SHIFT, MAX_SHIFT + 1), key=abs):
            if k == 0 or abs(k) >= n or n - abs(k) < 2:
                continue
            # custom[i] == reference[i - k] on the overlap: k > 0 moves values towards the end
            if k > 0:
                a, b = ref.narrow(d, 0, n - k), cus.narrow(d, k, n - k)
            else:
                a, b = ref.narrow(d, -k, n + k), cus.narrow(d, 0, n + k)
            if _close(a, b, ctx) and not _close(ref.narrow(d, 0, n - abs(k)), ref.narrow(d, abs(k), n - abs(k)), ctx):
                best = (d, k)
                break
        if best:
            break
    if best is None:
        return None
    d, k = best
    name = _axis(axes, d)
    direction = "right (later)" if k > 0 else "left (earlier)"
    return Relation("shift", f"the custom value is the reference value shifted {abs(k)} {name} position(s) "
                             f"{direction}", axis=name, details={"k": k, "dim": d})


def _permutation(ref, cus, axes, ctx) -> Relation | None:
    for d in range(ref.dim()):
        n = ref.shape[d]
        if n < 2 or n > MAX_PERMUTE_SLICES:
            continue
        r_slices = [ref.select(d, i) for i in range(n)]
        c_slices = [cus.select(d, i) for i in range(n)]
        order: list[int] = []
        used: set[int] = set()
        for cs in c_slices:
            match = next((j for j, rs in enumerate(r_slices) if j not in used and _close(rs, cs, ctx)), None)
            if match is None:
                break
            order.append(match)
            used.add(match)
        if len(order) == n and order != list(range(n)):
            moved = [i for i, j in enumerate(order) if i != j]
            name = _axis(axes, d)
            return Relation("permutation", f"the custom {name} slices are the reference's in the order {order} "
                                           f"({len(moved)} of {n} moved)", axis=name,
                            details={"order": order, "dim": d})
    return None


def _kinds(positions: torch.Tensor, ctx: Context, limit: int = 2000) -> dict[str, int]:
    """Token kinds of the given index rows (N, ndim), counted."""
    out: dict[str, int] = {}
    if ctx.kind_of is None:
        return out
    for row in positions[:limit].tolist():
        k = ctx.kind_of(tuple(int(x) for x in row)) or "other"
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _kinds_words(kinds: Mapping[str, int]) -> str:
    if not kinds:
        return ""
    total = sum(kinds.values())
    parts = [f"{k} x{v}" for k, v in list(kinds.items())[:4]]
    head = next(iter(kinds))
    if kinds[head] == total:
        return f"all {head}"
    return ", ".join(parts)


def _ids_subset(ref, cus, axes, ctx) -> Relation | None:
    if _is_float(ref) or _is_float(cus):
        return None
    diff = ref != cus
    pos = diff.nonzero()
    n = int(diff.sum())
    if n == 0:
        return None
    rd, cd = ref[diff], cus[diff]
    kinds = _kinds(pos, ctx)
    kw = _kinds_words(kinds)
    details = {"count": n, "kinds": kinds, "first_index": pos[0].tolist()}
    if bool((cd == IGNORE).all()):
        return Relation("masked", f"{n} position(s) supervised on the reference side are masked (-100) on the custom "
                                  "side" + (f": {kw}" if kw else ""), details=details)
    if bool((rd == IGNORE).all()):
        vals = _describe_values(cd, ctx)
        return Relation("unmasked", f"{n} position(s) masked (-100) on the reference side are supervised on the "
                                    "custom side" + (f": {kw}" if kw else "") + (f" ({vals})" if vals else ""),
                        details=details)
    uniq = torch.unique(cd)
    if uniq.numel() == 1 and int(uniq) in ctx.special_ids:
        name = ctx.special_ids[int(uniq)]
        return Relation("replaced", f"{n} value(s) replaced by {name} on the custom side" + (f": {kw}" if kw else ""),
                        details={**details, "value": int(uniq), "name": name})
    uniq_r = torch.unique(rd)
    if uniq_r.numel() == 1 and int(uniq_r) in ctx.special_ids:
        name = ctx.special_ids[int(uniq_r)]
        return Relation("replaced", f"{n} position(s) holding {name} on the reference side hold other values on the "
                                    "custom side" + (f": {kw}" if kw else ""),
                        details={**details, "value": int(uniq_r), "name": name, "side": "reference"})
    return None


def _reduction_order(ref, cus, axes, ctx) -> Relation | None:
    if not (_is_float(ref) and _is_float(cus)):
        return None
    r, c = ref.double(), cus.double()
    finite = torch.isfinite(r) & torch.isfinite(c)
    if not bool(finite.any()):
        return None
    # Reordering a sum changes its accumulation error (sqrt(n) units of the ACCUMULATION precision, fp32 for
    # bf16/fp16/fp32 values as GPU and CPU kernels accumulate) plus one rounding of the stored value (a unit
    # of its own dtype); n, the reduction length, is unknown here and bounded by the number of elements.
    u_out = UNIT_ROUNDOFF.get(ref.dtype, UNIT_ROUNDOFF[torch.float32])
    u_acc = UNIT_ROUNDOFF[torch.float64] if ref.dtype == torch.float64 else UNIT_ROUNDOFF[torch.float32]
    err = float((r[finite] - c[finite]).norm())
    scale = float(r[finite].norm())
    n = int(finite.sum())
    bound = 8.0 * (u_out + math.sqrt(max(n, 1)) * u_acc) * max(scale, 1e-30)
    if err <= bound:
        return Relation("reduction_order", f"equal up to the order of a floating-point reduction (norm-wise "
                                           f"error {err / max(scale, 1e-30):.2e} relative, within "
                                           f"8*(u + sqrt(n)*u_acc))",
                        details={"relative_error": err / max(scale, 1e-30)})
    return None


def _none(ref, cus, axes, ctx) -> Relation:
    if ctx.differs is not None and tuple(ctx.differs.shape) == tuple(ref.shape):
        diff = ctx.differs.detach().to("cpu", torch.bool)
    else:
        diff = (ref != cus) if not _is_float(ref) else ~torch.isclose(cus.double(), ref.double(),
                                                                      rtol=ctx.rtol, atol=ctx.atol, equal_nan=True)
    n = int(diff.sum())
    where = localise(diff, axes)
    kinds = _kinds(diff.nonzero(), ctx) if not _is_float(ref) else {}
    kw = _kinds_words(kinds)
    words = f"no simple relation fits: {n} of {ref.numel()} element(s) differ"
    if where:
        words += f"; {where}"
    if kw:
        words += f"; token kinds: {kw}"
    return Relation("none", words, details={"count": n, "where": where, "kinds": kinds})


def localise(mask: torch.Tensor, axes: Sequence[str] | None) -> str:
    """Which slices hold every difference, e.g. "only codebook 3" or "only frames 0, 7 of 40"."""
    if mask.dim() == 0 or not bool(mask.any()):
        return ""
    parts = []
    for d in range(mask.dim()):
        others = [x for x in range(mask.dim()) if x != d]
        hit = mask.any(dim=tuple(others)) if others else mask
        idx = hit.nonzero().reshape(-1).tolist()
        if 0 < len(idx) < mask.shape[d]:
            shown = ", ".join(str(i) for i in idx[:6]) + (" ..." if len(idx) > 6 else "")
            parts.append(f"only {_axis(axes, d)} {shown} (of {mask.shape[d]})")
    return "; ".join(parts)


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    index = []
    for dim in reversed(shape):
        index.append(flat % dim)
        flat //= dim
    return tuple(reversed(index))
