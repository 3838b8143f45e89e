"""The relation engine on values built from known transformations, and negatives where none holds."""

from __future__ import annotations

import torch

from harness.explain import relations as R

AXES = ("codebook", "frame")


def _ints(*shape: int, seed: int = 0, high: int = 1024) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


def _floats(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_absent_and_zero():
    assert R.infer(_floats(3), None).kind == "absent"
    rel = R.infer(_floats(3, 4), torch.zeros(3, 4))
    assert rel.kind == "zero" and rel.details["side"] == "custom"


def test_shift_along_named_axis_both_directions():
    ref = _ints(8, 20)
    left = torch.cat([ref[:, 1:], torch.full((8, 1), -100)], dim=1)     # custom[t] = ref[t + 1]
    rel = R.infer(ref, left, axes=AXES)
    assert (rel.kind, rel.axis, rel.details["k"]) == ("shift", "frame", -1)
    right = torch.cat([torch.full((8, 2), 7), ref[:, :-2]], dim=1)
    rel = R.infer(ref, right, axes=AXES)
    assert (rel.kind, rel.details["k"]) == ("shift", 2) and "right" in rel.words


def test_permutation_of_codebook_rows():
    ref = _ints(8, 20)
    order = [1, 0, 2, 3, 4, 5, 7, 6]
    rel = R.infer(ref, ref[order], axes=AXES)
    assert rel.kind == "permutation" and rel.axis == "codebook" and rel.details["order"] == order


def test_scale_matches_named_sources():
    ref = _floats(16, 4)
    ctx = R.Context(scale_sources={"num_codebooks": 8.0, "grad_accum": 2.0})
    rel = R.infer(ref, ref * 8, ctx=ctx)
    assert rel.kind == "scale" and rel.details["factor"] == 8.0 and "num_codebooks" in rel.details["sources"]
    rel = R.infer(ref, ref * 0.5, ctx=ctx)
    assert rel.details["sources"] == ["1/grad_accum"]


def test_offset_sign_flip_and_transpose():
    ref = _floats(5, 7)
    assert R.infer(ref, ref + 0.25).kind == "offset"
    assert R.infer(ref, -ref).kind == "sign_flip"
    assert R.infer(ref, ref.T.contiguous(), axes=AXES).kind == "transpose"
    ids = _ints(4, 9)
    rel = R.infer(ids, ids + 3)
    assert rel.kind == "offset" and rel.details["offset"] == 3


def test_truncation_and_extension_name_what_changed():
    ref = torch.cat([_ints(8, 10), torch.full((8, 1), 1025)], dim=1)
    ctx = R.Context(special_ids={1025: "the stream EOS"})
    rel = R.infer(ref, ref[:, :-1], axes=AXES, ctx=ctx)
    assert (rel.kind, rel.axis, rel.details["k"], rel.details["where"]) == ("truncation", "frame", 1, "end")
    assert "stream EOS" in rel.words
    rel = R.infer(ref[:, :-1], ref, axes=AXES, ctx=ctx)
    assert rel.kind == "extension"


def test_masked_subset_names_token_kinds():
    ref = _ints(2, 12, high=500)
    cus = ref.clone()
    cus[:, -1] = -100
    kinds = R.Context(kind_of=lambda idx: "<|eot_id|> of the assistant turn (target)" if idx[-1] == 11 else "text")
    rel = R.infer(ref, cus, axes=("sample", "position"), ctx=kinds)
    assert rel.kind == "masked" and rel.details["count"] == 2 and "eot" in rel.words


def test_unmasked_and_replaced_by_named_id():
    ref = torch.full((10,), -100)
    ref[5:] = _ints(5, high=400)
    cus = ref.clone()
    cus[:2] = _ints(2, seed=3, high=400)
    assert R.infer(ref, cus).kind == "unmasked"
    cus = ref.clone()
    cus[[6, 8]] = 497
    rel = R.infer(ref, cus, ctx=R.Context(special_ids={497: "pad"}))
    assert rel.kind == "replaced" and rel.details["name"] == "pad"


def test_dtype_round_trip_bf16_with_released_code_range():
    codes = torch.arange(256, 1024, dtype=torch.float32)          # codes >= 256 are not exact in bf16
    rel = R.infer(codes, codes.to(torch.bfloat16).to(torch.float32))
    assert rel.kind == "dtype_roundtrip" and rel.details["dtype"] == "bfloat16"


def test_nonfinite_onset():
    ref = _floats(4, 6)
    cus = ref.clone()
    cus[2, 3] = float("nan")
    rel = R.infer(ref, cus, axes=("row", "col"))
    assert rel.kind == "nonfinite_onset" and rel.details["first_index"] == [2, 3]


def test_reduction_order_noise_is_named_as_such():
    ref = _floats(1000)
    cus = ref * (1 + 1e-7 * _floats(1000, seed=1))
    assert R.infer(ref, cus, ctx=R.Context(rtol=0.0, atol=0.0)).kind == "reduction_order"


def test_strings_say_what_was_cut():
    rel = R.infer("Hello there.", "Hello there")
    assert rel.kind == "truncation" and rel.details["reference_part"] == "."


def test_two_names_are_not_diffed_character_by_character():
    rel = R.infer("next_frame", "none")
    assert rel.kind == "replaced" and rel.words == "'next_frame' on the reference side, 'none' on the custom side"
    rel = R.infer("Generate audio now.", "Generate speech now.")
    assert "'audio' on the reference side is 'speech'" in rel.words


def test_no_relation_is_said_plainly_with_localisation():
    ref = _floats(8, 20)
    cus = ref.clone()
    cus[3] = _floats(20, seed=9)
    rel = R.infer(ref, cus, axes=AXES)
    assert rel.kind == "none" and "no simple relation" in rel.words and "only codebook 3" in rel.words


def test_negatives_random_values_get_no_structured_relation():
    for seed in range(5):
        ref, cus = _floats(6, 9, seed=seed), _floats(6, 9, seed=seed + 100)
        assert R.infer(ref, cus, axes=AXES).kind == "none"
        a, b = _ints(6, 9, seed=seed), _ints(6, 9, seed=seed + 100)
        assert R.infer(a, b, axes=AXES).kind == "none"
