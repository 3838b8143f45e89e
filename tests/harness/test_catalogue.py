"""The catalogue's transforms must turn reference values into exactly what custom produces."""

import torch

from harness import catalogue as C
from harness import projections as P

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


def test_predicates_reject_zero_audio_loss():
    entry = C.lookup("loss", "audio")
    assert entry.holds(torch.tensor(2.0), torch.tensor(1.5), {})
    assert not entry.holds(torch.tensor(2.0), torch.tensor(0.0), {})
    assert not entry.holds(torch.tensor(2.0), torch.tensor(float("nan")), {})


def test_uncatalogued_fields_are_not_covered():
    assert C.lookup("forward", "logits") is None
    assert C.lookup("dataset", "target_audio_codes") is None
