"""`harness.compare` is a plain function whose parameters are the command line's options; the old
keyword names still work, with a DeprecationWarning; the one-time asset build announces itself."""

from __future__ import annotations

import inspect
import logging

import pytest

import harness
from harness import compare


def test_compare_is_a_function_with_the_cli_vocabulary():
    assert inspect.isfunction(compare)
    params = inspect.signature(compare).parameters
    for name in ("reference", "custom", "stage", "mode", "data", "samples", "fault", "device", "model",
                 "audio_tokenizer", "seed", "tolerance", "precision", "ddp_world_size", "skip_bad_samples"):
        assert name in params, name
    assert "Returns" in compare.__doc__ and "Raises" in compare.__doc__


def test_importing_the_command_line_module_keeps_the_function():
    import harness.compare as _cli  # noqa: F401  (the submodule: would rebind harness.compare without the guard)
    from harness.compare import main

    assert harness.compare is compare and inspect.isfunction(harness.compare)
    assert callable(compare.main) and callable(main)


def test_every_api_parameter_is_a_cli_option():
    from harness.compare import build_parser

    options = {a.dest for a in build_parser()._actions}
    api_only = {"reference", "custom", "progress", "options", "perturb", "grad_noise", "run_name", "deprecated"}
    missing = [p for p in inspect.signature(compare).parameters if p not in options and p not in api_only]
    assert not missing, f"API parameters with no --option of the same name: {missing}"


def test_deprecated_aliases_warn_and_conflicts_are_errors():
    from harness.api import _deprecated_aliases

    with pytest.warns(DeprecationWarning, match="use fault="):
        assert _deprecated_aliases({"faults": ["no-shift"]}, (), None) == (["no-shift"], None)
    with pytest.warns(DeprecationWarning, match="use tolerance="):
        assert _deprecated_aliases({"tolerances": {"x": (1.0, 0.0)}}, (), None) == ((), {"x": (1.0, 0.0)})
    with pytest.raises(TypeError, match="both fault= and its deprecated alias faults="):
        _deprecated_aliases({"faults": ["a"]}, ["b"], None)
    with pytest.raises(TypeError, match="unexpected keyword"):
        compare(stages="all")


def test_first_use_asset_build_is_announced(tmp_path, monkeypatch, caplog):
    from higgs_common.assets import build, paths

    built = paths.AssetPaths.at(tmp_path / "tiny-seed0")
    monkeypatch.setattr(paths, "default_assets_dir", lambda size="tiny", seed=0: tmp_path / f"{size}-seed{seed}")
    monkeypatch.setattr(build, "build_assets", lambda root, size, seed: built)
    with caplog.at_level(logging.WARNING, logger="higgs_common.assets"):
        assert paths.ensure_default_assets() == built
    text = caplog.text
    assert "building the default tiny checkpoint" in text and "first use only" in text and "built the default" in text
