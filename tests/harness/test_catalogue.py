"""The catalogue's transforms must turn reference values into exactly what custom produces."""

import torch

from harness.semantics import catalogue as C
from harness.semantics import projections as P

BOS, EOS = 32, 33


def _info(ref_ids, starts, **kw):
    return {"ref_audio_out_ids": ref_ids, "ref_audio_out_ids_start": starts, "bos": BOS, "eos": EOS,
            "custom_delayed": True, **kw}


def test_every_entry_names_stage_field_and_reason():
    ids = [e.id for e in C.CATALOGUE]
    assert len(ids) == len(set(ids))
    for e in C.CATALOGUE:
        assert e.stage in {"dataset", "collator", "forward", "loss", "backward", "step"}
        assert e.field and len(e.reason) > 20
        assert e.to_json()["check"] in {"transform", "predicate", "by-design"}


def test_delay_transform_matches_upstream_delay():
    seg = torch.cat([torch.full((4, 1), BOS), torch.randint(0, 32, (4, 5)), torch.full((4, 1), EOS)], 1)
    ref = torch.cat([seg, seg], 1)
    starts = torch.tensor([0, 7])
    out = C.lookup("collator", "audio_out_ids").transform(ref, _info(ref, starts))
    assert out.shape == (4, 2 * (7 + 3))
    assert torch.equal(out[:, :10], P.apply_delay(seg, BOS, EOS))
    new_starts = C.lookup("collator", "audio_out_ids_start").transform(starts, _info(ref, starts))
    assert new_starts.tolist() == [0, 10]


def test_label_transform_masks_bos_then_delays():
    seg = torch.cat([torch.full((2, 1), BOS), torch.tensor([[1, 2], [3, 4]]), torch.full((2, 1), EOS)], 1)
    out = C.lookup("collator", "label_audio_ids").transform(seg, _info(seg, torch.tensor([0])))
    assert out.tolist() == [[-100, 1, 2, EOS, -100], [-100, -100, 3, 4, EOS]]


def test_loss_transforms_reduce_reference_ce_over_custom_positions():
    nan = float("nan")
    ref_ce = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])          # reference scores every frame
    cus_ce = torch.tensor([[nan, nan], [3.0, 4.0], [5.0, 6.0]])          # custom: not the segment's BOS
    info = {"ref_audio_ce": ref_ce, "cus_audio_ce": cus_ce, "ref_text": torch.tensor(1.5)}
    per_cb = C.lookup("loss", "per_codebook").transform(None, info)
    assert per_cb.tolist() == [4.0, 5.0]
    assert float(C.lookup("loss", "audio").transform(None, info)) == 4.5
    assert float(C.lookup("loss", "total").transform(None, info)) == 6.0
    assert C.lookup("loss", "audio").transform(None, {"ref_audio_ce": ref_ce, "cus_audio_ce": None}) is None


def test_uncatalogued_fields_are_not_covered():
    assert C.lookup("forward", "logits") is None
    assert C.lookup("dataset", "target_audio_codes") is None
