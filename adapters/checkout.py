"""Import a user's checkout (scripts plus a vendored `boson_multimodal`) next to the installed one.

Public Higgs Audio training repositories ship their own, often patched, copy of `boson_multimodal`
under the same package name as the installed one, and run their scripts as top-level modules
(`trainer.trainer_ddp`).  When the checkout is a side of its own worker process (its PATH first on
that interpreter's ``sys.path``), `import_checkout` is a plain import.  In a shared interpreter it
imports the checkout's modules with the checkout first on ``sys.path`` and every already-imported
``boson_multimodal`` module set aside, then files the modules it loaded under a private prefix
(``<namespace>.boson_multimodal...``) and puts the installed package back: the checkout's code keeps
the vendored objects it bound at import time, everyone else keeps the installed ones.  This works
for packages that import at module level only (both public pipelines wrapped here do; a function
that imports `boson_multimodal` lazily would get the installed copy: `import_checkout` checks the
vendored sources for such imports and refuses them).

`transformers` registries: a vendored copy registers ``higgs_audio`` with `AutoConfig`/`AutoModel`
again at import; those entries are set aside for the import, the vendored ones dropped and the old
ones put back afterwards, so `AutoConfig` keeps resolving to the installed copy (the checkouts load
their config class directly).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Iterator, Sequence

from higgs_common.stages import HiggsDiffError

_ISOLATED: dict[Path, dict[str, ModuleType]] = {}      # checkout root -> its modules, imported in isolation
_LAZY_IMPORT = re.compile(r"^[ \t]+(from|import)[ \t]+boson_multimodal\b", re.MULTILINE)


class CheckoutError(HiggsDiffError, ValueError):
    """A checkout path that is missing, lacks an expected file, or cannot be imported in isolation."""


def require_checkout(path: Path | str, files: Sequence[str], env_var: str) -> Path:
    """`path` resolved, after checking that each of `files` (relative paths) exists in it."""
    root = Path(path).expanduser().resolve()
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise CheckoutError(f"{root} is not the expected checkout: missing {missing} (give the path of a clone, "
                            f"e.g. via {env_var})")
    return root


def _owned(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@contextmanager
def _registries_set_aside(model_type: str) -> Iterator[None]:
    """Hide `model_type` from AutoConfig/AutoModel while a vendored copy registers it; restore after."""
    from transformers import AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    cfg_extra = CONFIG_MAPPING._extra_content
    model_extra = AutoModel._model_mapping._extra_content
    saved_cfg = cfg_extra.pop(model_type, None)
    saved_models = {k: model_extra.pop(k) for k in list(model_extra) if getattr(k, "model_type", None) == model_type}
    try:
        yield
    finally:
        cfg_extra.pop(model_type, None)
        for k in [k for k in list(model_extra) if getattr(k, "model_type", None) == model_type]:
            del model_extra[k]
        if saved_cfg is not None:
            cfg_extra[model_type] = saved_cfg
        model_extra.update(saved_models)


def resolves_into(package: str, root: Path) -> bool:
    """Whether ``import <package>`` here gives the copy inside `root` (already imported or first on sys.path)."""
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    origin = getattr(found, "origin", None) if found is not None else None
    return origin is not None and Path(origin).resolve().is_relative_to(Path(root).resolve())


def find_on_sys_path(files: Sequence[str]) -> Path | None:
    """The first ``sys.path`` folder that holds every one of `files` (a checkout put there by a worker)."""
    for entry in sys.path:
        if entry and all((Path(entry) / f).is_file() for f in files):
            return Path(entry).resolve()
    return None


def import_checkout(root: Path, modules: Sequence[str], *, namespace: str, vendored: str = "boson_multimodal",
                    model_type: str = "higgs_audio") -> dict[str, ModuleType]:
    """Import `modules` (dotted names inside `root`) with `root`'s vendored package; {name: module}.

    Raises CheckoutError when the vendored package imports itself lazily (see module docstring) or
    a module fails to import (the original exception chained).
    """
    vendored_dir = root / vendored
    if vendored_dir.is_dir():
        lazy = [str(p.relative_to(root)) for p in vendored_dir.rglob("*.py") if _LAZY_IMPORT.search(p.read_text(errors="replace"))]
        if lazy:
            raise CheckoutError(f"{root}: {lazy} import {vendored} inside functions; run this side in its own worker "
                                f"process instead of in-process isolation")
    if resolves_into(vendored, root):
        return {m: importlib.import_module(m) for m in modules}     # own worker: plain import
    tops = sorted({m.split(".")[0] for m in modules} | {vendored})
    set_aside = {k: sys.modules.pop(k) for k in list(sys.modules) if _owned(k, tops)}
    sys.path.insert(0, str(root))
    loaded: dict[str, ModuleType] = {}
    try:
        with _registries_set_aside(model_type):
            for m in modules:
                try:
                    loaded[m] = importlib.import_module(m)
                except Exception as exc:
                    raise CheckoutError(f"{root}: importing {m} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(root))
        own = {k: sys.modules.pop(k) for k in list(sys.modules) if _owned(k, tops)}
        for k, m in own.items():
            sys.modules[f"{namespace}.{k}"] = m
        _ISOLATED[Path(root).resolve()] = own
        sys.modules.update(set_aside)
    return loaded


@contextmanager
def activated(root: Path) -> Iterator[None]:
    """While the block runs, the checkout's modules (as `import_checkout` loaded them in isolation)
    stand under their own names in ``sys.modules``, so a function of the checkout that imports
    ``boson_multimodal`` lazily (train-higgs-audio-vi's model wrapper patches the model class that
    way) gets the vendored copy.  A no-op when the checkout was imported plainly (own worker)."""
    own = _ISOLATED.get(Path(root).resolve())
    if not own:
        yield
        return
    saved = {k: sys.modules[k] for k in own if k in sys.modules}
    sys.modules.update(own)
    try:
        yield
    finally:
        for k in own:
            sys.modules.pop(k, None)
        sys.modules.update(saved)
