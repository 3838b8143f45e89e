"""What crosses between the harness and a side's worker process, and how (`docs/real-pipelines.md`).

Both processes import this module (the worker runs the harness's checkout of `higgs_common`), but
each may import its OWN copy of `boson_multimodal` (a pipeline's vendored, patched one).  So:

* tensors cross by value (detached; a non-leaf tensor keeps its graph only on its own side);
* dataclasses of `higgs_common` (StageContext aside, below) cross as themselves;
* any other dataclass (`ChatMLDatasetSample`, `HiggsAudioBatchInput`, an adapter's own fault record)
  crosses as a plain dict of its fields and is rebuilt on the receiving side from *that* side's
  class of the same module and name; when that class is not importable there, as a
  `types.SimpleNamespace` of the fields (so attribute access still works);
* a `StageContext` crosses without its tokenizer, codec cache and model config; the receiving side
  rebuilds them from the paths (`higgs_common.context.build_context`, memoised);
* everything else that pickles crosses by value; what a `keep` callback claims (models, optimizers,
  schedulers on the worker side) crosses as a handle: `("handle", id, type name)`.

Errors: `CrossingError` when a value neither pickles nor is claimed as a handle (names its type).
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import pickle
import types
from typing import Any, Callable

import torch

from higgs_common.stages import HiggsDiffError, StageContext

# Fields of StageContext that are rebuilt from the paths on the receiving side.
CONTEXT_HEAVY_FIELDS: tuple[str, ...] = ("text_tokenizer", "code_cache", "model_config")


class CrossingError(HiggsDiffError, TypeError):
    """A value that cannot cross the process boundary (neither picklable nor kept behind a handle)."""


def rebuild_dataclass(module: str, qualname: str, fields: dict[str, Any], extra: dict[str, Any]) -> Any:
    """The receiving side's instance of `module.qualname` with `fields`; a SimpleNamespace if that class
    is not importable here or its constructor rejects the fields."""
    cls: Any = None
    try:
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        cls = None
    if cls is None or not dataclasses.is_dataclass(cls):
        return types.SimpleNamespace(**fields, **extra)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    try:
        obj = cls(**{k: v for k, v in fields.items() if k in names})
    except TypeError:
        obj = object.__new__(cls)
    for k, v in {**fields, **extra}.items():
        try:
            setattr(obj, k, v)
        except (AttributeError, dataclasses.FrozenInstanceError):
            object.__setattr__(obj, k, v)
    return obj


def rebuild_context(fields: dict[str, Any]) -> StageContext:
    """A StageContext from its light fields, tokenizer/config/code cache rebuilt from its paths."""
    from higgs_common.context import build_context

    full = build_context(fields["model_path"], fields["audio_tokenizer_path"], device=fields["device"],
                         faults=fields["faults"], seed=fields["seed"], options=fields["options"])
    return dataclasses.replace(full, **fields)


def _detached_tensor(data: torch.Tensor) -> torch.Tensor:
    return data


class _Pickler(pickle.Pickler):
    def __init__(self, buf: io.BytesIO, keep: Callable[[Any], Any] | None) -> None:
        super().__init__(buf, protocol=pickle.HIGHEST_PROTOCOL)
        self._keep = keep

    def persistent_id(self, obj: Any) -> Any:
        if self._keep is None or isinstance(obj, (str, bytes, int, float, bool, type(None), torch.Tensor)):
            return None
        return self._keep(obj)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            if obj.requires_grad or isinstance(obj, torch.nn.Parameter):
                return _detached_tensor, (obj.detach(),)
            return NotImplemented
        if isinstance(obj, StageContext):
            light = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in CONTEXT_HEAVY_FIELDS}
            return rebuild_context, (light,)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            cls = type(obj)
            if cls.__module__.split(".")[0] == "higgs_common":
                return NotImplemented
            fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if hasattr(obj, f.name)}
            extra = {k: v for k, v in getattr(obj, "__dict__", {}).items() if k not in fields}
            return rebuild_dataclass, (cls.__module__, cls.__qualname__, fields, extra)
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    def __init__(self, buf: io.BytesIO, load: Callable[[Any], Any] | None) -> None:
        super().__init__(buf)
        self._load = load

    def persistent_load(self, pid: Any) -> Any:
        if self._load is None:
            raise pickle.UnpicklingError(f"handle {pid!r} received where no handles are expected")
        return self._load(pid)


def dumps(obj: Any, keep: Callable[[Any], Any] | None = None) -> bytes:
    """Serialise `obj` (module docstring); `keep(obj)` returns a handle id for objects that stay behind,
    or None to send them by value."""
    buf = io.BytesIO()
    try:
        _Pickler(buf, keep).dump(obj)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise CrossingError(f"cannot send a value across the worker boundary: {type(exc).__name__}: {exc}") from exc
    return buf.getvalue()


def loads(data: bytes, load: Callable[[Any], Any] | None = None) -> Any:
    """Inverse of `dumps`; `load(pid)` turns a handle id back into an object."""
    return _Unpickler(io.BytesIO(data), load).load()
