import pytest

from custom_impl.faults import FAULTS, check_faults, help_text, is_on
from custom_impl.train import parse_args
from higgs_common.stages import UnknownFaultError

EXPECTED = {"reference-audio-as-label": "a", "unmapped-audio-labels": "b", "silent-zero-audio-loss": "c",
            "no-shift": "d", "ddp-unwrapped-forward": "e", "inverted-no-sync": "f", "random-extra-layers": "g"}


def test_registry_has_every_fault_with_letter_stage_and_symptom():
    assert {n: f.letter for n, f in FAULTS.items()} == EXPECTED
    for f in FAULTS.values():
        assert f.stage in {"dataset", "collator", "forward", "loss", "backward", "step", "model"}
        assert f.field and len(f.description) > 60 and f.symptom


def test_unknown_fault_is_rejected():
    with pytest.raises(UnknownFaultError, match="no-such-fault"):
        check_faults(["no-shift", "no-such-fault"])
    with pytest.raises(UnknownFaultError):
        parse_args(["--fault", "no-such-fault"])
    with pytest.raises(UnknownFaultError):
        is_on(frozenset(), "typo-fault")


def test_cli_lists_faults_and_accepts_repeats(capsys):
    args = parse_args(["--fault", "no-shift", "--fault", "inverted-no-sync"])
    assert args.fault == ["inverted-no-sync", "no-shift"]
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    for name, f in FAULTS.items():
        assert name in out
    assert "symptom" in help_text()
