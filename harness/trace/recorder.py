"""Records what a training process really does, from inside it; injected at interpreter start.

`higgs-diff trace` puts ``harness/trace/boot`` first on ``PYTHONPATH``; its ``sitecustomize`` loads
this file (by path, so nothing of the project lands on the traced program's import path) and calls
`install()` when ``HIGGS_TRACE_DIR`` is set.  The traced program runs unchanged; this module
patches a few public torch entry points, the way msprobe's dump mode does:

- ``torch.optim.Optimizer``: global step pre/post hooks (``register_optimizer_step_pre_hook``):
  every trainable gradient, param-group hyperparameters, parameters and AdamW state after the step,
  and a fingerprint of torch's random-number generators when the gradients are complete
  (`rng_fingerprint`: which random draws the step's forward and backward made);
- ``torch.nn.Module.__call__``: the outermost call of a module that owns optimizer parameters is
  *the model call* (one per micro-batch): its tensor inputs (the batch) and outputs;
- ``torch.nn.functional.cross_entropy`` (``nn.CrossEntropyLoss`` calls it): inputs' shape,
  targets, reduction, ignore_index, label smoothing, result, per-position CE and the call site;
- ``torch.Tensor.backward`` / ``torch.autograd.backward``: the back-propagated loss, whether it
  has a graph, and the call site;
- ``torch.nn.utils.clip_grad_norm_``, ``LRScheduler.step``, ``torch.save``/``torch.load``,
  safetensors' ``save_file``/``load_file``, TensorBoard's ``add_scalar`` and HF ``Trainer.log``.

Only ``HIGGS_TRACE_STEPS`` optimizer steps are recorded, from step ``HIGGS_TRACE_START_STEP`` (default 1;
the steps before it are counted, not recorded) (a step = everything between two optimizer steps, so
gradient-accumulation micro-batches belong to the step they feed).  Each rank
writes ``rank<R>/step-<NNNN>.json`` (metadata, call sites, summaries) and
``rank<R>/step-<NNNN>.safetensors`` (tensors up to ``HIGGS_TRACE_MAX_NUMEL`` elements; larger ones
are kept as summaries: shape, dtype, sum, |sum|, min, max, non-finite count), plus
``rank<R>/events.jsonl`` (saves, loads, the run's end or its uncaught exception).

Depends on torch and the standard library only (safetensors when importable, else ``torch.save``),
and never raises into the traced program: a recording failure is written to ``events.jsonl``.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import math
import os
import sys
import threading
import time
import traceback
from typing import Any, NamedTuple

import torch

ENV_DIR, ENV_STEPS, ENV_LAYERS, ENV_MAX_NUMEL = ("HIGGS_TRACE_DIR", "HIGGS_TRACE_STEPS", "HIGGS_TRACE_LAYERS",
                                                 "HIGGS_TRACE_MAX_NUMEL")
# check-resume: number recorded steps from this offset + 1 (a resumed run), and SIGKILL the process when
# the step after this one starts (its checkpoint of this step is then complete: both CLIs save in the loop).
ENV_STEP_OFFSET, ENV_KILL_AFTER = "HIGGS_TRACE_STEP_OFFSET", "HIGGS_TRACE_KILL_AFTER_STEP"
# Record a window later in the run: the first recorded step is offset + this (default 1); the optimizer steps
# before it are only counted.
ENV_START_STEP = "HIGGS_TRACE_START_STEP"
FORMAT_VERSION = 1
_THIS_FILE = os.path.abspath(__file__)
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_SKIP_DIRS = (_TORCH_DIR, os.path.dirname(_THIS_FILE))
_LAYER_CLASS_HINTS = ("DecoderLayer",)
BRANCH_NAMES = ("mlp", "audio_mlp")


# Every hook asks this FIRST: torch.compile treats it as a constant True while tracing, so the rest of
# the hook is dead code to it and no guard is installed on the recorder's state (a guard on its step
# counter would recompile the model at every step and, past the recompile limit, run it eagerly).
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def _by_device(items: list[tuple], at: int) -> dict[Any, list[tuple]]:
    """`items` grouped by the device of their tensor at position `at` (one read-back per device)."""
    out: dict[Any, list[tuple]] = {}
    for item in items:
        out.setdefault(item[at].device, []).append(item)
    return out


def call_site(limit: int = 4) -> list[dict[str, Any]]:
    """The innermost `limit` frames outside torch and this recorder: file, line, function."""
    out: list[dict[str, Any]] = []
    frame = sys._getframe(1)
    while frame is not None and len(out) < limit:
        fn = os.path.abspath(frame.f_code.co_filename)
        if not fn.startswith(_SKIP_DIRS) and "<frozen" not in fn:
            out.append({"file": fn, "line": frame.f_lineno, "function": frame.f_code.co_name})
        frame = frame.f_back
    return out


UNREADABLE = "unreadable"


def rng_fingerprint() -> dict[str, str]:
    """Where torch's random-number generators stand now, as short strings equal exactly when the states
    are: the CPU generator's state digest and, on each CUDA device once CUDA is initialised, its default
    generator's seed and Philox offset (the offset advances with every random kernel: dropout masks,
    `torch.rand*`, the seeds torch.compile's generated kernels draw).  Two runs that start from the
    same seed and draw the same random numbers in the same order agree on every entry.
    An entry that cannot be read (an older torch, a CUDA graph capture in progress) is "unreadable",
    which compares equal to nothing; this function never raises.
    """
    out: dict[str, str] = {}
    try:
        out["cpu"] = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16]
    except Exception:   # noqa: BLE001  (a fingerprint is evidence, never a reason to lose the step)
        out["cpu"] = UNREADABLE
    try:
        gens = torch.cuda.default_generators if torch.cuda.is_available() and torch.cuda.is_initialized() else ()
    except Exception:   # noqa: BLE001
        gens = ()
    for i, gen in enumerate(gens):
        try:
            out[f"cuda:{i}"] = f"{gen.initial_seed()}:{gen.get_offset()}"
        except Exception:   # noqa: BLE001  (no readable offset: the full state's digest, else unreadable)
            try:
                out[f"cuda:{i}"] = hashlib.sha1(gen.get_state().numpy().tobytes()).hexdigest()[:16]
            except Exception:   # noqa: BLE001
                out[f"cuda:{i}"] = UNREADABLE
    return out


def forward_site(module: torch.nn.Module) -> dict[str, Any]:
    """File, first line and name of the function that runs `module`'s forward: the instance's own
    `forward` when a speed path patched it on the instance, else its class's."""
    fn = getattr(module.forward, "__func__", module.forward)
    code = getattr(fn, "__code__", None)
    if code is None:
        return {"file": type(module).__module__, "line": 0, "function": f"{type(module).__name__}.forward"}
    return {"file": os.path.abspath(code.co_filename), "line": code.co_firstlineno, "function": code.co_name}


