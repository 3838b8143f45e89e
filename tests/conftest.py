"""Shared fixtures: the tiny offline assets, a StageContext over them, and the sample manifest.

Hypothesis profiles: ``ci`` (default; derandomized, 25 examples) and ``thorough`` (500 examples),
chosen with the environment variable HYPOTHESIS_PROFILE.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25, print_blob=True)
settings.register_profile("thorough", max_examples=500, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def assets():
    """The default tiny checkpoint (built into <repo>/.cache/assets on first use)."""
    from higgs_common.assets import ensure_default_assets

    return ensure_default_assets()


@pytest.fixture(scope="session")
def ctx(assets):
    """A CPU StageContext over the default tiny assets and the default code cache."""
    from higgs_common.context import build_context

    return build_context(assets.model, assets.audio_tokenizer)


@pytest.fixture(scope="session")
def records():
    """The canonical sample records of data/manifest.jsonl (skipped when data/ is absent)."""
    from higgs_common import DEFAULT_MANIFEST
    from higgs_common.manifest import load_manifest

    if not DEFAULT_MANIFEST.is_file():
        pytest.skip(f"{DEFAULT_MANIFEST} is missing")
    return load_manifest(DEFAULT_MANIFEST)
