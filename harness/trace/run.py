"""`higgs-diff trace --out DIR -- COMMAND ...`: run a training command with the recorder injected.

    higgs-diff trace --out traces/ref -- python -m reference_impl.train --max-steps 3
    higgs-diff trace --out traces/cus --steps 3 -- torchrun --nproc-per-node 2 -m custom_impl.train
    higgs-diff trace --out traces/x --layers -- python my_train.py --config cfg.yaml

The command runs unchanged, in its own process (every rank under torchrun), with
``harness/trace/boot`` first on ``PYTHONPATH``; the recorder (`harness.trace.recorder`) writes
``DIR/rank<R>/step-<NNNN>.{json,safetensors}`` for the first ``--steps`` optimizer steps and
``DIR/rank<R>/events.jsonl``.  This command adds ``DIR/trace.json`` (the command, its exit status,
the ranks and steps recorded) and ``DIR/command.log`` (everything the command printed).

Exit status: the command's own (so a failing run stays visible to scripts); 2 for bad usage.
A run that fails is still a complete trace: compare it like any other.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

BOOT_DIR = Path(__file__).resolve().parent / "boot"
EXIT_USAGE = 2
INDEX = "trace.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="higgs-diff trace",
        description="Run a training command unchanged and record what its first optimizer steps really do: "
                    "the batch reaching the model, model outputs, every cross-entropy call, the back-propagated "
                    "loss, gradients, optimizer state, learning rates, parameters after each step, checkpoint "
                    "saves/loads and the logged losses.",
        epilog="Everything after `--` is the command. Compare two traces with `higgs-diff compare-traces A B`.")
    p.add_argument("--out", type=Path, required=True, help="trace folder to create (must be empty or absent)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps to record (default: %(default)s)")
    p.add_argument("--start-step", type=int, default=1, metavar="N",
                   help="first optimizer step to record, counting from 1 (default: %(default)s): record a window "
                        "later in the run, e.g. where a loss goes wrong; the steps before it run untraced")
    p.add_argument("--layers", action="store_true",
                   help="also record every decoder layer's output and each dual-FFN branch (larger traces)")
    p.add_argument("--max-numel", type=int, default=4_000_000,
                   help="tensors with more elements are kept as summaries only (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=None, help="stop the command after this many seconds")
    p.add_argument("--quiet", action="store_true", help="do not echo the command's output (still in command.log)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    return p


# Intel MKL (torch's CPU BLAS) may round differently from one process to the next, with the memory
# alignment of its buffers, unless its Conditional Numerical Reproducibility mode is on.  Commands that run
# one program several times and expect the same numbers (check-resume, check-flags) set it.
REPRODUCIBLE_ENV = {"MKL_CBWR": "AUTO,STRICT"}


def reproducible_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """`base` (default: this process's environment) with `extra`, and MKL's reproducible mode unless the
    caller's environment already chooses one."""
    env = dict(os.environ if base is None else base, **extra)
    for k, v in REPRODUCIBLE_ENV.items():
        env.setdefault(k, v)
    return env


def trace_env(out: Path, steps: int, layers: bool, max_numel: int, base: dict[str, str] | None = None,
              start_step: int = 1) -> dict[str, str]:
    """The environment that injects the recorder into every Python process the command starts."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(BOOT_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update({"HIGGS_TRACE_DIR": str(out.resolve()), "HIGGS_TRACE_STEPS": str(steps),
                "HIGGS_TRACE_LAYERS": "1" if layers else "0", "HIGGS_TRACE_MAX_NUMEL": str(max_numel),
                "HIGGS_TRACE_START_STEP": str(start_step)})
    return env


def run_traced(command: Sequence[str], out: Path, *, steps: int = 3, layers: bool = False,
               max_numel: int = 4_000_000, timeout: float | None = None, echo: bool = True,
               env: dict[str, str] | None = None, cwd: Path | None = None, start_step: int = 1) -> int:
    """Run `command` with the recorder; write ``out/trace.json`` and ``out/command.log``; its exit status.

    Raises FileExistsError when `out` exists and is not empty (a trace is never mixed with another).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"trace folder {str(out)!r} is not empty; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log_path = out / "command.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(command), env=trace_env(out, steps, layers, max_numel, env, start_step), cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def pump() -> None:
            for line in iter(proc.stdout.readline, b""):
                log.write(line)
                log.flush()
                if echo:
                    sys.stderr.buffer.write(line)
                    sys.stderr.flush()
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            code, timed_out = proc.wait(), True
        reader.join(timeout=10)
    ranks = sorted(p.name for p in out.glob("rank*") if p.is_dir())
    index = {
        "format_version": 1, "command": list(command), "command_line": shlex.join(command),
        "cwd": str(Path(cwd or os.getcwd()).resolve()), "exit_code": code, "timed_out": timed_out,
        "seconds": round(time.time() - t0, 2), "steps_requested": steps, "start_step": start_step, "layers": layers,
        "max_numel": max_numel,
        "ranks": {r: sorted(int(p.stem.split("-")[1]) for p in (out / r).glob("step-*.json")) for r in ranks},
    }
    (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        p.error("no command given: higgs-diff trace --out DIR -- COMMAND ...")
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.start_step < 1:
        p.error("--start-step must be at least 1")
    try:
        code = run_traced(command, args.out, steps=args.steps, layers=args.layers, max_numel=args.max_numel,
                          timeout=args.timeout, echo=not args.quiet, start_step=args.start_step)
    except FileExistsError as exc:
        print(f"higgs-diff trace: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as exc:
        print(f"higgs-diff trace: cannot run {command[0]!r}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    index = json.loads((args.out / INDEX).read_text())
    steps = {r: len(s) for r, s in index["ranks"].items()}
    print(f"trace written to {args.out}: {steps or 'no steps recorded'}; command exit status {code}",
          file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
