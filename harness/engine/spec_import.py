"""Importing an adapter module from its SPEC (a module path, a .py file, or ``NAME=PATH`` for a
checkout), and reading what it implements: a leaf module, so that both the harness's side loader
(`harness.engine.sides`, which re-exports these names) and the side worker process
(`harness.engine.worker_main`) use it without importing each other.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from higgs_common.stages import REQUIRED_CONTRACT, HiggsDiffError


class AdapterError(HiggsDiffError, ValueError):
    """A SPEC that does not import, or a module that does not implement the stage contract."""


def _dotted_name(path: Path) -> str | None:
    """`a/b/c.py` -> "a.b.c" when a/ and a/b/ are packages under a sys.path entry or the cwd."""
    roots = [Path.cwd().resolve()] + [Path(p).resolve() for p in sys.path if p and Path(p).is_dir()]
    for root in roots:
        try:
            rel = path.resolve().relative_to(root)
        except ValueError:
            continue
        parts = list(rel.with_suffix("").parts)
        pkg = root
        ok = True
        for part in parts[:-1]:
            pkg = pkg / part
            if not (pkg / "__init__.py").is_file():
                ok = False
                break
        if ok and parts:
            return ".".join(parts)
    return None


def import_spec(spec: str) -> ModuleType:
    """Import an adapter module from a module path or a .py file path (module docstring).

    A checkout SPEC ``NAME=PATH`` (`checkout_spec`) imports NAME's module and runs its
    ``configure(PATH)``.
    """
    checkout = checkout_spec(spec)
    if checkout is not None:
        return _import_configured(*checkout)
    as_path = Path(spec)
    if spec.endswith(".py") or as_path.is_file():
        if not as_path.is_file():
            raise AdapterError(f"adapter file not found: {spec}")
        dotted = _dotted_name(as_path)
        if dotted is not None:
            if str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            return _import(dotted, spec)
        name = "higgs_diff_adapter_" + hashlib.sha1(str(as_path.resolve()).encode()).hexdigest()[:12]
        if name in sys.modules:
            return sys.modules[name]
        folder = str(as_path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        loader_spec = importlib.util.spec_from_file_location(name, as_path)
        if loader_spec is None or loader_spec.loader is None:
            raise AdapterError(f"cannot load adapter file {spec}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise AdapterError(f"adapter file {spec} failed to import: {type(exc).__name__}: {exc}") from exc
        return module
    return _import(spec, spec)


WORKER_KEYS: tuple[str, ...] = ("module", "python", "path", "timeout")


def checkout_spec(spec: str) -> tuple[str, str] | None:
    """``NAME=PATH`` -> (adapter module SPEC, checkout PATH); None for any other SPEC.

    NAME is a short name of `adapters.BUILTIN` (``train-higgs-audio``) or an adapter SPEC whose
    module wraps a user's checkout and has ``configure(path)``.  In a worker (the default), PATH
    goes first on the worker's ``sys.path``, so the checkout's vendored ``boson_multimodal`` is the
    one imported; inline, the module's ``configure(PATH)`` runs after import.
    """
    name, sep, path = spec.partition("=")
    if not sep or ";" in spec or name.strip() in WORKER_KEYS:
        return None
    from adapters import BUILTIN
    name = name.strip()
    return BUILTIN.get(name, name), str(Path(path.strip()).expanduser().resolve())


def _import_configured(module_spec: str, path: str) -> ModuleType:
    """An adapter module configured with a checkout path (see `checkout_spec`)."""
    module = import_spec(module_spec)
    name = module_spec
    configure = getattr(module, "configure", None)
    if not callable(configure):
        raise AdapterError(f"adapter {name!r} takes no checkout path (it has no configure(path)); drop '={path}'")
    try:
        configure(path)
    except HiggsDiffError as exc:
        raise AdapterError(f"adapter {name!r}: {exc}") from exc
    return module


def _import(dotted: str, spec: str) -> ModuleType:
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))      # module paths resolve from the working directory, as `python -m`
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        if exc.name and dotted.startswith(exc.name):
            raise AdapterError(f"adapter module {spec!r} not found ({exc})") from exc
        raise


def missing_contract(module: ModuleType) -> list[str]:
    """Names of the contract that `module` lacks (`higgs_common.stages.REQUIRED_CONTRACT`); a
    `forward_and_loss` stands for `forward` and `loss`, `train_step` for `backward` and `step`
    (`harness.engine.fused`)."""
    fused = hasattr(module, "forward_and_loss")
    inline = hasattr(module, "train_step")
    return [name for name in REQUIRED_CONTRACT
            if not hasattr(module, name) and not (fused and name in ("forward", "loss"))
            and not (inline and name in ("backward", "step"))]


def version_of(module: ModuleType) -> str | None:
    """`VERSION`/`__version__` of the module, else its top-level distribution's version, else None."""
    for attr in ("VERSION", "__version__"):
        value = getattr(module, attr, None)
        if isinstance(value, str):
            return value
    top = module.__name__.split(".")[0]
    try:
        from importlib.metadata import PackageNotFoundError, packages_distributions, version
        dists = packages_distributions().get(top) or []
        return version(dists[0]) if dists else None
    except (ImportError, PackageNotFoundError, ValueError):
        return None
