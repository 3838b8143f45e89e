"""`custom_impl.train.parse_args` / `train_config`: command-line options that reach the TrainConfig."""

from __future__ import annotations

from custom_impl.stages import DEFAULT_TRAIN
from custom_impl.train import TRAIN_ARGS, parse_args, train_config


def test_lora_dropout_reaches_the_train_config():
    assert train_config(parse_args([]), tiny=True).lora_dropout == DEFAULT_TRAIN.lora_dropout == 0.05
    assert train_config(parse_args(["--lora-dropout", "0"]), tiny=True).lora_dropout == 0.0
    assert "lora_dropout" in TRAIN_ARGS                      # compared on resume through the TrainConfig
