"""Checkout SPECs (`NAME=PATH`) and checkout imports: parsing, errors that name what is missing."""

from __future__ import annotations

import sys

import pytest

from adapters.checkout import CheckoutError, find_on_sys_path, import_checkout, require_checkout
from harness.engine.sides import AdapterError, checkout_spec, load_side


def test_a_builtin_name_selects_its_adapter_module_and_resolves_the_path(tmp_path):
    assert checkout_spec(f"train-higgs-audio={tmp_path}") == ("adapters.train_higgs_audio", str(tmp_path.resolve()))
    assert checkout_spec(f"mypkg/stages.py={tmp_path}") == ("mypkg/stages.py", str(tmp_path.resolve()))


@pytest.mark.parametrize("spec", ["reference_impl.stages", "module=reference_impl.stages;path=/x",
                                  "module=reference_impl.stages", "path=/x"])
def test_module_paths_and_worker_specs_are_not_checkout_specs(spec):
    assert checkout_spec(spec) is None


def test_a_path_that_is_not_the_checkout_is_a_clear_error(tmp_path):
    with pytest.raises(CheckoutError, match="trainer/trainer_ddp.py.*HIGGS_DIFF_TRAIN_HIGGS_AUDIO"):
        require_checkout(tmp_path, ["trainer/trainer_ddp.py"], "HIGGS_DIFF_TRAIN_HIGGS_AUDIO")
    with pytest.raises(AdapterError, match="not the expected checkout"):
        load_side(f"train-higgs-audio={tmp_path}", "reference", isolation="inline")


def test_a_module_without_configure_takes_no_path(tmp_path):
    with pytest.raises(AdapterError, match="no configure"):
        load_side(f"reference_impl.stages={tmp_path}", "reference", isolation="inline")


def _fake_checkout(root, marker: str):
    pkg = root / "boson_multimodal"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"WHO = {marker!r}\n")
    (root / "trainer").mkdir()
    (root / "trainer" / "script.py").write_text("import boson_multimodal\nWHO = boson_multimodal.WHO\n")
    return root


def test_the_checkout_gets_its_vendored_package_and_the_installed_one_stays(tmp_path):
    import boson_multimodal
    installed = boson_multimodal
    root = _fake_checkout(tmp_path / "co", "vendored")
    mods = import_checkout(root, ["trainer.script"], namespace="test_checkout_ns")
    assert mods["trainer.script"].WHO == "vendored"
    assert sys.modules["boson_multimodal"] is installed and "trainer.script" not in sys.modules
    assert find_on_sys_path(["trainer/script.py"]) is None


def test_a_vendored_package_that_imports_itself_lazily_is_refused_in_process(tmp_path):
    root = _fake_checkout(tmp_path / "co", "vendored")
    (root / "boson_multimodal" / "lazy.py").write_text("def f():\n    from boson_multimodal import WHO\n    return WHO\n")
    with pytest.raises(CheckoutError, match="own worker"):
        import_checkout(root, ["trainer.script"], namespace="test_checkout_lazy")