class _Meta(NamedTuple):
    """What `Recorder.keep_many` reads once from a tensor recorded under one key every step."""

    layout: tuple        # (shape, device, dtype): the cache holds while these stay
    shape: list          # JSON forms
    dtype: str
    device: str
    summarised: bool     # above max_numel and floating: summarised by the fused norms


def _timed(method):
    """Add the method's host time to `self.host_s`, less the time of any step flush inside it (a flush
    books its own time)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        flushed, t0 = self.flush_s, time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.host_s += time.perf_counter() - t0 - (self.flush_s - flushed)
    return wrapper


class Recorder:
    """Per-process recording state (one per traced process; rank from ``RANK``)."""

    def __init__(self, out_dir: str, steps: int, layers: bool, max_numel: int) -> None:
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.dir = os.path.join(out_dir, f"rank{self.rank}")
        self.steps, self.layers, self.max_numel = steps, layers, max_numel
        self.offset = int(os.environ.get(ENV_STEP_OFFSET, "0"))
        self.kill_after = int(os.environ.get(ENV_KILL_AFTER, "0"))
        self.step = self.offset + 1   # the optimizer step being run (1-based, program numbering)
        self.first = self.offset + max(1, int(os.environ.get(ENV_START_STEP, "1")))   # first recorded step
        self.last = self.first + steps - 1                                               # last recorded step
        self.seq = 0                  # order of every record in this process
        self.lock = threading.RLock()
        self.optimizer_params: dict[int, torch.nn.Parameter] = {}   # id -> param of every optimizer
        self.names: dict[int, str] = {}                              # id(param) -> name in the model
        self.models: list[Any] = []
        self.model_depth = 0
        self.in_ce = self.in_backward = False
        self.started = False
        self.pending = False          # the optimizer stepped; the step is written when the next starts
        self.in_flush = False
        self.tensors: dict[str, torch.Tensor] = {}
        self.pending_stats: list[tuple[dict[str, Any], torch.Tensor, bool]] = []
        self.pending_norms: list[tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor]] = []
        # Values read back at the end of the step, never inside it (a host sync in the middle of a GPU
        # step stalls the CPU's run-ahead): (record, key, 0-dim tensor) and (record, key, int tensor
        # whose rows are hashed).
        self.pending_scalars: list[tuple[dict[str, Any], str, torch.Tensor]] = []
        self.pending_hashes: list[tuple[dict[str, Any], str, torch.Tensor]] = []
        self.owns_cache: dict[int, bool] = {}   # id(module) -> holds an optimizer's parameter
        self.meta_cache: dict[str, _Meta] = {}   # tensor key -> what keep_many read from its tensor
        # The recorder's own host time inside the hooks of the step being recorded (written into the step
        # as recorder_host_s: what the trace adds to the step's critical path, besides waiting for the GPU).
        self.host_s = 0.0
        self.flush_s = 0.0      # total time spent in flush (so that _timed leaves it out)
        self.current: dict[str, Any] = self._empty_step()
        self.layer_hooks_on: set[int] = set()
        self.t0 = time.time()

    # ------------------------------------------------------------------ bookkeeping
    @property
    def active(self) -> bool:
        return self.first <= self.step <= self.last

    def count_step(self) -> None:
        """An optimizer step before the recorded window: only counted (one optimizer per step assumed)."""
        if self.step < self.first:
            self.step += 1

    def _empty_step(self) -> dict[str, Any]:
        return {"step": getattr(self, "step", 1), "rank": getattr(self, "rank", 0), "model_calls": [],
                "cross_entropy": [], "backward": [], "clip_grad_norm": [], "scheduler": [], "logged": [],
                "layers": [], "optimizer": None}

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _ensure_dir(self) -> None:
        if not self.started:
            os.makedirs(self.dir, exist_ok=True)
            self.started = True

    def event(self, kind: str, **fields: Any) -> None:
        """Append one line to events.jsonl (saves, loads, errors, the end)."""
        try:
            self._ensure_dir()
            rec = {"kind": kind, "after_step": self.step - 1 + (1 if self.pending else 0), "seq": self.next_seq(), "time_s": round(time.time() - self.t0, 3),
                   **fields}
            with open(os.path.join(self.dir, "events.jsonl"), "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec, default=str) + "\n")
        except Exception:   # noqa: BLE001  (never raise into the traced program)
            pass

    def _failed(self, where: str) -> None:
        self.event("recorder_error", where=where, traceback=traceback.format_exc(limit=6))

    # ------------------------------------------------------------------ tensors
    def keep(self, key: str, t: torch.Tensor) -> dict[str, Any]:
        """Store `t` under `key` (or only its summary when larger than max_numel); its description.

        The summary (non-finite count; sum, |sum|, min, max, left out when there are non-finite values) is
        computed where the tensor lives and read back once per step (`_fill_summaries`), so a GPU run pays
        one host sync per step for all summaries, not several per tensor.
        """
        t = t.detach()
        desc: dict[str, Any] = {"key": key, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                                "device": t.device.type}
        if t.numel() and not t.is_complex():
            with torch.no_grad():
                if t.is_floating_point():
                    # One read of t per statistic, no full-size copy; with non-finite values the others
                    # are not summarised (_fill_summaries).
                    lo, hi = torch.aminmax(t)
                    stats = torch.stack([(~torch.isfinite(t)).sum().double(), t.sum(dtype=torch.float64),
                                         torch.linalg.vector_norm(t, 1, dtype=torch.float64), lo.double(),
                                         hi.double()])
                else:
                    stats = torch.stack([torch.zeros((), dtype=torch.float64, device=t.device),
                                         t.double().sum(), t.double().abs().sum(), t.min().double(), t.max().double()])
            self.pending_stats.append((desc, stats, t.is_floating_point()))
        if t.numel() <= self.max_numel:
            self.tensors[key] = t.to("cpu").contiguous().clone()
            desc["stored"] = True
        else:
            desc["stored"] = False
        return desc

    def _fill_summaries(self) -> None:
        """Read every pending summary back in one transfer per device and write it into its description."""
        by_device = _by_device(self.pending_stats, 1)
        self.pending_stats = []
        for descs, l1, linf in self.pending_norms:
            for desc, a, m in zip(descs, l1.cpu().tolist(), linf.cpu().tolist()):
                desc.update(abs_sum=a, max_abs=m, nonfinite=0 if math.isfinite(a) else -1)
        self.pending_norms = []
        scalars, self.pending_scalars = self.pending_scalars, []
        groups: dict[tuple, list[tuple]] = {}
        for item in scalars:      # one stack and one read-back per (device, dtype), no per-scalar kernels
            groups.setdefault((item[2].device, item[2].dtype), []).append(item)
        for items in groups.values():
            values = torch.stack([x.reshape(()) for _, _, x in items]).detach().double().cpu().tolist()
            for (rec, key, _), v in zip(items, values):
                rec[key] = int(v) if key in ("supervised",) else v
        hashes, self.pending_hashes = self.pending_hashes, []
        for rec, key, t in hashes:
            cpu = t.to("cpu").contiguous()
            rec[key] = [hashlib.sha1(r.numpy().tobytes()).hexdigest()[:12] for r in cpu]
        for items in by_device.values():
            values = torch.stack([st for _, st, _ in items]).cpu().tolist()
            for (desc, _, is_float), (nonfinite, total, abs_total, lo, hi) in zip(items, values):
                if is_float and nonfinite:
                    desc.update(nonfinite=int(nonfinite))     # sums of inf/NaN say nothing more
                elif is_float:
                    desc.update(nonfinite=0, sum=total, abs_sum=abs_total, min=lo, max=hi)
                else:
                    desc.update(sum=total, min=int(lo), max=int(hi))

    def row_hashes(self, into: dict[str, Any], key: str, t: torch.Tensor) -> None:
        """Content hash of each row (dim 0) of an integer tensor, sample identity without sample ids,
        written into `into[key]` at the end of the step (a copy of `t` is kept till then)."""
        if t.dim() < 1 or t.is_floating_point() or t.numel() > 50_000_000:
            return
        self.pending_hashes.append((into, key, t.detach().clone()))

    def describe(self, prefix: str, value: Any, depth: int = 0) -> Any:
        """Tensors inside nested outputs (dataclasses, ModelOutput, dicts, tuples) -> descriptions."""
        if depth > 4:
            return None
        if isinstance(value, torch.Tensor):
            return self.keep(prefix, value)
        if isinstance(value, dict) or hasattr(value, "items") and callable(value.items):
            try:
                return {str(k): self.describe(f"{prefix}.{k}", v, depth + 1) for k, v in value.items()
                        if isinstance(v, (torch.Tensor, dict, list, tuple)) or hasattr(v, "__dataclass_fields__")}
            except Exception:   # noqa: BLE001
                return None
        if hasattr(value, "__dataclass_fields__"):
            return {k: self.describe(f"{prefix}.{k}", getattr(value, k, None), depth + 1)
                    for k in value.__dataclass_fields__ if isinstance(getattr(value, k, None), torch.Tensor)
                    or isinstance(getattr(value, k, None), (dict, list, tuple))}
        if isinstance(value, (list, tuple)):
            if value and all(isinstance(v, torch.Tensor) for v in value) and len(value) > 64:
                return {"list_of_tensors": len(value)}
            return [self.describe(f"{prefix}.{i}", v, depth + 1) for i, v in enumerate(value)]
        if isinstance(value, (int, float, bool, str)) or value is None:
            return value
        attrs = getattr(value, "__dict__", None)     # a plain output object: its tensor attributes
        if isinstance(attrs, dict) and not isinstance(value, torch.nn.Module):
            return {k: self.describe(f"{prefix}.{k}", v, depth + 1) for k, v in attrs.items()
                    if not k.startswith("_") and isinstance(v, (torch.Tensor, dict, list, tuple))}
        return None

    # ------------------------------------------------------------------ names
    def learn_names(self, module: torch.nn.Module) -> None:
        """Name every parameter of a newly seen model (the names the model itself uses)."""
        if any(m is module for m in self.models):
            return
        self.models.append(module)
        for name, p in module.named_parameters():
            self.names.setdefault(id(p), name)
        if self.layers:
            self._hook_layers(module)

    def name_of(self, p: torch.Tensor, group: int, index: int) -> str:
        return self.names.get(id(p), f"param_group{group}.{index}")

    def _hook_layers(self, module: torch.nn.Module) -> None:
        for name, sub in module.named_modules():
            cls = type(sub).__name__
            leaf = name.rsplit(".", 1)[-1]
            parent_is_layer = any(h in type(module.get_submodule(name.rsplit(".", 1)[0])).__name__
                                  for h in _LAYER_CLASS_HINTS) if "." in name else False
            branch = leaf in BRANCH_NAMES and parent_is_layer
            if any(h in cls for h in _LAYER_CLASS_HINTS) or branch:
                if id(sub) in self.layer_hooks_on:
                    continue
                self.layer_hooks_on.add(id(sub))
                parent = module.get_submodule(name.rsplit(".", 1)[0]) if branch else None
                sub.register_forward_hook(self._layer_hook(name, parent))

    def _layer_hook(self, name: str, parent: torch.nn.Module | None = None):
        # The module's forward (an instance-patched one included), then for a dual-FFN branch the layer's forward
        # that chose its rows; found once.
        site: list[dict[str, Any]] = []

        def hook(module, _inputs, output):
            if _is_compiling() or not self.active:
                return
            with self.lock:
                try:
                    out = output[0] if isinstance(output, (tuple, list)) else output
                    if isinstance(out, torch.Tensor):
                        if not site:
                            site.extend([forward_site(module)] + ([forward_site(parent)] if parent is not None
                                                                  else []))
                        call = len(self.current["model_calls"])
                        self.current["layers"].append({"seq": self.next_seq(), "call": call, "module": name,
                                                       "call_site": site,
                                                       "output": self.keep(f"layer.{call}.{name}", out)})
                except Exception:   # noqa: BLE001
                    self._failed("layer hook")
        return hook

    # ------------------------------------------------------------------ hooks
    def maybe_kill(self) -> None:
        """SIGKILL this process when the step after ENV_KILL_AFTER starts (check-resume's crash)."""
        if self.kill_after and self.step > self.kill_after:
            self.event("killed", reason=f"{ENV_KILL_AFTER}={self.kill_after}")
            sys.stderr.write(f"[higgs-trace] rank {self.rank}: killed after step {self.kill_after} (check-resume)\n")
            sys.stderr.flush()
            os.kill(os.getpid(), 9)

    @_timed
    def model_call(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any, site: list) -> None:
        with self.lock:
            self.close_pending()
            if not self.active:
                return
            try:
                self.learn_names(module)
                k = len(self.current["model_calls"])
                inputs: dict[str, Any] = {}
                hashes: dict[str, Any] = {}
                for i, a in enumerate(args):
                    if isinstance(a, torch.Tensor):
                        inputs[f"arg{i}"] = self.keep(f"call.{k}.in.arg{i}", a)
                for key, v in kwargs.items():
                    if isinstance(v, torch.Tensor):
                        inputs[key] = self.keep(f"call.{k}.in.{key}", v)
                        self.row_hashes(hashes, key, v)
                    elif v is None:
                        inputs[key] = None
                self.current["model_calls"].append({
                    "seq": self.next_seq(), "module_class": type(module).__name__, "call_site": site,
                    "grad_enabled": torch.is_grad_enabled(), "inputs": inputs, "row_hashes": hashes,
                    "outputs": self.describe(f"call.{k}.out", output)})
            except Exception:   # noqa: BLE001
                self._failed("model call")

    @_timed
    def cross_entropy(self, args: tuple, kwargs: dict, result: torch.Tensor, ce_fn, site: list) -> None:
        with self.lock:
            self.close_pending()
            if not self.active:
                return
            try:
                inp, target = args[0], args[1] if len(args) > 1 else kwargs.get("target")
                names = ("weight", "size_average", "ignore_index", "reduce", "reduction", "label_smoothing")
                opts = dict(zip(names, args[2:]))
                opts.update({k: v for k, v in kwargs.items() if k in names})
                reduction = opts.get("reduction", "mean")
                ignore_index = int(opts.get("ignore_index", -100))
                smoothing = float(opts.get("label_smoothing", 0.0))
                k = len(self.current["cross_entropy"])
                rec: dict[str, Any] = {
                    "seq": self.next_seq(), "call_site": site, "reduction": reduction, "ignore_index": ignore_index,
                    "label_smoothing": smoothing, "has_weight": opts.get("weight") is not None,
                    "input_shape": list(inp.shape), "input_dtype": str(inp.dtype).replace("torch.", ""),
                    "classes": int(inp.shape[1]) if inp.dim() >= 2 else int(inp.shape[0]),
                    "requires_grad": bool(inp.requires_grad), "result_requires_grad": bool(result.requires_grad)}
                if isinstance(target, torch.Tensor):
                    rec["target"] = self.keep(f"ce.{k}.target", target)
                    if not target.is_floating_point():
                        self.pending_scalars.append((rec, "supervised", (target != ignore_index).sum()))
                        rec["targets_total"] = int(target.numel())
                rec["result"] = self.keep(f"ce.{k}.result", result)
                if isinstance(target, torch.Tensor) and not target.is_floating_point() and inp.numel() <= 50_000_000:
                    with torch.no_grad():
                        per = ce_fn(inp.detach().float(), target, ignore_index=ignore_index, reduction="none",
                                    label_smoothing=smoothing)
                    rec["per_position"] = self.keep(f"ce.{k}.per_position", per)
                self.current["cross_entropy"].append(rec)
            except Exception:   # noqa: BLE001
                self._failed("cross_entropy")

    @_timed
    def backward(self, loss: Any, site: list, error: str | None = None) -> None:
        with self.lock:
            self.close_pending()
            if not self.active:
                return
            try:
                k = len(self.current["backward"])
                rec: dict[str, Any] = {"seq": self.next_seq(), "call_site": site, "error": error}
                if isinstance(loss, torch.Tensor):
                    rec.update(requires_grad=bool(loss.requires_grad),
                               grad_fn=type(loss.grad_fn).__name__ if loss.grad_fn is not None else None,
                               value=self.keep(f"backward.{k}.loss", loss))
                self.current["backward"].append(rec)
            except Exception:   # noqa: BLE001
                self._failed("backward")

    @_timed
    def clip(self, max_norm: Any, total: Any, site: list) -> None:
        with self.lock:
            try:
                rec = {"seq": self.next_seq(), "call_site": site, "max_norm": float(max_norm), "total_norm": None}
                if isinstance(total, torch.Tensor):
                    self.pending_scalars.append((rec, "total_norm", total))
                elif total is not None:
                    rec["total_norm"] = float(total)
                self.current["clip_grad_norm"].append(rec)
            except Exception:   # noqa: BLE001
                self._failed("clip_grad_norm")

    @_timed
    def scheduler_step(self, sched: Any, site: list) -> None:
        with self.lock:
            try:
                self.current["scheduler"].append({"seq": self.next_seq(), "call_site": site,
                                                  "class": type(sched).__name__,
                                                  "last_lr": [float(x) for x in sched.get_last_lr()],
                                                  "last_epoch": int(getattr(sched, "last_epoch", -1))})
            except Exception:   # noqa: BLE001
                self._failed("scheduler")

    @_timed
    def logged(self, source: str, values: dict[str, Any], site: list) -> None:
        with self.lock:
            try:
                clean = {str(k): float(v) for k, v in values.items()
                         if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)}
                if clean:
                    self.current["logged"].append({"seq": self.next_seq(), "source": source, "values": clean,
                                                   "call_site": site})
            except Exception:   # noqa: BLE001
                self._failed("logged")

    def keep_many(self, keys: list[str], tensors: list[torch.Tensor]) -> list[dict[str, Any]]:
        """`keep` for many tensors at once (gradients, parameters, optimizer state): those above
        max_numel get a summary from two fused multi-tensor kernels for all of them (|sum| = L1 norm,
        max |x| = L-inf norm; non-finite values make both non-finite), not several kernels each."""
        # The same keys come back every step (thousands of adapter tensors): their metadata is read from
        # the tensor once and cached by key, checked against shape, dtype and device (the per-tensor Python
        # of this loop is most of the trace's host time on a LoRA run).
        descs: list[dict[str, Any]] = []
        groups: dict[Any, tuple[list[torch.Tensor], list[dict[str, Any]]]] = {}
        cache = self.meta_cache
        for k, t in zip(keys, tensors):
            meta = cache.get(k)
            if meta is None or meta.layout != (t.shape, t.device, t.dtype):
                meta = cache[k] = _Meta((t.shape, t.device, t.dtype), list(t.shape), str(t.dtype).replace("torch.", ""),
                                        t.device.type, t.numel() > self.max_numel and t.is_floating_point())
            if not meta.summarised:
                descs.append(self.keep(k, t))
                continue
            desc = {"key": k, "shape": meta.shape, "dtype": meta.dtype, "device": meta.device, "stored": False}
            descs.append(desc)
            ts, group_descs = groups.setdefault(meta.layout[1:], ([], []))    # by (device, dtype)
            ts.append(t)
            group_descs.append(desc)
        with torch.no_grad():
            for ts, group_descs in groups.values():
                l1 = torch.stack(torch._foreach_norm(ts, 1)).double()
                linf = torch.stack(torch._foreach_norm(ts, float("inf"))).double()
                self.pending_norms.append((group_descs, l1, linf))
        return descs

    @_timed
    def optimizer_pre(self, opt: torch.optim.Optimizer) -> None:
        with self.lock:
            self.close_pending()
            if not self.active:
                return
            try:
                groups, grads = [], {}
                keys, ts, names = [], [], []
                for g, group in enumerate(opt.param_groups):
                    hp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()
                          if k != "params" and isinstance(v, (int, float, bool, str, tuple))}
                    hp["num_params"] = len(group["params"])
                    hp["names"] = [self.name_of(p, g, i) for i, p in enumerate(group["params"])]
                    groups.append(hp)
                    for i, p in enumerate(group["params"]):
                        name = self.name_of(p, g, i)
                        grads[name] = None
                        if p.grad is not None:
                            keys.append(f"grad.{name}"), ts.append(p.grad), names.append(name)
                        if self.step == self.first:
                            keys.append(f"param_before.{name}"), ts.append(p), names.append(None)
                for name, desc in zip(names, self.keep_many(keys, ts)):
                    if name is not None:
                        grads[name] = desc
                self.current["optimizer"] = {"seq": self.next_seq(), "class": type(opt).__name__,
                                             "call_site": call_site(), "param_groups": groups, "grads": grads,
                                             "rng": rng_fingerprint()}
            except Exception:   # noqa: BLE001
                self._failed("optimizer pre-step")

    @_timed
    def optimizer_post(self, opt: torch.optim.Optimizer) -> None:
        with self.lock:
            try:
                rec = self.current["optimizer"] or {"param_groups": [], "grads": {}}
                params, state = {}, {}
                keys, ts, slots = [], [], []
                for g, group in enumerate(opt.param_groups):
                    for i, p in enumerate(group["params"]):
                        name = self.name_of(p, g, i)
                        keys.append(f"param.{name}"), ts.append(p), slots.append((name, None))
                        state[name] = {}
                        for k, v in opt.state.get(p, {}).items():
                            if isinstance(v, torch.Tensor) and v.numel() > 1:
                                keys.append(f"state.{name}.{k}"), ts.append(v), slots.append((name, k))
                            elif isinstance(v, torch.Tensor):
                                self.pending_scalars.append((state[name], k, v))
                            elif isinstance(v, (int, float)):
                                state[name][k] = float(v)
                for (name, k), desc in zip(slots, self.keep_many(keys, ts)):
                    if k is None:
                        params[name] = desc
                    else:
                        state[name][k] = desc
                rec.update(params_after=params, state=state, post_seq=self.next_seq())
                self.current["optimizer"] = rec
                self.pending = True   # scheduler/clip/logging right after the step still belong to it
            except Exception:   # noqa: BLE001
                self._failed("optimizer post-step")

    def close_pending(self) -> None:
        """Write the finished step once the next one starts (its first model call, CE, backward or
        optimizer step) or the process ends."""
        if self.pending:
            self.pending = False
            try:
                self.flush(complete=True)
            except Exception:   # noqa: BLE001
                self._failed("optimizer post-step")

    # ------------------------------------------------------------------ output
    def flush(self, complete: bool) -> None:
        """Write the current step (complete after an optimizer step; else the run ended inside it)."""
        if self.step > self.last:
            return
        has_content = any(self.current[k] for k in ("model_calls", "cross_entropy", "backward", "logged")) \
            or self.current["optimizer"] is not None
        if not has_content:
            return
        t0 = time.perf_counter()
        self._ensure_dir()
        base = os.path.join(self.dir, f"step-{self.step:04d}")
        self.current.update(step=self.step, rank=self.rank, world_size=self.world_size, complete=complete,
                            format_version=FORMAT_VERSION)
        t_read = time.perf_counter()
        self._fill_summaries()
        readback = time.perf_counter() - t_read
        tensors, self.tensors = self.tensors, {}
        self.in_flush = True
        try:
            from safetensors.torch import save_file
            save_file(tensors, base + ".safetensors")
            self.current["tensor_file"] = os.path.basename(base) + ".safetensors"
        except Exception:   # noqa: BLE001  (safetensors absent or refusing a tensor): plain torch
            torch.save(tensors, base + ".pt")
            self.current["tensor_file"] = os.path.basename(base) + ".pt"
        finally:
            self.in_flush = False
        # The recorder's cost for this step: host time in its recording methods, in its summaries and in
        # writing the previous step's files (host_s; the call-site capture done before each method, layer
        # hooks and events are not counted), and the read-back of the summaries and row hashes, which
        # also waits for the GPU to finish the step's queued work (readback_s).
        self.current["recorder"] = {"host_s": round(self.host_s + time.perf_counter() - t0 - readback, 5),
                                    "readback_s": round(readback, 5)}
        # json.dumps, not json.dump: only the one-shot encoder is C (json.dump to a file runs the pure-Python
        # encoder, about 10x slower on a step with thousands of tensor descriptions).
        t_write = time.perf_counter()
        text = json.dumps(self.current, default=str)
        with open(base + ".json", "w", encoding="utf-8") as fh:
            fh.write(text)
        sys.stderr.write(f"[higgs-trace] rank {self.rank}: step {self.step} recorded "
                         f"({len(tensors)} tensors{'' if complete else ', run ended inside the step'})\n")
        sys.stderr.flush()
        self.step += 1
        self.current = self._empty_step()
        self.host_s = time.perf_counter() - t_write     # this step's file writing, booked to the next step
        self.flush_s += time.perf_counter() - t0


