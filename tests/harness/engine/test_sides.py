"""Adapters by SPEC: module paths, files inside packages, standalone files; clear errors."""

from __future__ import annotations

import textwrap

import pytest

from harness.engine.sides import AdapterError, DEFAULT_SPECS, load_side, load_sides


def test_defaults_are_the_in_repo_pipelines():
    sides = load_sides()
    assert {r: s.module.__name__ for r, s in sides.items()} == DEFAULT_SPECS
    assert sides["reference"].version and "train-higgs-audio" in sides["reference"].version
    assert sides["custom"].faults()


def test_file_inside_a_package_is_imported_under_its_dotted_name():
    side = load_side("examples/upstream_defaults/stages.py", "custom")
    assert side.module.__name__ == "examples.upstream_defaults.stages" and side.name == "upstream-defaults"


def test_standalone_file_and_errors_name_what_is_missing(tmp_path):
    good = tmp_path / "my_stages.py"
    good.write_text("from custom_impl.stages import *  # noqa\nfrom custom_impl.stages import NAME, CONVENTIONS, "
                    "DEFAULT_TRAIN\nNAME = 'mine'\n")
    assert load_side(str(good), "custom").name == "mine"
    bad = tmp_path / "half.py"
    bad.write_text(textwrap.dedent("""
        NAME = "half"
        def dataset(native_path, ctx):
            return []
    """))
    with pytest.raises(AdapterError, match="missing .*CONVENTIONS"):
        load_side(str(bad), "custom")
    with pytest.raises(AdapterError, match="not found"):
        load_side("no_such_pkg.stages", "reference")
    with pytest.raises(AdapterError, match="not found"):
        load_side(str(tmp_path / "absent.py"), "reference")
