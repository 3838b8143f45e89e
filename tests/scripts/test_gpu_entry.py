"""scripts/gpu.sh and scripts/gpu_wheels.py on the CPU: the wheel builder fails loudly, naming every
wheel it could not build or find; the suite runner refuses unknown suites and existing results folders.

pip is replaced by a fake (`$HIGGS_GPU_PIP`, tests/scripts/fake_pip.py) so no test touches a registry.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GPU_SH = REPO / "scripts" / "gpu.sh"
BUILDER = REPO / "scripts" / "gpu_wheels.py"
FAKE_PIP = f"{sys.executable} {Path(__file__).with_name('fake_pip.py')}"
HASH = "--hash=sha256:" + "0" * 64


def _builder():
    spec = importlib.util.spec_from_file_location("gpu_wheels", BUILDER)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_wheels"] = module      # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _image(tmp_path: Path, extra: str = "", override: str = "") -> Path:
    path = tmp_path / "image.toml"
    path.write_text(f'python-version = "3.12"\nprovided = ["numpy", "transformers"]\noverride = [{override}]\n'
                    f'host-only = ["nox"]\nextra = [{extra}]\n')
    return path


def _run_builder(tmp_path: Path, lock_text: str, *, extra: str = "", fail: str = "") -> subprocess.CompletedProcess:
    lock = tmp_path / "test.lock"
    lock.write_text(lock_text)
    env = dict(os.environ, HIGGS_GPU_PIP=FAKE_PIP, FAKE_PIP_FAIL=fail)
    override = '"transformers"' if "transformers==" in lock_text else ""
    return subprocess.run([sys.executable, str(BUILDER), "--out", str(tmp_path / "wheels"), "--lock", str(lock),
                           "--image", str(_image(tmp_path, extra, override))], capture_output=True, text=True, env=env)


def test_builder_names_every_wheel_it_could_not_build_and_leaves_no_folder(tmp_path):
    proc = _run_builder(tmp_path, f"dacite==1.9.2 \\\n    {HASH}\nno-such-package-xyz==1.0 \\\n    {HASH}\n"
                                  f"transformers==4.46.3 \\\n    {HASH}\n", extra='"also-missing==2.0"')
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 wheel(s) could not be built or found" in proc.stderr
    assert "no-such-package-xyz==1.0 (from test.lock)" in proc.stderr
    assert "also-missing==2.0 (from gpu_image.toml extra)" in proc.stderr
    assert "No matching distribution" in proc.stderr                  # pip's own reason travels along
    assert not (tmp_path / "wheels").exists()                          # nothing half-built to carry
    assert not list(tmp_path.glob(".wheels.tmp-*"))


def test_builder_refuses_a_compiled_wheel_built_from_an_sdist(tmp_path):
    proc = _run_builder(tmp_path, f"compiled-only==1.0 \\\n    {HASH}\n")
    assert proc.returncode == 1 and "compiled-only==1.0" in proc.stderr and "would not load" in proc.stderr


def test_builder_writes_a_manifest_of_what_it_carries(tmp_path):
    proc = _run_builder(tmp_path, f"dacite==1.9.2 \\\n    {HASH}\nnumpy==2.4.6 \\\n    {HASH}\n"
                                  f"transformers==4.46.3 \\\n    {HASH}\nnox==2026.10.20 \\\n    {HASH}\n"
                                  f"sdist-only==0.3 \\\n    {HASH}\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = (tmp_path / "wheels" / "manifest.txt").read_text().split("\n")
    pins = sorted(line.split()[0] for line in manifest if line)
    # numpy is in the image, nox is host-only; transformers is overridden; sdist-only was built here
    assert pins == ["dacite==1.9.2", "sdist-only==0.3", "transformers==4.46.3"]
    assert all((tmp_path / "wheels" / line.split()[1]).is_file() for line in manifest if line)


def test_builder_rejects_an_unpinned_lock_entry(tmp_path):
    proc = _run_builder(tmp_path, "dacite>=1.0\n")
    assert proc.returncode == 2 and "test.lock:1" in proc.stderr and "not pinned" in proc.stderr


def test_the_real_locks_carry_what_the_image_lacks():
    gw = _builder()
    carry = {p.name: p.version for p in gw.to_carry(gw.DEFAULT_LOCKS, gw.Image.read(gw.DEFAULT_IMAGE))}
    assert carry["transformers"] == "4.46.3" and carry["tokenizers"] == "0.20.3" and carry["peft"] == "0.17.1"
    for name in ("boson-multimodal", "descript-audio-codec", "argbind", "randomname", "julius", "omegaconf",
                 "liger-kernel", "jsonschema"):
        assert name in carry, name
    for name in ("torch", "torchaudio", "triton", "numpy", "nox", "virtualenv"):
        assert name not in carry, name


def _gpu_sh(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(GPU_SH), *args], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, HIGGS_GPU_PIP=FAKE_PIP, **env))


@pytest.mark.parametrize("args", [("bogus",), ("--on-device", "bogus"), ("--prepare",), ("--on-device",)])
def test_runner_refuses_an_unknown_suite(args):
    proc = _gpu_sh(*args)
    assert proc.returncode == 2 and "unknown suite" in proc.stderr and "speed harness tests" in proc.stderr


def test_runner_never_writes_into_an_existing_results_folder(tmp_path):
    committed = "reports/bench/h200-speed"
    before = {p: p.read_bytes() for p in (REPO / committed).rglob("*") if p.is_file()}
    proc = _gpu_sh("--on-device", "speed", GPU_RESULTS_DIR=committed, GPU_WHEELS=str(tmp_path / "none"))
    assert proc.returncode == 2 and "refusing to write into" in proc.stderr
    after = {p: p.read_bytes() for p in (REPO / committed).rglob("*") if p.is_file()}
    assert after == before
    mine = tmp_path / "earlier-run"
    mine.mkdir()
    proc = _gpu_sh("--on-device", "tests", GPU_RESULTS_DIR=str(mine), GPU_WHEELS=str(tmp_path / "none"))
    assert proc.returncode == 2 and list(mine.iterdir()) == []


def test_runner_on_device_stops_when_the_wheels_are_missing(tmp_path):
    res = tmp_path / "res"
    out = tmp_path / "out"
    out.mkdir()
    proc = _gpu_sh("--on-device", "tests", GPU_RESULTS_DIR=str(res), GPU_WHEELS=str(tmp_path / "none"), OUT=str(out))
    assert proc.returncode == 3 and "gpu.sh --prepare tests" in proc.stdout
    assert (res / "summary.md").is_file() and (res / "run.log").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["res.tar.gz", "run.log", "summary.md"]


def test_prepare_builds_the_wheels_and_prints_the_device_command(tmp_path):
    wheels = tmp_path / "wheels"
    proc = _gpu_sh("--prepare", "speed", GPU_WHEELS=str(wheels))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'run(command="bash scripts/gpu.sh --on-device speed"' in proc.stdout
    assert "transformers==4.46.3" in (wheels / "manifest.txt").read_text()


def test_prepare_fails_loudly_naming_the_missing_wheel(tmp_path):
    proc = _gpu_sh("--prepare", "tests", GPU_WHEELS=str(tmp_path / "wheels"), FAKE_PIP_FAIL="liger-kernel")
    assert proc.returncode == 3
    assert "liger-kernel==" in proc.stderr and "FAILED" in proc.stderr
    assert not (tmp_path / "wheels").exists()