_RECORDER: Recorder | None = None


def _patch(owner: Any, name: str, make) -> None:
    orig = getattr(owner, name, None)
    if orig is not None and not getattr(orig, "_higgs_trace", False):
        new = make(orig)
        new._higgs_trace = True
        setattr(owner, name, new)


def install() -> Recorder | None:
    """Install the hooks once, configured from the environment; None when HIGGS_TRACE_DIR is unset."""
    global _RECORDER
    out = os.environ.get(ENV_DIR)
    if not out or _RECORDER is not None:
        return _RECORDER
    rec = Recorder(out, int(os.environ.get(ENV_STEPS, "3")), os.environ.get(ENV_LAYERS, "") == "1",
                   int(os.environ.get(ENV_MAX_NUMEL, str(4_000_000))))
    _RECORDER = rec
    F = torch.nn.functional

    def opt_init(orig):
        def __init__(self, params, *a, **kw):
            orig(self, params, *a, **kw)
            try:
                for group in self.param_groups:
                    for p in group["params"]:
                        rec.optimizer_params[id(p)] = p
                rec.owns_cache.clear()
            except Exception:   # noqa: BLE001
                rec._failed("optimizer init")
        return __init__
    _patch(torch.optim.Optimizer, "__init__", opt_init)
    import importlib
    _optim = importlib.import_module("torch.optim.optimizer")
    importlib.import_module("torch.optim.lr_scheduler")
    _optim.register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: rec.optimizer_pre(opt))
    _optim.register_optimizer_step_post_hook(
        lambda opt, args, kwargs: rec.optimizer_post(opt) if rec.active and not rec.pending else rec.count_step())

    def module_call(orig):
        def __call__(self, *args, **kwargs):
            if _is_compiling() or rec.model_depth or not rec.active or not rec.optimizer_params \
                    or not torch.is_grad_enabled():
                return orig(self, *args, **kwargs)
            owns = rec.owns_cache.get(id(self))
            if owns is None:
                owns = rec.owns_cache[id(self)] = any(id(p) in rec.optimizer_params for p in self.parameters())
            if not owns:
                return orig(self, *args, **kwargs)
            if rec.pending:
                with rec.lock:
                    rec.close_pending()
            rec.maybe_kill()
            if rec.layers:
                with rec.lock:
                    rec.learn_names(self)    # layer hooks in place before the first call, not after it
            rec.model_depth += 1
            try:
                out = orig(self, *args, **kwargs)
            finally:
                rec.model_depth -= 1
            rec.model_call(self, args, kwargs, out, call_site())
            return out
        return __call__
    _patch(torch.nn.Module, "__call__", module_call)

    def ce(orig):
        def cross_entropy(*args, **kwargs):
            result = orig(*args, **kwargs)
            if not _is_compiling() and rec.active and not rec.in_ce:
                rec.in_ce = True
                try:
                    rec.cross_entropy(args, kwargs, result, orig, call_site())
                finally:
                    rec.in_ce = False
            return result
        return cross_entropy
    _patch(F, "cross_entropy", ce)

    def tensor_backward(orig):
        def backward(self, *args, **kwargs):
            if not rec.active or rec.in_backward:
                return orig(self, *args, **kwargs)
            rec.in_backward = True
            try:
                orig(self, *args, **kwargs)
            except Exception as exc:
                rec.backward(self, call_site(), error=f"{type(exc).__name__}: {exc}")
                raise
            finally:
                rec.in_backward = False
            rec.backward(self, call_site())
        return backward
    _patch(torch.Tensor, "backward", tensor_backward)

    def autograd_backward(orig):
        def backward(tensors, *args, **kwargs):
            if rec.active and not rec.in_backward:
                first = tensors[0] if isinstance(tensors, (list, tuple)) and tensors else tensors
                rec.in_backward = True
                try:
                    out = orig(tensors, *args, **kwargs)
                except Exception as exc:
                    rec.backward(first, call_site(), error=f"{type(exc).__name__}: {exc}")
                    raise
                finally:
                    rec.in_backward = False
                rec.backward(first, call_site())
                return out
            return orig(tensors, *args, **kwargs)
        return backward
    _patch(torch.autograd, "backward", autograd_backward)

    def clip(orig):
        def clip_grad_norm_(parameters, max_norm, *args, **kwargs):
            total = orig(parameters, max_norm, *args, **kwargs)
            if rec.active:
                rec.clip(max_norm, total, call_site())
            return total
        return clip_grad_norm_
    _clip_mod = importlib.import_module("torch.nn.utils.clip_grad")
    _patch(_clip_mod, "clip_grad_norm_", clip)
    torch.nn.utils.clip_grad_norm_ = _clip_mod.clip_grad_norm_

    def sched_step(orig):
        def step(self, *args, **kwargs):
            out = orig(self, *args, **kwargs)
            if rec.active and rec.optimizer_params:
                rec.scheduler_step(self, call_site())
            return out
        return step
    _patch(torch.optim.lr_scheduler.LRScheduler, "step", sched_step)

    def saver(orig, what):
        def save(obj, f, *args, **kwargs):
            if rec.in_flush:
                return orig(obj, f, *args, **kwargs)
            try:
                out = orig(obj, f, *args, **kwargs)
            except Exception as exc:
                rec.event("save_error", api=what, path=str(f), error=f"{type(exc).__name__}: {exc}",
                          call_site=call_site())
                raise
            keys = sorted(obj)[:20] if isinstance(obj, dict) else None
            rec.event("save", api=what, path=str(f), keys=keys, call_site=call_site())
            return out
        return save

    def loader(orig, what):
        def load(f, *args, **kwargs):
            out = orig(f, *args, **kwargs)
            if rec.optimizer_params or rec.step > 1:
                rec.event("load", api=what, path=str(f), call_site=call_site())
            return out
        return load
    _patch(torch, "save", lambda o: saver(o, "torch.save"))
    _patch(torch, "load", lambda o: loader(o, "torch.load"))
    try:
        import safetensors.torch as st
        _patch(st, "save_file", lambda o: saver(o, "safetensors.save_file"))
        _patch(st, "load_file", lambda o: loader(o, "safetensors.load_file"))
    except Exception:   # noqa: BLE001  (safetensors not installed in the traced interpreter)
        pass
    _install_logging_hooks(rec)

    def on_exit() -> None:
        if rec.pending:
            rec.close_pending()
        else:
            rec.flush(complete=False)
        if rec.started:
            rec.event("end", steps_recorded=rec.step - 1)
    atexit.register(on_exit)
    prev_hook = sys.excepthook

    def excepthook(tp, value, tb):
        rec.event("uncaught_exception", error=f"{tp.__name__}: {value}",
                  traceback="".join(traceback.format_exception(tp, value, tb, limit=12)))
        prev_hook(tp, value, tb)
    sys.excepthook = excepthook
    return rec


