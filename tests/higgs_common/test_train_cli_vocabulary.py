"""Both training CLIs name the settings they share the same way (higgs_common.train_cli), keep the
other spelling as an alias, and say in --help what their defaults train."""

from __future__ import annotations

import pytest

from custom_impl import train as custom_train
from reference_impl import train as reference_train

CLIS = {"reference": reference_train.parse_args, "custom": custom_train.parse_args}
# (canonical option, alias, value, destination)
SHARED = [("--learning-rate", "--lr", "0.01", "learning_rate"),
          ("--batch-size", "--per-device-train-batch-size", "3", "batch_size"),
          ("--warmup-steps", None, "5", "warmup_steps"),
          ("--max-steps", None, "7", "max_steps"),
          ("--seed", None, "11", "seed"),
          ("--lora-dropout", None, "0.0", "lora_dropout")]


@pytest.mark.parametrize("cli", sorted(CLIS))
@pytest.mark.parametrize("option, alias, value, dest", SHARED)
def test_shared_option_and_its_alias_set_the_same_setting(cli, option, alias, value, dest):
    parse = CLIS[cli]
    got = getattr(parse([option, value]), dest)
    assert str(got) == value or float(got) == float(value)
    if alias is not None:
        assert getattr(parse([alias, value]), dest) == got


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_lora_switches_are_one_setting(cli):
    parse = CLIS[cli]
    assert parse(["--use-lora"]).use_lora is True
    assert parse(["--full-finetune"]).use_lora is False
    with pytest.raises(SystemExit):
        parse(["--use-lora", "--full-finetune"])


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_a_dropout_outside_zero_to_one_is_refused_naming_the_option(cli, capsys):
    with pytest.raises(SystemExit) as exc:
        CLIS[cli](["--lora-dropout", "1.5"])
    assert exc.value.code == 2 and "--lora-dropout 1.5" in capsys.readouterr().err


def test_defaults_are_each_pipelines_own():
    assert reference_train.parse_args([]).use_lora is False     # train-higgs-audio: LoRA is opt-in
    assert custom_train.parse_args([]).use_lora is True
    assert custom_train.parse_args(["--gradient-accumulation-steps", "4"]).grad_accum == 4


@pytest.mark.parametrize("cli, words", [
    ("reference", ("what the defaults train", "single_speaker_smart_voice", "zero_shot_voice_cloning")),
    ("custom", ("what the defaults train", "zero-shot voice-cloning task the harness compares")),
])
def test_help_says_what_the_defaults_train(cli, words, capsys):
    with pytest.raises(SystemExit):
        CLIS[cli](["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for w in words:
        assert w in text, w
