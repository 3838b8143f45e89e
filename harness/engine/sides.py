"""The two sides of a comparison, each an adapter module that implements the stage contract
(`higgs_common.stages`), given by specification.

A SPEC is a module path (``mypkg.higgs_stages``) or a path to a ``.py`` file.  A file inside a
package directory tree (``__init__.py`` files up to a folder on ``sys.path`` or the working
directory) is imported under its dotted name, so its own relative imports work; any other file is
loaded on its own, with its folder put on ``sys.path``.  Importing by SPEC lives in
`harness.engine.spec_import`; this module and that one are the only places where the harness
imports pipelines; everything else talks to the contract.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Sequence

from harness.engine.spec_import import (WORKER_KEYS, AdapterError, _import_configured, checkout_spec, import_spec,  # noqa: F401
                                        missing_contract, version_of)                     # (re-exported)
from higgs_common.conventions import Conventions

ROLES: tuple[str, str] = ("reference", "custom")
DEFAULT_SPECS: dict[str, str] = {"reference": "reference_impl.stages", "custom": "custom_impl.stages"}


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
