"""`custom_impl.train.resolve_data`: which file `--data` loads, and what gets converted."""

from __future__ import annotations

import json
from pathlib import Path

from custom_impl import train
from higgs_common import DEFAULT_MANIFEST
from higgs_common.manifest import load_manifest


def test_default_is_the_shipped_manifest_converted_into_the_run_folder(tmp_path: Path) -> None:
    native = train.resolve_data(None, tmp_path, write=True)
    assert native == tmp_path / "train_chatml.json"
    assert len(json.loads(native.read_text())) == len(load_manifest(DEFAULT_MANIFEST))


def test_a_canonical_manifest_is_converted_and_a_chatml_file_used_as_is(tmp_path: Path) -> None:
    records = load_manifest(DEFAULT_MANIFEST)[:3]
    manifest = tmp_path / "subset.jsonl"                   # absolute audio paths: valid anywhere
    manifest.write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
    native = train.resolve_data(manifest, tmp_path / "run1", write=True)
    assert len(json.loads(native.read_text())) == 3
    assert train.resolve_data(native, tmp_path / "run2", write=True) == native
    assert not (tmp_path / "run2" / "train_chatml.json").exists()


def test_non_writing_ranks_get_the_path_without_writing(tmp_path: Path) -> None:
    assert train.resolve_data(None, tmp_path, write=False) == tmp_path / "train_chatml.json"
    assert not (tmp_path / "train_chatml.json").exists()


def test_copy_probe_name_builds_the_probe_and_converts_it(tmp_path: Path, monkeypatch) -> None:
    from higgs_common.assets import copy_probe

    build = copy_probe.ensure_copy_probe
    small = copy_probe.ProbeSpec(samples=8, frames_per_clip=5)
    monkeypatch.setattr(copy_probe, "ensure_copy_probe", lambda: build(small, tmp_path / "probe"))
    monkeypatch.chdir(tmp_path)                            # no file called copy-probe here
    native = train.resolve_data(Path(train.COPY_PROBE), tmp_path / "run", write=True)
    entries = json.loads(native.read_text())
    assert len(entries) == 8 and (tmp_path / "probe" / "manifest.jsonl").is_file()
