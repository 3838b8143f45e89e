"""Where the offline checkpoint lives, and building it on first use (atomically, under a lock).

Layout of an assets folder (the same as a downloaded release: model + tokenizer in one folder,
the codec in another)::

    <root>/model/            config.json, model.safetensors, tokenizer.json, tokenizer_config.json, ...
    <root>/audio_tokenizer/  config.json, model.pth, semantic_model/config.json
    <root>/build_info.json   what was built, with which seed and builder version (written last)
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from higgs_common import REPO_ROOT

log = logging.getLogger("higgs_common.assets")

ASSETS_ENV = "HIGGS_DIFF_ASSETS"
CODE_CACHE_ENV = "HIGGS_DIFF_CODE_CACHE"
# Bump when the builder's output changes (configs, corpus, calibration): stale caches rebuild.
BUILD_VERSION = 2   # 2: tiny codec with the released discrete sizes (8 x 1024)
BUILD_INFO = "build_info.json"


@dataclass(frozen=True)
class AssetPaths:
    root: Path
    model: Path              # HiggsAudioModel + text tokenizer (from_pretrained folder)
    audio_tokenizer: Path    # codec folder for load_audio_tokenizer

    @classmethod
    def at(cls, root: Path) -> "AssetPaths":
        root = Path(root)
        return cls(root=root, model=root / "model", audio_tokenizer=root / "audio_tokenizer")

    def build_info(self) -> dict | None:
        f = self.root / BUILD_INFO
        return json.loads(f.read_text()) if f.is_file() else None

    def is_complete(self, size: str | None = None, seed: int | None = None) -> bool:
        """True when a finished build of this builder version (and size/seed, if given) is here."""
        info = self.build_info()
        if info is None or info.get("build_version") != BUILD_VERSION:
            return False
        if size is not None and info.get("size") != size:
            return False
        if seed is not None and info.get("seed") != seed:
            return False
        return (self.model / "config.json").is_file() and (self.audio_tokenizer / "model.pth").is_file()


def default_assets_dir(size: str = "tiny", seed: int = 0) -> Path:
    """``$HIGGS_DIFF_ASSETS`` (the embedded default, tiny seed 0, only) if set, else
    ``<repo>/.cache/assets/<size>-seed<seed>``."""
    env = os.environ.get(ASSETS_ENV)
    if env and (size, seed) == ("tiny", 0):
        return Path(env)
    return REPO_ROOT / ".cache" / "assets" / f"{size}-seed{seed}"


def default_code_cache_dir() -> Path:
    """``$HIGGS_DIFF_CODE_CACHE`` if set, else ``<repo>/.cache/codes``."""
    env = os.environ.get(CODE_CACHE_ENV)
    return Path(env) if env else REPO_ROOT / ".cache" / "codes"


@contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """Serialise builders of one folder (parallel test sessions would otherwise all build)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_default_assets(size: str = "tiny", seed: int = 0) -> AssetPaths:
    """Return the default assets, building them first if missing or from an older builder."""
    from higgs_common.assets.build import build_assets   # heavy imports only when building

    root = default_assets_dir(size, seed)
    paths = AssetPaths.at(root)
    if paths.is_complete(size, seed):
        return paths
    with build_lock(root):
        if paths.is_complete(size, seed):   # another process built it while we waited
            return paths
        # A warning, so that it shows without any logging set up (a notebook's first compare() call).
        log.warning("building the default %s checkpoint and audio tokenizer into %s (first use only; "
                    "about a minute on a laptop CPU)", size, root)
        start = time.perf_counter()
        built = build_assets(root, size=size, seed=seed)
        log.warning("built the default %s assets in %.0f s", size, time.perf_counter() - start)
        return built
