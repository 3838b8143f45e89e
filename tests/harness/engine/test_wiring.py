"""The config stage's wiring probe (`harness.engine.wiring`): what build_model builds from a recipe."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch

from harness.engine import wiring

SPECS = ("reference_impl.stages", "custom_impl.stages", "examples.upstream_defaults.stages")


@pytest.mark.parametrize("spec", SPECS)
def test_in_repo_adapters_build_what_their_recipe_asks(ctx, spec):
    mod = importlib.import_module(spec)
    info = wiring.probe(mod, ctx, mod.DEFAULT_TRAIN)
    assert info["built"] == info["requested"], info
    assert info["layers"] > 0


def _custom():
    return importlib.import_module("custom_impl.stages")


def test_a_dropped_lora_argument_shows(ctx):
    real = _custom()

    def drops_dropout(c, train):
        return real.build_model(c, train.replace(lora_dropout=0.0))

    info = wiring.probe(SimpleNamespace(build_model=drops_dropout), ctx, real.DEFAULT_TRAIN)
    assert info["requested"]["dropout"] == [0.05] and info["built"]["dropout"] == [0.0]
    assert info["built"]["r"] == info["requested"]["r"]


def test_a_target_name_that_matches_nothing_shows(ctx):
    real = _custom()
    recipe = real.DEFAULT_TRAIN.replace(lora_target_modules=("q_proj", "k_proj", "v_proj", "out_proj"))
    info = wiring.probe(real, ctx, recipe)
    assert "out_proj" in info["requested"]["targets"] and "out_proj" not in info["built"]["targets"]


def test_an_init_that_ignores_the_seed_shows(ctx):
    real = _custom()

    def unseeded(c, train):
        ambient = torch.get_rng_state()          # what the RNG held before the call
        model = real.build_model(c, train)
        torch.set_rng_state(ambient)             # as if build_model had never seeded
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_A" in n:
                    torch.nn.init.kaiming_uniform_(p, a=5 ** 0.5)       # ambient RNG: whatever ran before
        return model

    info = wiring.probe(SimpleNamespace(build_model=unseeded), ctx, real.DEFAULT_TRAIN)
    assert info["built"]["init_repeatable"] is False and "lora_A" in info["first_difference"]


def test_probe_config_forces_lora_on_a_full_finetuning_recipe():
    ref = importlib.import_module("reference_impl.stages")
    assert wiring.probe_config(ref.DEFAULT_TRAIN.replace(use_lora=False)).use_lora
