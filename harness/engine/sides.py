"""The two sides of a comparison, each an adapter module that implements the stage contract
(`higgs_common.stages`), given by specification.

A SPEC is a module path (``mypkg.higgs_stages``) or a path to a ``.py`` file.  A file inside a
package directory tree (``__init__.py`` files up to a folder on ``sys.path`` or the working
directory) is imported under its dotted name, so its own relative imports work; any other file is
loaded on its own, with its folder put on ``sys.path``.  This is the single place where the harness
imports pipelines; everything else talks to the contract.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from higgs_common.conventions import Conventions
from higgs_common.stages import REQUIRED_CONTRACT, HiggsDiffError

ROLES: tuple[str, str] = ("reference", "custom")
DEFAULT_SPECS: dict[str, str] = {"reference": "reference_impl.stages", "custom": "custom_impl.stages"}


class AdapterError(HiggsDiffError, ValueError):
    """A SPEC that does not import, or a module that does not implement the stage contract."""


@dataclass(frozen=True)
class Side:
    """One loaded adapter in one role."""

    role: str
    spec: str
    module: ModuleType
    origin: str              # file the module was loaded from
    version: str | None
    worker: dict[str, Any] | None = None   # the side's worker process (None: runs in the harness's process)

    @property
    def name(self) -> str:
        return str(getattr(self.module, "NAME", self.module.__name__))

    @property
    def conventions(self) -> Conventions:
        return self.module.CONVENTIONS

    def intended_differences(self) -> list[tuple[str, str]]:
        """The adapter's `INTENDED_DIFFERENCES` (optional): (pattern, reason) pairs, or a dict
        pattern -> reason.  A pattern is an fnmatch glob over "stage/field" or "field"."""
        raw = getattr(self.module, "INTENDED_DIFFERENCES", None) or ()
        pairs = list(raw.items()) if isinstance(raw, dict) else list(raw)
        for item in pairs:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                raise AdapterError(f"{self.role} adapter {self.spec!r}: INTENDED_DIFFERENCES entries must be "
                                   f"(pattern, reason) strings, got {item!r}")
        return [(str(p), str(r)) for p, r in pairs]

    def faults(self) -> dict[str, Any]:
        """The adapter's named faults (`FAULTS`, optional): name -> object with `stage`, `symptom`."""
        return dict(getattr(self.module, "FAULTS", {}) or {})

    def to_json(self, model_config: Any = None) -> dict[str, Any]:
        out = {"role": self.role, "name": self.name, "spec": self.spec, "module": self.module.__name__,
               "origin": self.origin, "version": self.version,
               "conventions": self.conventions.to_json(model_config)}
        if self.worker is not None:
            out["worker"] = self.worker
        return out


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
    `forward_and_loss` stands for `forward` and `loss` (`harness.engine.fused`)."""
    fused = hasattr(module, "forward_and_loss")
    return [name for name in REQUIRED_CONTRACT
            if not hasattr(module, name) and not (fused and name in ("forward", "loss"))]


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


ISOLATIONS: tuple[str, ...] = ("auto", "process", "inline")


def load_side(spec: str, role: str, *, python: str | None = None, paths: Sequence[str] = (),
              timeout: float | None = None, isolation: str = "auto") -> Side:
    """Import and validate one adapter (raises AdapterError naming what is missing).

    `spec` is a module path, a .py file, or a worker SPEC (`harness.engine.worker.parse_spec`:
    `module=...;python=...;path=...;timeout=...` or a .json file).  isolation "process" runs the side
    in its own worker process (`harness.engine.worker`), "inline" imports it here, "auto" uses a
    worker when an interpreter or import path is given (in the SPEC or by `python`/`paths`).
    """
    if role not in ROLES:
        raise AdapterError(f"role must be one of {ROLES}, got {role!r}")
    if isolation not in ISOLATIONS:
        raise AdapterError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    from harness.engine.worker import RemoteAdapter, WorkerSpec, parse_spec

    checkout = checkout_spec(spec)
    wspec = parse_spec(spec) if checkout is None else WorkerSpec(module=checkout[0], paths=(checkout[1],))
    wspec = dataclasses.replace(wspec, python=python or wspec.python, paths=tuple(paths) + wspec.paths,
                                timeout_s=timeout if timeout is not None else wspec.timeout_s)
    worker = None
    if isolation == "process" or (isolation == "auto" and wspec.wants_process):
        module = RemoteAdapter(wspec, role)
        if checkout is not None:
            # CONVENTIONS crosses by pickle, its functions by reference: the harness's own import of the
            # adapter runs them (a normaliser) and must know the checkout too.
            _import_configured(*checkout)
        d = module.description
        worker = {"python": d["python"], "paths": list(wspec.paths), "pid": d["pid"],
                  "boson_multimodal": d["boson_multimodal"], "timeout_s": module.timeout}
    else:
        if checkout is not None:
            module = _import_configured(*checkout)
        elif wspec.wants_process:
            raise AdapterError(f"{role} side {spec!r}: an interpreter/import path needs isolation 'process' or "
                               f"'auto', not 'inline'")
        else:
            module = import_spec(wspec.module)
        from harness.engine.fused import with_derived_stages

        module = with_derived_stages(module)
    spec = wspec.module
    missing = missing_contract(module)
    if missing:
        raise AdapterError(f"{role} adapter {spec!r} ({getattr(module, '__file__', '?')}) does not implement the "
                           f"stage contract: missing {missing} (see higgs_common/stages.py, or run "
                           f"python -m harness.check_adapter {spec})")
    if not isinstance(getattr(module, "CONVENTIONS"), Conventions):
        raise AdapterError(f"{role} adapter {spec!r}: CONVENTIONS must be a higgs_common.conventions.Conventions")
    version = module.description["version"] if worker is not None else version_of(module)
    return Side(role, spec, module, str(getattr(module, "__file__", "?")), version, worker)


def load_sides(reference: str | None = None, custom: str | None = None, *,
               workers: dict[str, dict[str, Any]] | None = None, isolation: str = "auto",
               timeout: float | None = None) -> dict[str, Side]:
    """Both roles, defaulting to the two in-repo pipelines.  `workers[role]` may give `python` and
    `paths` for that side (see `load_side`); `timeout` is the per-call side timeout in seconds."""
    workers = workers or {}
    return {role: load_side({"reference": reference, "custom": custom}[role] or DEFAULT_SPECS[role], role,
                            python=(workers.get(role) or {}).get("python"),
                            paths=tuple((workers.get(role) or {}).get("paths") or ()), timeout=timeout,
                            isolation=isolation)
            for role in ROLES}


def stages_of(role: str) -> ModuleType:
    """The default (in-repo) adapter module of a role; kept for callers that work on the default pair."""
    return import_spec(DEFAULT_SPECS[role])


def known_faults(custom: str | None = None) -> dict[str, Any]:
    """Named faults of the custom adapter (default: custom_impl)."""
    return load_side(custom or DEFAULT_SPECS["custom"], "custom").faults()
