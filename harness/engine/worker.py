"""Each side in its own worker process: its own interpreter, its own import path (so its own
`boson_multimodal` copy), the harness talking to it through the stage contract.

`RemoteAdapter` stands where an adapter module stands (`Side.module`): the contract's constants were
read once from the worker; each function call sends its arguments (`higgs_common.crossing`), runs in
the worker and returns the result.  Models, optimizers and schedulers stay in the worker as
`RemoteHandle`s; a result sent back into the same worker (the `LossBreakdown` given to `backward`)
is the worker's original object, graph included.  Harness code that must touch a model (read its
parameters, set gradients) runs where the model lives through `on_side(obj, function, *args)`.

A side that raises gives `SideError` (its type, message and traceback); one that runs past the
per-call timeout is killed (`SideTimeout`); one whose process ends is `SideDied` (exit code and the
tail of its log).  The next call starts a fresh worker, so later stages (config) still run.  A
`SampleError`/`UnknownFaultError` raised in the worker is re-raised as itself: bad input, exit 2.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from multiprocessing.connection import Listener
from pathlib import Path
from typing import Any, Callable

import torch

from higgs_common import REPO_ROOT, crossing
from higgs_common.stages import HiggsDiffError, SampleError, UnknownFaultError

DEFAULT_SIDE_TIMEOUT_S = 1800.0     # one stage call of a real pipeline (model build, a step) stays far below
START_TIMEOUT_S = 300.0             # interpreter start + adapter import
LOG_TAIL_CHARS = 4000


class SideError(HiggsDiffError, RuntimeError):
    """A side's code raised in its worker: type, message and the worker's traceback."""


class SideTimeout(SideError):
    """A side's call ran past its timeout; the worker was killed."""


