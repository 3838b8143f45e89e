"""Property: for random tensors and a random relation applied to them, the engine recovers that
relation, or an equivalent simpler one (a cyclic permutation is a shift, a scale by -1 a sign flip)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.explain import relations as R

pytestmark = pytest.mark.property
AXES = ("codebook", "frame")
SOURCES = {"num_codebooks": 8.0, "grad_accum": 4.0, "world_size": 2.0, "lora_alpha/r": 2.0}


@st.composite
def cases(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, set[str], dict]:
    rows, cols = draw(st.integers(3, 8)), draw(st.integers(6, 24))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["shift", "permutation", "scale", "offset", "sign_flip", "transpose", "truncation",
                                 "extension", "masked", "unmasked", "replaced", "dtype_roundtrip", "zero",
                                 "nonfinite_onset"]))
    floats = kind in ("scale", "offset", "sign_flip", "dtype_roundtrip", "zero", "nonfinite_onset")
    ref = (torch.randn(rows, cols, generator=g) if floats else torch.randint(0, 1024, (rows, cols), generator=g))
    expect: dict = {}
    if kind == "shift":
        k = draw(st.sampled_from([-2, -1, 1, 2]))
        fill = torch.full((rows, abs(k)), -100)
        cus = torch.cat([fill, ref[:, :-k]], 1) if k > 0 else torch.cat([ref[:, -k:], fill], 1)
        ok = {"shift"}
        expect = {"k": k}
    elif kind == "permutation":
        perm = torch.randperm(rows, generator=g)
        if torch.equal(perm, torch.arange(rows)):
            perm = torch.roll(perm, 1)
        cus = ref[perm]
        ok = {"permutation", "shift"}
    elif kind == "scale":
        s = draw(st.sampled_from([8.0, 0.25, 0.5, 3.0, 1.5]))
        cus, ok = ref * s, {"scale"}
    elif kind == "offset":
        cus, ok = ref + draw(st.sampled_from([0.5, -2.0, 0.125])), {"offset"}
    elif kind == "sign_flip":
        cus, ok = -ref, {"sign_flip"}
    elif kind == "transpose":
        if rows == cols:
            cols += 1
            ref = torch.randint(0, 1024, (rows, cols), generator=g)
        cus, ok = ref.T.contiguous(), {"transpose"}
    elif kind == "truncation":
        k = draw(st.integers(1, 3))
        cus, ok = ref[:, :-k], {"truncation"}
    elif kind == "extension":
        k = draw(st.integers(1, 3))
        cus, ok = torch.cat([ref, torch.full((rows, k), 1025)], 1), {"extension"}
    elif kind == "masked":
        mask = torch.rand(rows, cols, generator=g) < 0.3
        mask[0, 0] = True
        cus, ok = ref.masked_fill(mask, -100), {"masked"}
    elif kind == "unmasked":
        mask = torch.rand(rows, cols, generator=g) < 0.5
        mask[0, 0] = True
        ref = ref.masked_fill(mask, -100)
        cus, ok = torch.where(mask, torch.randint(0, 1024, (rows, cols), generator=g), ref), {"unmasked"}
    elif kind == "replaced":
        mask = torch.rand(rows, cols, generator=g) < 0.3
        mask[0, 0] = True
        ref = ref.clamp_max(1000)
        cus, ok = ref.masked_fill(mask, 1025), {"replaced"}
    elif kind == "dtype_roundtrip":
        ref = ref * 1000                      # values whose low bits bf16 loses
        cus, ok = ref.to(torch.bfloat16).to(torch.float32), {"dtype_roundtrip"}
    elif kind == "zero":
        cus, ok = torch.zeros_like(ref), {"zero"}
    else:
        cus = ref.clone()
        cus[rows // 2, cols // 2] = float("nan")
        ok = {"nonfinite_onset"}
    return ref, cus, ok, expect


@given(case=cases())
def test_engine_recovers_the_applied_relation(case):
    ref, cus, ok, expect = case
    rel = R.infer(ref, cus, axes=AXES, ctx=R.Context(special_ids={-100: "-100", 1025: "stream EOS"},
                                                     scale_sources=SOURCES))
    assert rel.kind in ok, (rel.kind, rel.words, ok)
    if rel.kind == "shift" and "k" in expect:
        assert rel.details["k"] == expect["k"]
