"""Reading a trace folder written by `higgs-diff trace` (`harness.trace.run` + `harness.trace.recorder`).

Layout::

    DIR/trace.json                      the command, its exit status, ranks and steps recorded
    DIR/command.log                     what the command printed
    DIR/rank<R>/step-<NNNN>.json        one optimizer step: metadata, call sites, tensor descriptions
    DIR/rank<R>/step-<NNNN>.safetensors its tensors (keys named in the JSON's descriptions)
    DIR/rank<R>/events.jsonl            checkpoint saves/loads, uncaught exception, the end

A folder that is not a trace, or a step whose files are unreadable, raises `TraceError` naming the
file; nothing else here raises on odd contents (odd contents are findings for the comparison).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from higgs_common.param_names import canonical_name
from higgs_common.stages import HiggsDiffError

INDEX = "trace.json"


class TraceError(HiggsDiffError, ValueError):
    """A folder that is not a readable trace (names the file)."""


@dataclass
class StepTrace:
    """One recorded optimizer step of one rank: the JSON record and its tensors (loaded on demand)."""

    step: int
    rank: int
    meta: dict[str, Any]
    tensor_path: Path | None
    _tensors: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        """False when the run ended inside this step (e.g. a guard stopped it before the update)."""
        return bool(self.meta.get("complete", False))

    def tensors(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            self._tensors = _load_tensors(self.tensor_path) if self.tensor_path else {}
        return self._tensors

    def tensor(self, desc: Any) -> torch.Tensor | None:
        """The stored tensor of a description (None when only its summary was kept)."""
        if not isinstance(desc, dict) or not desc.get("stored"):
            return None
        t = self.tensors().get(desc.get("key"))
        return t if isinstance(t, torch.Tensor) else None

    # -------------------------------------------------------------- convenience views
    # Views of the record: always the promised types (records a program wrote oddly become empty or
    # partial views, never an exception in the comparison).
    def records(self, key: str) -> list[dict[str, Any]]:
        """The list-of-records field `key` (model_calls, cross_entropy, backward, ...), dicts only."""
        return dicts(self.meta.get(key))

    @property
    def model_calls(self) -> list[dict[str, Any]]:
        return self.records("model_calls")

    @property
    def ce_calls(self) -> list[dict[str, Any]]:
        return self.records("cross_entropy")

    @property
    def backward(self) -> list[dict[str, Any]]:
        return self.records("backward")

    @property
    def optimizer(self) -> dict[str, Any] | None:
        opt = self.meta.get("optimizer")
        return opt if isinstance(opt, dict) else None

    def _by_name(self, key: str) -> dict[str, Any]:
        table = (self.optimizer or {}).get(key)
        return {canonical_name(str(n)): d for n, d in table.items()} if isinstance(table, dict) else {}

    def grads(self) -> dict[str, Any]:
        """Canonical parameter name -> gradient description (None: no gradient reached it)."""
        return self._by_name("grads")

    def params_after(self) -> dict[str, Any]:
        return self._by_name("params_after")

    def optimizer_state(self) -> dict[str, dict[str, Any]]:
        return {n: d for n, d in self._by_name("state").items() if isinstance(d, dict)}

    def param_groups(self) -> list[dict[str, Any]]:
        return dicts((self.optimizer or {}).get("param_groups"))

    def logged(self) -> dict[str, float]:
        """What the program logged during this step: tag -> value (last value per tag, numbers only)."""
        out: dict[str, float] = {}
        for rec in self.records("logged"):
            values = rec.get("values")
            for k, v in (values.items() if isinstance(values, dict) else ()):
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{rec.get('source')}:{k}"] = float(v)
        return out


def dicts(x: Any) -> list[dict[str, Any]]:
    """The dict entries of a list (anything else: empty)."""
    return [d for d in x if isinstance(d, dict)] if isinstance(x, list) else []


def number(x: Any) -> float | None:
    """A real number, or None (bools, strings, None and containers are not numbers here)."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # noqa: BLE001  (any reader error: name the file)
        raise TraceError(f"{path}: cannot read the trace's tensors ({type(exc).__name__}: {exc})") from exc


