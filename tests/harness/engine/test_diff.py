"""The diff engine: exactness, tolerance boundaries, NaN/Inf, robustness, first-index correctness."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.engine.diff import (FieldDiff, default_tolerance, diff_mapping, diff_scalars, diff_tensors,
                          jsonable)

NAN, INF = float("nan"), float("inf")


def d(ref, cus, **kw) -> FieldDiff:
    return diff_tensors(ref, cus, stage="s", field="f", **kw)


# ----------------------------------------------------------------------------- integers / bools

def test_ints_are_exact_even_with_tolerance_given():
    a = torch.tensor([1024, 5, 7])
    b = torch.tensor([1025, 5, 7])
    res = d(a, b, rtol=0.5, atol=10.0)
    # rtol/atol apply to floats only: a code off by one is a different code.
    assert res.status == "mismatch"
    assert (res.mismatches, res.first_index, res.reference, res.custom) == (1, [0], 1024, 1025)
    assert res.max_abs == 1.0
    assert d(a, a.clone()).status == "equal"


def test_ints_of_different_width_compare_exactly_with_note():
    a = torch.tensor([1, 2, 3], dtype=torch.int32)
    res = d(a, a.to(torch.int64))
    assert res.status == "equal" and "dtypes differ" in res.note
    res = d(a, torch.tensor([1, 2, 4]))
    assert res.status == "mismatch" and res.first_index == [2]


def test_bools_exact_and_bool_vs_int_is_dtype():
    a = torch.tensor([True, False, True])
    res = d(a, torch.tensor([True, True, True]))
    assert res.status == "mismatch" and res.first_index == [1]
    assert res.reference is False and res.custom is True
    assert d(a, a.long()).status == "dtype"


# ----------------------------------------------------------------------------- tolerances

def test_default_tolerance_matches_torch_testing():
    assert default_tolerance(torch.float32) == (1.3e-6, 1e-5)
    assert default_tolerance(torch.float16) == (1e-3, 1e-5)
    assert default_tolerance(torch.bfloat16) == (1.6e-2, 1e-5)
    assert default_tolerance(torch.float64) == (1e-7, 1e-7)
    assert default_tolerance(torch.int64) == (0.0, 0.0)
    assert default_tolerance(torch.bool) == (0.0, 0.0)


def test_explicit_tolerance_boundary_is_inclusive():
    ref = torch.tensor([2.0, 2.0, 2.0])
    # atol + rtol*|ref| = 0.25 + 0.125*2 = 0.5, exactly representable
    cus = torch.tensor([2.5, 2.5000002, 1.5])
    res = d(ref, cus, rtol=0.125, atol=0.25)
    assert res.mismatches == 1 and res.first_index == [1]


def test_tolerance_scales_with_reference_not_custom():
    # |ref - cus| <= atol + rtol*|ref|: ref=0 gives no relative slack even though cus is large.
    res = d(torch.tensor([0.0]), torch.tensor([1.0]), rtol=0.9, atol=0.0)
    assert res.status == "mismatch" and res.max_rel == INF
    res = d(torch.tensor([1.0]), torch.tensor([0.0]), rtol=1.0, atol=0.0)
    assert res.status == "equal"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_default_tolerance_boundary_per_dtype(dtype):
    """Walk representable values upwards from 1.0; equal exactly while |diff| <= atol + rtol."""
    rtol, atol = default_tolerance(dtype)
    one = torch.tensor(1.0, dtype=dtype)
    values = [one]
    for _ in range(6):
        values.append(torch.nextafter(values[-1], torch.tensor(2.0, dtype=dtype)))
    # also a value clearly past the boundary
    values.append((one + 4 * (atol + rtol)).to(dtype))
    cus = torch.stack(values)
    ref = one.expand_as(cus).clone()
    res = d(ref, cus)
    expected = [abs(float(v) - 1.0) > atol + rtol * 1.0 for v in values]
    assert res.mismatches == sum(expected)
    assert res.first_index == ([expected.index(True)] if any(expected) else None)
    assert (res.rtol, res.atol) == (rtol, atol)
    assert res.status == ("mismatch" if any(expected) else "equal")


def test_mixed_float_precision_uses_looser_tolerance():
    ref = torch.tensor([1.0, 3.0], dtype=torch.float32)
    cus = ref.to(torch.bfloat16) + torch.tensor([0.0078125, 0.0], dtype=torch.bfloat16)
    res = d(ref, cus)
    assert res.status == "equal"                # within bf16 rtol 1.6e-2
    assert (res.rtol, res.atol) == default_tolerance(torch.bfloat16)
    assert "dtypes differ" in res.note and res.custom_dtype == "torch.bfloat16"
    # but a clear difference still shows
    res = d(ref, torch.tensor([1.0, 3.5], dtype=torch.bfloat16))
    assert res.status == "mismatch" and res.first_index == [1] and res.custom == 3.5


def test_int_vs_float_is_dtype_status():
    res = d(torch.tensor([1, 2]), torch.tensor([1.0, 2.0]))
    assert res.status == "dtype"
    assert (res.reference, res.custom) == ("torch.int64", "torch.float32")


# ----------------------------------------------------------------------------- NaN / Inf

def test_nan_and_inf_rules():
    ref = torch.tensor([NAN, INF, -INF, INF, NAN, 1.0, 2.0])
    cus = torch.tensor([NAN, INF, -INF, -INF, 0.0, NAN, 2.0])
    res = d(ref, cus)
    # NaN==NaN, +Inf==+Inf, -Inf==-Inf agree; Inf vs -Inf, NaN vs 0, 1 vs NaN do not
    assert res.mismatches == 3 and res.nan_mismatch == 3
    assert res.status == "nonfinite"
    assert res.first_index == [3]
    assert (res.reference, res.custom) == (INF, -INF)
    assert res.max_abs == 0.0          # over positions where both are finite


def test_finite_mismatch_only_is_not_nonfinite():
    res = d(torch.tensor([NAN, 1.0]), torch.tensor([NAN, 1.5]))
    assert res.status == "mismatch" and res.nan_mismatch == 0 and res.first_index == [1]


def test_inf_vs_large_finite_is_mismatch():
    res = d(torch.tensor([INF]), torch.tensor([3e38]), rtol=1.0, atol=1e38)
    assert res.status == "nonfinite" and res.nan_mismatch == 1


def test_all_nonfinite_has_no_max_abs():
    res = d(torch.tensor([NAN, INF]), torch.tensor([NAN, INF]))
    assert res.status == "equal" and res.max_abs is None and res.max_rel is None


# ----------------------------------------------------------------------------- robustness

@pytest.mark.parametrize("ref,cus,status", [
    (None, torch.zeros(2), "missing"),
    (torch.zeros(2), None, "missing"),
    (torch.zeros(2, 3), torch.zeros(3, 2), "shape"),
    (torch.zeros(1, 3), torch.zeros(3), "shape"),        # broadcastable but NOT equal
    (torch.zeros(3), torch.zeros(0), "shape"),
    (torch.zeros(2), torch.zeros(2, dtype=torch.long), "dtype"),
    (torch.zeros(2, dtype=torch.bool), torch.zeros(2, 3), "shape"),
])
def test_never_crashes(ref, cus, status):
    res = d(ref, cus)
    assert res.status == status and res.diverged
    json.dumps(res.to_json())


def test_shape_status_carries_both_shapes():
    res = d(torch.zeros(2, 3), torch.zeros(3, 2))
    assert (res.reference, res.custom) == ([2, 3], [3, 2])
    assert (res.ref_shape, res.custom_shape) == ([2, 3], [3, 2])


def test_missing_describes_present_side_and_both_none_is_equal():
    res = d(None, torch.zeros(4, dtype=torch.long))
    assert res.reference is None and "shape=[4]" in res.custom
    assert d(None, None).status == "equal"


def test_empty_and_scalar_tensors():
    assert d(torch.zeros(0, 4), torch.zeros(0, 4)).status == "equal"
    res = d(torch.tensor(1.0), torch.tensor(2.0))
    assert res.status == "mismatch" and res.first_index == [] and res.numel == 1


def test_noncontiguous_inputs_use_logical_order():
    base = torch.arange(12).reshape(3, 4)
    ref = base.t()                              # (4, 3), non-contiguous
    cus = ref.clone()
    cus[1, 2] = -1
    cus[3, 0] = -1
    res = d(ref, cus)
    assert res.first_index == [1, 2] and res.reference == int(ref[1, 2])


def test_numpy_and_lists_are_accepted():
    import numpy as np
    res = d(np.array([1, 2, 3]), [1, 2, 4])
    assert res.status == "mismatch" and res.first_index == [2]


# ----------------------------------------------------------------------------- first index

def _brute_first(ref: list, cus: list, shape: tuple[int, ...]):
    flat_ref, flat_cus = ref, cus
    for flat, (a, b) in enumerate(zip(flat_ref, flat_cus)):
        if a != b:
            idx = []
            for dim in reversed(shape):
                idx.append(flat % dim)
                flat //= dim
            return list(reversed(idx)), sum(x != y for x, y in zip(flat_ref, flat_cus))
    return None, 0


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), data=st.data())
@pytest.mark.property
def test_first_index_matches_brute_force(shape, data):
    n = math.prod(shape)
    ref = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    cus = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    res = d(torch.tensor(ref).reshape(shape), torch.tensor(cus).reshape(shape), keep_mask=True)
    first, count = _brute_first(ref, cus, tuple(shape))
    assert res.first_index == first
    assert res.mismatches == count
    assert res.mismatch_mask.tolist() == (torch.tensor(ref) != torch.tensor(cus)).reshape(shape).tolist()
    if first is not None:
        assert res.reference == torch.tensor(ref).reshape(shape)[tuple(first)].item()


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.tuples(st.floats(-4, 4, width=32), st.floats(-4, 4, width=32)),
                       min_size=1, max_size=12))
@pytest.mark.property
def test_float_mismatch_count_matches_formula(values):
    ref = torch.tensor([a for a, _ in values], dtype=torch.float64)
    cus = torch.tensor([b for _, b in values], dtype=torch.float64)
    res = d(ref, cus, rtol=0.01, atol=0.001)
    expected = [abs(a - b) > 0.001 + 0.01 * abs(a) for a, b in values]
    assert res.mismatches == sum(expected)
    assert res.first_index == ([expected.index(True)] if any(expected) else None)


# ----------------------------------------------------------------------------- callbacks / mask

def test_decode_and_sample_of_receive_the_first_index():
    seen = []

    def decode(index):
        seen.append(index)
        return f"codebook {index[0]}, frame {index[1]}"

    ref = torch.zeros(4, 10, dtype=torch.long)
    cus = ref.clone()
    cus[2, 7] = 5
    cus[3, 1] = 5
    res = d(ref, cus, decode=decode, sample_of=lambda i: f"sample-{i[1] // 5}")
    assert seen == [(2, 7)]
    assert res.decoded == "codebook 2, frame 7" and res.sample == "sample-1"


def test_callbacks_not_called_when_equal():
    def boom(_):
        raise AssertionError("must not be called")
    assert d(torch.ones(3), torch.ones(3), decode=boom, sample_of=boom).status == "equal"


def test_mask_kept_only_on_request_and_on_cpu():
    ref = torch.zeros(2, 3)
    cus = torch.zeros(2, 3)
    cus[1, 1] = 1
    assert d(ref, cus).mismatch_mask is None
    mask = d(ref, cus, keep_mask=True).mismatch_mask
    assert mask.dtype == torch.bool and mask.device.type == "cpu"
    assert mask.tolist() == [[False, False, False], [False, True, False]]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_and_cross_device():
    ref = torch.arange(10, device="cuda")
    cus = torch.arange(10)
    cus[4] = 0
    res = d(ref, cus)
    assert res.first_index == [4] and "moved" in res.note
    # floats with NaN/Inf, mixed precision and a kept mask, all on CUDA
    ref = torch.tensor([[1.0, NAN], [INF, 2.0]], device="cuda")
    cus = torch.tensor([[1.0, NAN], [INF, 2.5]], device="cuda", dtype=torch.bfloat16)
    res = d(ref, cus, keep_mask=True)
    assert res.status == "mismatch" and res.first_index == [1, 1] and res.custom == 2.5
    assert res.mismatch_mask.device.type == "cpu" and res.mismatch_mask.tolist() == [[False, False], [False, True]]
    big = torch.randn(1000, 1000, device="cuda")
    other = big.clone()
    other[999, 998] += 1
    res = d(big, other)
    assert res.first_index == [999, 998] and res.mismatches == 1


# ----------------------------------------------------------------------------- JSON

def test_to_json_is_deterministic_and_rounded():
    def make():
        ref = torch.tensor([1.0, 2.0, 3.0])
        cus = torch.tensor([1.0, 2.123456789, NAN])
        return diff_tensors(ref, cus, stage="forward", field="logits", keep_mask=True)

    a, b = make().to_json(), make().to_json()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert "mismatch_mask" not in a
    assert a["custom"] == 2.12346 and a["max_abs"] == 0.123457
    json.loads(json.dumps(a, allow_nan=False))    # no bare NaN/Inf


def test_to_json_nonfinite_floats_are_strings():
    j = d(torch.tensor([0.0]), torch.tensor([1.0]), rtol=0.0, atol=0.0).to_json()
    assert j["max_rel"] == "inf"
    assert jsonable({"x": NAN, "y": -INF}) == {"x": "nan", "y": "-inf"}


def test_jsonable_strips_memory_addresses():
    class Thing:
        pass
    assert "0x" not in jsonable(Thing())


# ----------------------------------------------------------------------------- scalars / mappings

def test_diff_scalars():
    assert diff_scalars("abc", "abc", stage="s", field="f").status == "equal"
    r = diff_scalars("abc", "abd", stage="s", field="f")
    assert r.status == "mismatch" and (r.reference, r.custom) == ("abc", "abd")
    assert diff_scalars(3, 4, stage="s", field="f").status == "mismatch"
    assert diff_scalars(3, 3.0, stage="s", field="f").status == "dtype"
    assert diff_scalars(True, 1, stage="s", field="f").status == "dtype"
    assert diff_scalars(None, 1, stage="s", field="f").status == "missing"
    assert diff_scalars(None, None, stage="s", field="f").status == "equal"
    assert diff_scalars(1.0, 1.0 + 1e-9, stage="s", field="f").status == "equal"
    assert diff_scalars(1.0, 1.1, stage="s", field="f").status == "mismatch"
    assert diff_scalars(1.0, 1.1, stage="s", field="f", rtol=0.2, atol=0.0).status == "equal"
    assert diff_scalars(NAN, NAN, stage="s", field="f").status == "equal"
    r = diff_scalars(1.0, NAN, stage="s", field="f")
    assert r.status == "nonfinite" and r.nan_mismatch == 1
    assert diff_scalars((1, 2), (1, 3), stage="s", field="f").status == "mismatch"
    # tensors are delegated
    assert diff_scalars(torch.tensor(1), torch.tensor(2), stage="s", field="f").first_index == []


def test_diff_mapping_sorted_and_missing():
    ref = {"b": torch.ones(2), "a": torch.zeros(2), "only_ref": torch.ones(1), "n": 3}
    cus = {"a": torch.zeros(2), "b": torch.tensor([1.0, 2.0]), "only_cus": torch.ones(1), "n": 3}
    out = diff_mapping(ref, cus, stage="backward", field_prefix="grad")
    assert [f.field for f in out] == ["grad.a", "grad.b", "grad.n", "grad.only_cus", "grad.only_ref"]
    assert [f.status for f in out] == ["equal", "mismatch", "equal", "missing", "missing"]
    assert out[3].reference is None and out[3].custom is not None
    assert out[4].custom is None and all(f.stage == "backward" for f in out)
    assert [f.field for f in diff_mapping({"x": 1}, {"x": 1}, stage="s")] == ["x"]
