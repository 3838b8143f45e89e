"""Fixtures of the trace tests: the toy trainer, traced once per (bug, options) and cached per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.trace.run import run_traced

TOY = Path(__file__).with_name("toy_train.py")


def toy_command(*args: str) -> list[str]:
    return [sys.executable, str(TOY), *args]


@pytest.fixture(scope="session")
def toy_trace(tmp_path_factory):
    """toy_trace(*args, steps=3, layers=False) -> trace folder of the toy trainer run with `args` (each distinct
    run made once)."""
    cache: dict[tuple[str, ...], Path] = {}
    root = tmp_path_factory.mktemp("toy-traces")

    def make(*args: str, steps: int = 3, layers: bool = False) -> Path:
        key = (*args, f"steps={steps}", f"layers={layers}")
        if key not in cache:
            out = root / f"t{len(cache)}"
            code = run_traced(toy_command(*args, "--output-dir", str(out) + "-run"), out, steps=steps, layers=layers,
                              echo=False)
            assert (out / "trace.json").is_file(), (out / "command.log").read_text()
            cache[key] = out
            cache[key + ("code",)] = code   # type: ignore[operator]
        return cache[key]
    return make