@dataclass
class Trace:
    """A trace folder: the index, each rank's steps and events."""

    path: Path
    index: dict[str, Any]
    steps: dict[int, list[StepTrace]]
    events: dict[int, list[dict[str, Any]]]

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        """Read `path`; TraceError naming the file when it is not a trace or a record is unreadable."""
        path = Path(path)
        index_file = path / INDEX
        if not index_file.is_file():
            raise TraceError(f"{path}: not a trace folder (no {INDEX}; write one with `higgs-diff trace --out {path} -- ...`)")
        index = _read_json(index_file)
        steps: dict[int, list[StepTrace]] = {}
        events: dict[int, list[dict[str, Any]]] = {}
        for rank_dir in sorted(path.glob("rank*")):
            if not rank_dir.is_dir() or not rank_dir.name[4:].isdigit():
                continue
            rank = int(rank_dir.name[4:])
            recs = []
            for f in sorted(rank_dir.glob("step-*.json")):
                meta = _read_json(f)
                tf = meta.get("tensor_file")
                recs.append(StepTrace(int(meta.get("step", f.stem.split("-")[1])), rank, meta,
                                      rank_dir / tf if tf else None))
            steps[rank] = sorted(recs, key=lambda s: s.step)
            ev = rank_dir / "events.jsonl"
            events[rank] = [_parse_line(ev, i, line) for i, line in
                            enumerate(ev.read_text(encoding="utf-8").splitlines(), 1) if line.strip()] if ev.is_file() else []
        return cls(path, index, steps, events)

    # -------------------------------------------------------------- views
    @property
    def ranks(self) -> list[int]:
        return sorted(self.steps)

    def rank_steps(self, rank: int = 0) -> list[StepTrace]:
        return self.steps.get(rank, [])

    def iter_steps(self) -> Iterator[StepTrace]:
        for r in self.ranks:
            yield from self.steps[r]

    @property
    def command(self) -> list[str]:
        return list(self.index.get("command") or [])

    @property
    def exit_code(self) -> int | None:
        return self.index.get("exit_code")

    def program(self) -> str:
        """What ran: ``module:<name>`` for ``python -m name`` (also under torchrun), else the script's name."""
        cmd = self.command
        for i, tok in enumerate(cmd):
            if tok == "-m" and i + 1 < len(cmd):
                return f"module:{cmd[i + 1]}"
            if tok.startswith("--module") or tok == "--no-python":
                continue
        scripts = [t for t in cmd[1:] if t.endswith(".py")]
        return f"script:{Path(scripts[0]).name}" if scripts else f"command:{Path(cmd[0]).name if cmd else '?'}"

    def argv_value(self, *flags: str) -> str | None:
        """The value given to any of `flags` on the command line (``--lr 3e-4`` or ``--lr=3e-4``)."""
        cmd = self.command
        for i, tok in enumerate(cmd):
            for f in flags:
                if tok == f and i + 1 < len(cmd):
                    return cmd[i + 1]
                if tok.startswith(f + "="):
                    return tok.split("=", 1)[1]
        return None

    def errors(self) -> list[dict[str, Any]]:
        """Uncaught exceptions and recorder problems, every rank."""
        return [dict(e, rank=r) for r, evs in self.events.items() for e in evs
                if e.get("kind") in ("uncaught_exception", "recorder_error", "save_error")]

    def command_line(self) -> str:
        return self.index.get("command_line") or shlex.join(self.command)

    def log_tail(self, lines: int = 15) -> str:
        log = self.path / "command.log"
        if not log.is_file():
            return ""
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TraceError(f"{path}: unreadable trace record ({type(exc).__name__}: {exc})") from exc


def _parse_line(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{path}:{lineno}: unreadable event ({exc})") from exc