def _install_logging_hooks(rec: Recorder) -> None:
    """TensorBoard's add_scalar and HF Trainer.log, patched when (and if) their modules are imported."""
    import importlib.abc
    import importlib.machinery

    targets = {"torch.utils.tensorboard.writer": ("SummaryWriter", "add_scalar"),
               "transformers.trainer": ("Trainer", "log")}

    def patch_module(mod: Any) -> None:
        cls_name, meth = targets[mod.__name__]
        cls = getattr(mod, cls_name, None)
        if cls is None:
            return
        if meth == "add_scalar":
            def make(orig):
                def add_scalar(self, tag, scalar_value, global_step=None, *a, **kw):
                    if rec.active:
                        rec.logged("tensorboard", {str(tag): scalar_value}, call_site())
                    return orig(self, tag, scalar_value, global_step, *a, **kw)
                return add_scalar
        else:
            def make(orig):
                def log(self, logs, *a, **kw):
                    if rec.active and isinstance(logs, dict):
                        rec.logged("trainer.log", logs, call_site())
                    return orig(self, logs, *a, **kw)
                return log
        _patch(cls, meth, make)

    for name in targets:
        if name in sys.modules:
            patch_module(sys.modules[name])

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname not in targets:
                return None
            for finder in sys.meta_path:
                if finder is self:
                    continue
                spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
                if spec is not None and spec.loader is not None:
                    loader = spec.loader
                    orig_exec = loader.exec_module

                    def exec_module(module, _orig=orig_exec):
                        _orig(module)
                        try:
                            patch_module(module)
                        except Exception:   # noqa: BLE001
                            rec._failed("logging hook")
                    loader.exec_module = exec_module
                    return spec
            return None
    sys.meta_path.insert(0, Finder())
