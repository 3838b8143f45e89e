"""Expected differences are derived from declared conventions, never blanket waivers."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

from harness.semantics import audio_layout as AL
from harness.semantics.expectations import Catalogue, Expected, derive
from harness.semantics.overrides import OVERRIDES
from higgs_common.conventions import Conventions, ConventionsError, LossConventions, identity

BOS, EOS = 1024, 1025
REF = importlib.import_module("reference_impl.stages").CONVENTIONS
CUS = importlib.import_module("custom_impl.stages").CONVENTIONS


class _Cfg:
    use_delay_pattern = True


def _all_pairs() -> list[tuple[Conventions, Conventions]]:
    example = importlib.import_module("examples.upstream_defaults.stages").CONVENTIONS
    return [(REF, CUS), (CUS, REF), (REF, example), (example, CUS), (CUS, example)]


@pytest.mark.parametrize("pair", range(5))
def test_every_derived_entry_has_a_transform_or_a_predicate(pair):
    ref, cus = _all_pairs()[pair]
    entries = derive(ref, cus, model_config=_Cfg())
    assert entries, "these pairs differ by design: something must be derived"
    for e in entries:
        assert e.transform is not None or e.holds is not None, e.id
        assert len(e.reason) > 30 and e.stage in {"dataset", "collator", "loss"}
    assert len({e.id for e in entries}) == len(entries)
    Catalogue(entries)     # accepted


def test_overrides_are_pinned_by_predicates():
    for pair, entries in OVERRIDES.items():
        for e in entries:
            assert e.holds is not None and e.transform is None and e.source == "override", (pair, e.id)
            assert e.stage == "config"


def test_catalogue_refuses_a_blanket_waiver():
    with pytest.raises(ValueError, match="blanket"):
        Catalogue([Expected("waiver", "dataset", "input_ids", "layouts differ")])


def test_declaration_checks_are_never_waived():
    cat = Catalogue(derive(REF, CUS, model_config=_Cfg()))
    assert cat.lookup("collator", "label_audio_ids") is not None
    assert cat.lookup("collator", "label_audio_ids@custom") is None
    assert cat.lookup("forward", "logits") is None


def test_equal_declarations_derive_nothing():
    assert derive(CUS, CUS, model_config=_Cfg()) == []
    assert derive(REF, REF, model_config=_Cfg()) == []


def test_reasons_name_both_declarations():
    entries = {e.id: e for e in derive(REF, CUS, model_config=_Cfg())}
    assert "False" in entries["delay-pattern-audio-out"].reason and "model_config" in entries["delay-pattern-audio-out"].reason
    assert "bos_first" in entries["audio-label-layout"].reason and "ignore_first" in entries["audio-label-layout"].reason


def test_delay_transform_matches_upstream_delay():
    seg = torch.cat([torch.full((8, 1), BOS), torch.randint(0, 1024, (8, 5)), torch.full((8, 1), EOS)], 1)
    ref, starts = torch.cat([seg, seg], 1), torch.tensor([0, 7])
    entries = {e.field: e for e in derive(REF, CUS, model_config=_Cfg()) if e.stage == "collator"}
    info = {"ref_audio_out_ids": ref, "ref_audio_out_ids_start": starts, "bos": BOS, "eos": EOS}
    out = entries["audio_out_ids"].transform(ref, info)
    assert out.shape == (8, 2 * (7 + 7))
    assert torch.equal(out[:, :14], AL.apply_delay(seg, BOS, EOS))
    assert entries["audio_out_ids_start"].transform(starts, info).tolist() == [0, 14]


def test_label_transform_bos_first_to_ignore_first_delayed_and_back():
    seg = torch.cat([torch.full((2, 1), BOS), torch.tensor([[1, 2], [3, 4]]), torch.full((2, 1), EOS)], 1)
    out = AL.convert_labels(seg, torch.tensor([0]), from_layout="bos_first", from_delay=False,
                            to_layout="ignore_first", to_delay=True, bos=BOS, eos=EOS)
    assert out.tolist() == [[-100, 1, 2, EOS, -100], [-100, -100, 3, 4, EOS]]
    back = AL.convert_labels(out, torch.tensor([0]), from_layout="ignore_first", from_delay=True,
                             to_layout="bos_first", to_delay=False, bos=BOS, eos=EOS)
    assert back.tolist() == seg.tolist()
    untrained = torch.full((2, 4), -100)
    assert AL.convert_labels(untrained, torch.tensor([0]), from_layout="ignore_first", from_delay=False,
                             to_layout="bos_first", to_delay=False, bos=BOS, eos=EOS).tolist() == untrained.tolist()


def test_conventions_reject_contradictions():
    base = dict(voice_prompt="audio_in_slot", trained_turns={"target"}, delay_pattern=True,
                audio_label_layout="ignore_first", mask_audio_out_token_label=False, system_message=lambda r: "s")
    Conventions(**base)
    with pytest.raises(ConventionsError, match="only an assistant turn"):
        Conventions(**{**base, "trained_turns": {"target", "voice_prompt"}})
    with pytest.raises(ConventionsError):
        Conventions(**{**base, "audio_label_layout": "bos-first"})
    with pytest.raises(ConventionsError):
        LossConventions(audio_reduction="median")
    assert dataclasses.replace(CUS, normalize_transcript=identity).normalize_transcript("x") == "x"
