"""Resume you can trust: the configuration stored in every checkpoint, checkpoint discovery that
survives a corrupt newest checkpoint, and save errors that name the path and the step.

Both training CLIs use this (`custom_impl.train`'s own checkpoints and `reference_impl.train`'s HF
Trainer checkpoints); the format-specific part ("is this folder a complete checkpoint") stays with
each CLI and is passed in as `is_complete`.

* `CONFIG_FILE` (effective_config.json) in every checkpoint: the run's effective configuration, a
  nested dict of JSON values.  `check_resume_config` compares it, key by key (flattened with
  dots), with the configuration of the resuming run: any difference refuses the resume naming
  each key (old -> new), unless the user passed ``--resume-override-config``; then the
  differences are appended to the run folder's `OVERRIDES_FILE` (resume_overrides.jsonl) and
  printed, and the new values are what the run uses (`apply_learning_rate` makes a new learning
  rate win over the one in the loaded optimizer and scheduler state).
* `INTEGRITY_FILE` (checkpoint_files.json) in every checkpoint: size and SHA-256 of each file,
  written last.  `verify_checkpoint` recomputes them (reading every byte once: about a second per
  GB), so a truncated or overwritten file is found before any loader sees it.  Checkpoints written
  before this existed have no record and are trusted as before.
* `resolve_resume`: the newest checkpoint that is complete and verifies; each one skipped is
  reported on stderr by path with its reason, and so is the one used instead.
* `save_errors`: an OSError (ENOSPC, EACCES, EDQUOT, EROFS, ...) or torch's zip-writer failure
  ("unexpected pos ...", what a full disk gives inside `torch.save`) while writing a checkpoint
  becomes a `CheckpointSaveError` naming the folder, the step, the reason and the previous
  checkpoint, which is left intact.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, TextIO

from higgs_common.stages import HiggsDiffError

CONFIG_FILE = "effective_config.json"
INTEGRITY_FILE = "checkpoint_files.json"
OVERRIDES_FILE = "resume_overrides.jsonl"
OVERRIDE_FLAG = "--resume-override-config"
_MISSING = "<absent>"


class CheckpointError(HiggsDiffError):
    """Base class of the resume and save errors below."""


class ResumeConfigError(CheckpointError, ValueError):
    """The resuming run's settings differ from the checkpoint's (each key named old -> new)."""


class NoUsableCheckpointError(CheckpointError, FileNotFoundError):
    """No complete, verifying checkpoint to resume from (each candidate named with its reason)."""


class CheckpointSaveError(CheckpointError, OSError):
    """Writing a checkpoint failed (disk full, permissions, ...); names the folder, step and previous checkpoint."""


# ----------------------------------------------------------------------------- configuration
def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves (tuples become lists, as in JSON)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` as it reads back from JSON (paths and other objects as strings, tuples as lists)."""
    return json.loads(json.dumps(config, default=str))


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every flattened key whose value differs or exists on one side only."""
    a, b = flatten(jsonable(old)), flatten(jsonable(new))
    return [(k, a.get(k, _MISSING), b.get(k, _MISSING)) for k in sorted(set(a) | set(b)) if a.get(k, _MISSING)
            != b.get(k, _MISSING)]


def write_config(folder: Path, config: Mapping[str, Any]) -> Path:
    """Write `config` (JSON) into checkpoint `folder`; returns the file."""
    path = Path(folder) / CONFIG_FILE
    path.write_text(json.dumps(jsonable(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_config(folder: Path) -> Optional[dict[str, Any]]:
    """The configuration stored in checkpoint `folder`, or None when it has none (older checkpoints)."""
    path = Path(folder) / CONFIG_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def check_resume_config(checkpoint: Path, current: Mapping[str, Any], *, override: bool, run_dir: Path,
                        stream: TextIO | None = None, record: bool = True) -> list[tuple[str, Any, Any]]:
    """Compare `current` with the configuration stored in `checkpoint`.

    No difference: returns []. Differences without `override`: raises ResumeConfigError listing
    each key (old -> new) and the flag that accepts them.  With `override`: prints them to `stream`
    (stderr), appends {time, checkpoint, differences} to `run_dir`/OVERRIDES_FILE when `record`
    (rank 0), and returns them.  A checkpoint without a stored configuration is resumed with a note.
    """
    stream = stream if stream is not None else sys.stderr
    old = read_config(checkpoint)
    if old is None:
        print(f"resume: {checkpoint} stores no configuration ({CONFIG_FILE}); settings cannot be compared",
              file=stream, flush=True)
        return []
    diffs = config_diff(old, current)
    if not diffs:
        return []
    listing = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs)
    if not override:
        raise ResumeConfigError(
            f"--resume: this run's settings differ from those of checkpoint {str(checkpoint)!r} in {len(diffs)} "
            f"key(s): {listing}.  Resume with the checkpoint's settings, or pass {OVERRIDE_FLAG} to continue "
            f"with the new ones (recorded in {OVERRIDES_FILE} of the run folder)")
    print(f"resume: {OVERRIDE_FLAG}: continuing from {checkpoint} with changed settings: {listing}", file=stream,
          flush=True)
    if record:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": str(checkpoint),
                 "differences": [{"key": k, "old": a, "new": b} for k, a, b in diffs]}
        with (Path(run_dir) / OVERRIDES_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, default=str) + "\n")
    return diffs


def apply_learning_rate(optimizer: Any, scheduler: Any, lr: float) -> None:
    """Make `lr` the base learning rate after loading optimizer/scheduler state that carries another one.

    Sets every param group's ``initial_lr`` and the scheduler's ``base_lrs`` to `lr`, then the
    current ``lr`` to what the schedule gives at its restored step (``lr * lambda(last_epoch)`` for
    the LambdaLR schedules both pipelines use).  Raises TypeError for another scheduler type.
    """
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is None:
        raise TypeError(f"cannot change the learning rate of a {type(scheduler).__name__} (a LambdaLR is expected)")
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group, fn in zip(optimizer.param_groups, lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * fn(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


# ----------------------------------------------------------------------------- integrity
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_integrity(folder: Path) -> Path:
    """Record size and SHA-256 of every file under checkpoint `folder` (written last, atomically)."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != INTEGRITY_FILE}
    tmp = folder / (INTEGRITY_FILE + ".tmp")
    tmp.write_text(json.dumps({"files": files}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, folder / INTEGRITY_FILE)
    return folder / INTEGRITY_FILE


def verify_checkpoint(folder: Path) -> Optional[str]:
    """None when every file recorded in `folder`'s INTEGRITY_FILE is there with its size and SHA-256
    (or there is no record: older checkpoints), else the first reason it is unusable."""
    record = Path(folder) / INTEGRITY_FILE
    if not record.is_file():
        return None
    try:
        files = json.loads(record.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"its {INTEGRITY_FILE} is unreadable ({exc})"
    for name, want in files.items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want["bytes"]:
            return f"{name} has {size} bytes, {want['bytes']} were written (truncated or overwritten)"
        if _sha256(path) != want["sha256"]:
            return f"{name} does not match the SHA-256 recorded when it was written (corrupted)"
    return None


def checkpoint_step(path: Path) -> Optional[int]:
    """N of a `checkpoint-N` folder name, else None."""
    name = Path(path).name
    return int(name[11:]) if name.startswith("checkpoint-") and name[11:].isdigit() else None


def resolve_resume(target: Path, *, is_complete: Callable[[Path], bool], stream: TextIO | None = None) -> Path:
    """`--resume` target -> the checkpoint folder to load.

    `target` a checkpoint folder: that one, which must be complete and verify (else
    NoUsableCheckpointError naming it).  `target` a run folder: its newest `checkpoint-N` that is
    complete and verifies; every newer one skipped is printed to `stream` (stderr) with its path and
    reason, and so is the one used.  NoUsableCheckpointError when none is left.
    """
    stream = stream if stream is not None else sys.stderr
    target = Path(target)
    if checkpoint_step(target) is not None and target.is_dir():
        reason = "its save did not finish (incomplete)" if not is_complete(target) else verify_checkpoint(target)
        if reason is not None:
            raise NoUsableCheckpointError(f"--resume: checkpoint {str(target)!r} is unusable: {reason}")
        return target
    candidates = sorted((p for p in target.glob("checkpoint-*") if checkpoint_step(p) is not None and p.is_dir()),
                        key=checkpoint_step, reverse=True) if target.is_dir() else []
    skipped: list[str] = []
    for p in candidates:
        reason = "its save did not finish (incomplete)" if not is_complete(p) else verify_checkpoint(p)
        if reason is None:
            if skipped:
                print(f"resume: using {p} (step {checkpoint_step(p)}), the newest loadable checkpoint", file=stream,
                      flush=True)
            return p
        skipped.append(f"{p}: {reason}")
        print(f"resume: skipping checkpoint {p}: {reason}", file=stream, flush=True)
    why = f" (skipped: {'; '.join(skipped)})" if skipped else ""
    raise NoUsableCheckpointError(
        f"--resume: no complete checkpoint-<step> folder that verifies in {str(target)!r}{why}")


# ----------------------------------------------------------------------------- save errors
_WRITER_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")


def _reason(exc: BaseException, folder: Path) -> Optional[str]:
    """Why a save failed, in words, or None when `exc` is not a write failure."""
    if isinstance(exc, OSError) and not isinstance(exc, CheckpointSaveError):
        name = errno.errorcode.get(exc.errno or 0, "")
        return f"{exc.strerror or exc} ({name})" if name else str(exc)
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _WRITER_FAILURES):
        probe = folder if folder.exists() else folder.parent
        try:
            free = shutil.disk_usage(probe).free
        except OSError:
            free = -1
        return (f"torch could not write the file ({str(exc).splitlines()[-1].strip()}); "
                f"{free / 2**20:.1f} MiB free on that device (a full disk gives this)")
    return None


@contextmanager
def save_errors(folder: Path, step: int, *, previous: Optional[Path], cleanup: Optional[Path] = None) -> Iterator[None]:
    """Turn a write failure inside the block into CheckpointSaveError naming `folder`, `step` and
    `previous` (which the caller's save never touches); `cleanup` (the half-written folder) is removed."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        reason = _reason(exc, Path(folder))
        if reason is None:
            raise
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        kept = (f"the previous checkpoint {str(previous)!r} is intact" if previous is not None
                else "there is no earlier checkpoint")
        removed = ", the half-written folder was removed" if cleanup is not None else ""
        raise CheckpointSaveError(f"cannot save the checkpoint of step {step} to {str(folder)!r}: {reason}; "
                                  f"{kept}{removed}") from exc
