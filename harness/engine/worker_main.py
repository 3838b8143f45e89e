"""The side's worker process: imports ONE adapter with its own interpreter and import path, and runs
its stage functions (and the harness's model-side helpers) on request (`harness.engine.worker`).

Started by the harness as `PY -c <bootstrap>`; the bootstrap puts the side's folders first on
`sys.path`, then this checkout, and calls `main(address, spec)`.  The connection's auth key comes in
the environment variable `HIGGS_DIFF_WORKER_KEY` (hex).  Requests and replies are
`higgs_common.crossing` byte strings:

    (on connecting, unasked)                        -> ("ok", description dict) | ("error", info)
    ("call", name, args, kwargs, grad_enabled)      -> ("ok", result) | ("error", info)
    ("apply", "pkg.module:function", args, kwargs, grad_enabled)
    ("invoke", None, (function handle, *args), kwargs, grad_enabled)
    ("release", [handle ids])                       -> no reply
    ("exit",)                                       -> the process ends

Models, optimizers, schedulers (and the adapter module itself) stay here behind handles; every
call's result is also kept under a handle until the harness releases it, so a `LossBreakdown` sent
back into `backward` is the original, with its autograd graph.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import itertools
import os
import sys
import traceback
import types
from multiprocessing.connection import Client
from typing import Any

import torch

from higgs_common import crossing


# Functions of these packages are importable in the harness too: they cross by reference.
SHARED_PACKAGES: tuple[str, ...] = ("higgs_common", "torch", "builtins", "math", "operator", "functools")


def _kept_here(obj: Any) -> bool:
    """Objects that never cross by value: models, optimizers, schedulers, generators, modules, and
    the side's own functions (a convention's `system_message`: the harness calls it in the worker)."""
    if isinstance(obj, (types.FunctionType, functools.partial)):
        module = getattr(obj, "__module__", None) or getattr(getattr(obj, "func", None), "__module__", "")
        return module.split(".")[0] not in SHARED_PACKAGES
    return isinstance(obj, (torch.nn.Module, torch.optim.Optimizer, types.GeneratorType, types.ModuleType)) or (
        hasattr(obj, "optimizer") and callable(getattr(obj, "step", None)) and hasattr(obj, "get_last_lr"))


class Worker:
    def __init__(self, spec: str) -> None:
        from harness.engine.fused import with_derived_stages
        from harness.engine.sides import import_spec

        self.module = with_derived_stages(import_spec(spec))
        self.table: dict[int, Any] = {}
        self.ids = itertools.count(1)

    # ---------------------------------------------------------------- handles

    def keep(self, obj: Any) -> Any:
        if obj is self.module or obj is getattr(self.module, "_module", None):
            return ("adapter",)
        if _kept_here(obj):
            hid = next(self.ids)
            self.table[hid] = obj
            return ("h", hid, type(obj).__name__, getattr(obj, "__module__", None), getattr(obj, "__qualname__", None))
        return None

    def load(self, pid: Any) -> Any:
        if pid[0] == "adapter":
            return self.module
        if pid[0] == "h":
            try:
                return self.table[pid[1]]
            except KeyError:
                raise KeyError(f"handle {pid[1]} is not held by this worker (released, or from a restarted "
                               f"worker)") from None
        raise ValueError(f"unknown handle kind {pid!r}")

    # ---------------------------------------------------------------- requests

    def describe(self) -> dict[str, Any]:
        mod = self.module
        functions: dict[str, list[tuple[str, int, bool]]] = {}
        constants: dict[str, Any] = {}
        for name in dir(mod):
            if name.startswith("_"):
                continue
            value = getattr(mod, name)
            if inspect.isfunction(value) or inspect.ismethod(value) or inspect.isbuiltin(value):
                try:
                    params = inspect.signature(value).parameters.values()
                    functions[name] = [(p.name, int(p.kind), p.default is not inspect.Parameter.empty) for p in params]
                except (TypeError, ValueError):
                    functions[name] = []
        for name in ("NAME", "CONVENTIONS", "DEFAULT_TRAIN", "VERSION", "__version__", "FAULTS"):
            if hasattr(mod, name):
                constants[name] = getattr(mod, name)
        from harness.engine.sides import version_of

        boson = sys.modules.get("boson_multimodal")
        return {"functions": functions, "constants": constants, "module_name": mod.__name__,
                "origin": str(getattr(mod, "__file__", "?")), "version": version_of(mod),
                "python": sys.executable, "pid": os.getpid(), "boson_multimodal": str(getattr(boson, "__file__", None))}

    def run(self, kind: str, target: str, args: tuple, kwargs: dict, grad: bool) -> Any:
        if kind == "call":
            fn = getattr(self.module, target)
        elif kind == "invoke":               # a kept function: args[0]
            fn, args = args[0], args[1:]
        else:
            module_name, _, qual = target.partition(":")
            fn = importlib.import_module(module_name)
            for part in qual.split("."):
                fn = getattr(fn, part)
        with torch.set_grad_enabled(grad):
            return fn(*args, **kwargs)


def main(address: str, spec: str) -> None:
    conn = Client(address, family="AF_UNIX", authkey=bytes.fromhex(os.environ["HIGGS_DIFF_WORKER_KEY"]))
    try:
        worker = Worker(spec)
    except BaseException as exc:  # noqa: BLE001 - sent to the harness with the traceback, then exit
        conn.send_bytes(crossing.dumps(("error", _error_info(exc))))
        return
    conn.send_bytes(crossing.dumps(("ok", worker.describe()), keep=worker.keep))
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        try:
            request = crossing.loads(data, load=worker.load)
        except Exception as exc:  # noqa: BLE001 - a request this side cannot rebuild: its error, with traceback
            conn.send_bytes(crossing.dumps(("error", _error_info(exc))))
            continue
        op = request[0]
        if op == "exit":
            return
        if op == "release":
            for hid in request[1]:
                worker.table.pop(hid, None)
            continue
        try:
            result = worker.run(op, *request[1:])
            hid = next(worker.ids)
            worker.table[hid] = result           # kept until released: its graph stays usable here
            reply = crossing.dumps(("ok", hid, result), keep=worker.keep)
        except BaseException as exc:  # noqa: BLE001 - the side's error goes to the harness with its traceback
            reply = crossing.dumps(("error", _error_info(exc)))
        conn.send_bytes(reply)


def _error_info(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            "sample_id": getattr(exc, "sample_id", None), "field": getattr(exc, "field", None),
            "path": getattr(exc, "path", None), "pid": os.getpid()}


BOOTSTRAP = """
import sys
paths, repo = {paths!r}, {repo!r}
sys.path[:0] = [p for p in paths] + [repo]
from harness.engine.worker_main import main
main({address!r}, {spec!r})
"""
