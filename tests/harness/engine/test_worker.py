"""Each side in its own worker process: its own boson_multimodal copy, and a side that raises, hangs
or dies is that side's stage error while the rest of the report is still written."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from harness.engine.worker import WorkerSpec, parse_spec
from higgs_common.stages import HiggsDiffError

MARKER = "HIGGS_DIFF_TEST_MARKER"


def boson_marker() -> str | None:
    """Runs in a worker (`on_side`): the marker constant of the boson_multimodal copy it imported."""
    import boson_multimodal

    return getattr(boson_multimodal, MARKER, None)


def test_spec_syntax():
    assert parse_spec("pkg.stages") == WorkerSpec("pkg.stages")
    spec = parse_spec("module=pkg.stages; python=/venv/bin/python; path=/a:/b; path=/c; timeout=7")
    assert spec == WorkerSpec("pkg.stages", "/venv/bin/python", ("/a", "/b", "/c"), 7.0) and spec.wants_process
    with pytest.raises(HiggsDiffError, match="unknown key 'pyton'"):
        parse_spec("module=pkg.stages;pyton=/x")
    with pytest.raises(HiggsDiffError, match="no module="):
        parse_spec("python=/x")


def test_spec_json_file(tmp_path):
    f = tmp_path / "side.json"
    f.write_text(json.dumps({"module": "pkg.stages", "path": ["/a", "/b"], "timeout": 3}))
    assert parse_spec(str(f)) == WorkerSpec("pkg.stages", None, ("/a", "/b"), 3.0)


@pytest.fixture(scope="module")
def boson_copies(tmp_path_factory):
    """Two copies of the installed boson_multimodal, each with its own marker constant."""
    import boson_multimodal

    src = Path(boson_multimodal.__file__).parent
    out = {}
    for name in ("copy_a", "copy_b"):
        root = tmp_path_factory.mktemp(name)
        shutil.copytree(src, root / "boson_multimodal", ignore=shutil.ignore_patterns("__pycache__"))
        with open(root / "boson_multimodal" / "__init__.py", "a") as fh:
            fh.write(f"\n{MARKER} = {name!r}\n")
        out[name] = root
    return out


@pytest.mark.slow
def test_two_boson_copies_in_one_run(boson_copies):
    from harness import compare
    from harness.engine.sides import load_sides
    from harness.engine.worker import on_side

    a, b = boson_copies["copy_a"], boson_copies["copy_b"]
    sides = load_sides(workers={"reference": {"paths": [str(a)]}, "custom": {"paths": [str(b)]}})
    try:
        for role, root in (("reference", a), ("custom", b)):
            side = sides[role]
            assert side.worker["boson_multimodal"].startswith(str(root)), side.worker
            assert on_side(side.module, boson_marker) == root.name.rstrip("0123456789")
    finally:
        for side in sides.values():
            side.module.close()
    import boson_multimodal
    assert getattr(boson_multimodal, MARKER, None) is None          # the harness kept the installed one

    report = compare(stage="collator", samples=2, dataset_samples=2, reference_path=[str(a)], custom_path=[str(b)])
    assert report.verdict == "pass", [(s.stage, s.status, s.error) for s in report.stages]
    workers = {role: report.config["sides"][role]["worker"]["boson_multimodal"] for role in ("reference", "custom")}
    assert workers["reference"].startswith(str(a)) and workers["custom"].startswith(str(b))


def _broken_adapter(folder: Path, body: str) -> Path:
    """The custom pipeline with its collate replaced by `body`."""
    f = folder / "broken_stages.py"
    f.write_text(textwrap.dedent('''
        import os, time
        from custom_impl import stages as _base
        from higgs_common.stages import REQUIRED_CONTRACT
        for _n in REQUIRED_CONTRACT + ("VERSION", "FAULTS"):
            globals()[_n] = getattr(_base, _n)
        NAME = "broken"

        def collate(items, ctx):
    ''') + textwrap.indent(textwrap.dedent(body), "    "))
    return f


@pytest.mark.slow
@pytest.mark.parametrize("body, timeout, words", [
    ("raise ValueError('collator exploded on purpose')\n", 600, ["ValueError", "collator exploded on purpose",
                                                               "Traceback", "broken_stages.py"]),
    ("time.sleep(600)\n", 8, ["side timeout", "was killed"]),
    ("os._exit(3)\n", 600, ["process ended", "exit status 3"]),
], ids=["raises", "hangs", "dies"])
def test_a_failing_side_is_its_stage_error(tmp_path, body, timeout, words):
    from harness.compare import main

    adapter = _broken_adapter(tmp_path, body)
    out = tmp_path / "report"
    rc = main(["--custom", str(adapter), "--custom-path", str(tmp_path), "--side-timeout", str(timeout),
               "--samples", "2", "--dataset-samples", "2", "--ddp-world-size", "0", "--quiet", "--out", str(out)])
    assert rc == 1
    report = json.loads((out / "report.json").read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["dataset"]["status"] != "error"
    assert stages["collator"]["status"] == "error"
    for word in words:
        assert word in stages["collator"]["error"], stages["collator"]["error"]
    assert "custom side" in stages["collator"]["error"]
    # the data flow stops; config (not in the flow) still runs, in a fresh worker after a kill
    assert stages["config"]["status"] != "error", stages["config"]["error"]
    assert (out / "report.md").is_file() and (out / "report.html").is_file()


@pytest.mark.slow
def test_a_sides_own_functions_are_called_in_its_worker(tmp_path, records):
    """A convention function defined in a checkout the harness cannot import runs in the worker."""
    from harness.engine.sides import load_side
    from higgs_common.conventions import function_name

    (tmp_path / "own_stages_xyz.py").write_text(textwrap.dedent('''
        import dataclasses, os
        from custom_impl import stages as _base
        from higgs_common.stages import REQUIRED_CONTRACT
        for _n in REQUIRED_CONTRACT + ("VERSION", "FAULTS"):
            globals()[_n] = getattr(_base, _n)
        NAME = "own"

        def my_system_message(record):
            return f"pid {os.getpid()} speaks {record.speaker}"

        CONVENTIONS = dataclasses.replace(_base.CONVENTIONS, system_message=my_system_message)
    '''))
    side = load_side("own_stages_xyz", "custom", paths=[str(tmp_path)])
    try:
        message = side.conventions.system_message(records[0])
        assert message == f"pid {side.worker['pid']} speaks {records[0].speaker}"
        assert function_name(side.conventions.system_message) == "own_stages_xyz.my_system_message"
        with pytest.raises(ImportError):
            import own_stages_xyz  # noqa: F401  - the harness's own process cannot import it
    finally:
        side.module.close()