class SideDied(SideError):
    """A side's worker process ended (crash, os._exit, killed) during a call."""


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Where and how one side runs.  `python`/`paths` empty: the in-process default for that field."""

    module: str                          # adapter SPEC (module path or .py file)
    python: str | None = None            # interpreter; None: this one
    paths: tuple[str, ...] = ()          # prepended to the worker's sys.path, in order
    timeout_s: float | None = None       # per call; None: DEFAULT_SIDE_TIMEOUT_S

    @property
    def wants_process(self) -> bool:
        return self.python is not None or bool(self.paths)


def parse_spec(spec: str) -> WorkerSpec:
    """`module`, `file.py`, `key=value;key=value` (keys: module, python, path, timeout; `path` may
    repeat or hold os.pathsep-separated folders) or a `.json` file with those keys (`path` a string or
    a list).  Raises HiggsDiffError naming the bad key."""
    if spec.endswith(".json") and Path(spec).is_file():
        try:
            raw = json.loads(Path(spec).read_text())
        except json.JSONDecodeError as exc:
            raise HiggsDiffError(f"side spec file {spec}: not JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise HiggsDiffError(f"side spec file {spec}: expected an object with module/python/path/timeout")
        pairs = [(k, v) for k, v in raw.items()]
    elif "=" in spec:
        pairs = []
        for part in spec.split(";"):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep:
                raise HiggsDiffError(f"side spec {spec!r}: {part!r} is not key=value")
            pairs.append((key.strip(), value.strip()))
    else:
        return WorkerSpec(module=spec)
    module, python, paths, timeout = None, None, [], None
    for key, value in pairs:
        if key == "module":
            module = str(value)
        elif key == "python":
            python = str(value)
        elif key == "path":
            values = value if isinstance(value, list) else str(value).split(os.pathsep)
            paths += [str(v) for v in values if str(v)]
        elif key == "timeout":
            timeout = float(value)
        else:
            raise HiggsDiffError(f"side spec {spec!r}: unknown key {key!r} (module, python, path, timeout)")
    if not module:
        raise HiggsDiffError(f"side spec {spec!r}: no module= (the adapter module or .py file)")
    return WorkerSpec(module=module, python=python, paths=tuple(paths), timeout_s=timeout)


class RemoteHandle:
    """An object that lives in a worker (model, optimizer, scheduler)."""

    def __init__(self, owner: "RemoteAdapter", hid: int, type_name: str, generation: int) -> None:
        self.owner, self.hid, self.type_name, self.generation = owner, hid, type_name, generation
        weakref.finalize(self, owner._release_later, hid, generation)

    def __repr__(self) -> str:
        return f"<{self.type_name} in the {self.owner.role} worker, handle {self.hid}>"


class RemoteCallable(RemoteHandle):
    """A function of the side (e.g. a convention's `system_message`), called in its worker."""

    def __init__(self, owner: "RemoteAdapter", hid: int, type_name: str, generation: int, module: str | None,
                 qualname: str | None) -> None:
        super().__init__(owner, hid, type_name, generation)
        self.__module__ = module or "?"
        self.__qualname__ = self.__name__ = qualname or "?"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.owner.request("invoke", None, (self, *args), kwargs)


class RemoteFunction:
    """One adapter function, called in the worker (its signature is the adapter's)."""

    def __init__(self, owner: "RemoteAdapter", name: str, params: list[tuple[str, int, bool]]) -> None:
        self.owner, self.__name__ = owner, name
        self.__signature__ = inspect.Signature([inspect.Parameter(
            n, inspect._ParameterKind(k), default=None if has_default else inspect.Parameter.empty)
            for n, k, has_default in params])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.owner.request("call", self.__name__, args, kwargs)


class RemoteAdapter:
    """An adapter module running in a worker process (module docstring)."""

    def __init__(self, spec: WorkerSpec, role: str, work_dir: Path | None = None) -> None:
        self.spec, self.role = spec, role
        self.timeout = spec.timeout_s if spec.timeout_s is not None else DEFAULT_SIDE_TIMEOUT_S
        self._dir = Path(tempfile.mkdtemp(prefix=f"higgs-diff-{role}-", dir=work_dir))
        self._proc: subprocess.Popen | None = None
        self._conn: Any = None
        self._generation = 0
        self._describing = False
        self._pending_release: list[int] = []
        self._results: dict[int, tuple[weakref.ref, int]] = {}   # id(harness object) -> (ref, handle)
        self.description: dict[str, Any] = {}
        self._start()
        d = self.description
        for name, params in d["functions"].items():
            setattr(self, name, RemoteFunction(self, name, params))
        for name, value in d["constants"].items():
            setattr(self, name, value)
        self.__name__ = d["module_name"]
        self.__file__ = d["origin"]

    # ---------------------------------------------------------------- process

    @property
    def log_path(self) -> Path:
        return self._dir / "worker.log"

    def _start(self) -> None:
        from harness.engine.worker_main import BOOTSTRAP

        self._generation += 1
        self._results.clear()
        self._pending_release.clear()
        key = secrets.token_bytes(32)
        listener = Listener(str(self._dir / f"sock{self._generation}"), family="AF_UNIX", authkey=key)
        paths = [str(Path(p).resolve()) for p in self.spec.paths]
        env = dict(os.environ, HIGGS_DIFF_WORKER_KEY=key.hex(),
                   PYTHONPATH=os.pathsep.join(paths + [str(REPO_ROOT)] +
                                              [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        code = BOOTSTRAP.format(paths=paths, repo=str(REPO_ROOT), address=listener.address, spec=self.spec.module)
        log = open(self.log_path, "ab")
        self._proc = subprocess.Popen([self.spec.python or sys.executable, "-c", code], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        accepted: dict[str, Any] = {}

        def accept() -> None:
            try:
                accepted["conn"] = listener.accept()
            except Exception as exc:  # noqa: BLE001 - reported below as a worker that did not start
                accepted["error"] = exc

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while t.is_alive():
            t.join(0.2)
            if self._proc.poll() is not None and t.is_alive():
                listener.close()
                raise SideDied(f"{self.role} worker ({self.spec.python or sys.executable}) exited with status "
                               f"{self._proc.returncode} before connecting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self._kill()
                listener.close()
                raise SideTimeout(f"{self.role} worker did not connect within {START_TIMEOUT_S:.0f} s:\n"
                                  f"{self.log_tail()}")
        listener.close()
        if "conn" not in accepted:
            raise SideDied(f"{self.role} worker: connection failed: {accepted.get('error')}")
        self._conn = accepted["conn"]
        self._describing = True     # handles in the description (a convention's functions) are numbered the
        try:                        # same way by every fresh worker: generation 0, valid across restarts
            reply = self._receive(START_TIMEOUT_S, "import")
        finally:
            self._describing = False
        if reply[0] == "error":
            self._kill()
            raise self._error(reply[1], "import of the adapter")
        self.description = reply[1]

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def close(self) -> None:
        """End the worker (also done at interpreter exit)."""
        if self._conn is not None and self._proc is not None and self._proc.poll() is None:
            try:
                self._conn.send_bytes(crossing.dumps(("exit",)))
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._kill()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
            pass

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no worker log)"
        return text[-LOG_TAIL_CHARS:] if text else "(worker log empty)"

    # ---------------------------------------------------------------- crossing

    def _release_later(self, hid: int, generation: int) -> None:
        if generation == self._generation:      # generation 0 (the description's) is never released
            self._pending_release.append(hid)

    def _keep(self, obj: Any) -> Any:
        if obj is self:
            return ("adapter",)
        if isinstance(obj, RemoteHandle):
            if obj.owner is not self or obj.generation not in (0, self._generation):
                raise crossing.CrossingError(f"{obj!r} cannot be used by the {self.role} worker "
                                             f"(other side's object, or from a worker that was restarted)")
            return ("h", obj.hid)
        if isinstance(obj, RemoteAdapter):
            raise crossing.CrossingError(f"the {obj.role} adapter cannot be sent to the {self.role} worker")
        entry = self._results.get(id(obj))
        if entry is not None and entry[0]() is obj:
            return ("h", entry[1])
        return None

    def _load(self, pid: Any) -> Any:
        if pid[0] == "adapter":
            return self
        generation = 0 if self._describing else self._generation
        if pid[2] in ("function", "partial"):
            return RemoteCallable(self, pid[1], pid[2], generation, pid[3], pid[4])
        return RemoteHandle(self, pid[1], pid[2], generation)

    def _receive(self, timeout: float, what: str) -> Any:
        assert self._conn is not None
        try:
            ready = self._conn.poll(timeout)
        except (OSError, EOFError):
            ready = True
        if not ready:
            self._kill()
            raise SideTimeout(f"{self.role} side: {what} ran past the {timeout:.0f} s side timeout; the worker was "
                              f"killed (option --side-timeout).  Worker log tail:\n{self.log_tail()}")
        try:
            data = self._conn.recv_bytes()
        except (EOFError, OSError):
            code = self._proc.wait(timeout=30) if self._proc is not None else None
            self._conn = None
            raise SideDied(f"{self.role} side: the worker process ended during {what} (exit status {code}).  "
                           f"Worker log tail:\n{self.log_tail()}") from None
        return crossing.loads(data, load=self._load)

    def _error(self, info: dict[str, Any], what: str) -> BaseException:
        name = info["type"]
        if name == "SampleError":
            exc = SampleError.__new__(SampleError)
            Exception.__init__(exc, info["message"])
            exc.sample_id, exc.field, exc.path = info["sample_id"], info["field"], info["path"]
            return exc
        if name == "UnknownFaultError":
            return UnknownFaultError(info["message"])
        return SideError(f"{self.role} side ({name} in {what}, worker pid {info['pid']}): {info['message']}\n"
                         f"{info['traceback']}")

    def request(self, kind: str, target: str | None, args: tuple, kwargs: dict) -> Any:
        """Run `target` (an adapter function, or "module:function" of the harness) in the worker."""
        if self._conn is None or (self._proc is not None and self._proc.poll() is not None):
            self._kill()
            self._start()                      # a fresh worker after a death or a timeout
        assert self._conn is not None
        if self._pending_release:
            ids, self._pending_release = self._pending_release, []
            self._conn.send_bytes(crossing.dumps(("release", ids)))
        payload = crossing.dumps((kind, target, args, kwargs, torch.is_grad_enabled()), keep=self._keep)
        what = f"{target}()" if target else f"{getattr(args[0], '__qualname__', 'function')}()"
        try:
            self._conn.send_bytes(payload)
        except OSError:
            pass                               # the receive below reports the dead worker
        reply = self._receive(self.timeout, what)
        if reply[0] == "error":
            raise self._error(reply[1], what)
        _, hid, result = reply
        try:
            self._results[id(result)] = (weakref.ref(result), hid)
            weakref.finalize(result, self._forget, id(result), hid, self._generation)
        except TypeError:                      # dicts, tuples, ints: nothing to hand back by identity
            self._pending_release.append(hid)
        return result

    def _forget(self, key: int, hid: int, generation: int) -> None:
        self._results.pop(key, None)
        self._release_later(hid, generation)


def is_remote(obj: Any) -> bool:
    return isinstance(obj, (RemoteHandle, RemoteAdapter))


def on_side(obj: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` where `obj` lives: in its worker when `obj` is remote (fn must be a
    module-level function of an importable module, its result must cross), else here."""
    if isinstance(obj, RemoteHandle):
        owner = obj.owner
    elif isinstance(obj, RemoteAdapter):
        owner = obj
    else:
        return fn(*args, **kwargs)
    return owner.request("apply", f"{fn.__module__}:{fn.__qualname__}", args, kwargs)
