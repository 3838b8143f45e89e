"""`higgs-diff check-flags -- COMMAND ...`: every option must change the run where it acts, or be declared inert.

    higgs-diff check-flags -- python -m custom_impl.train
    higgs-diff check-flags --only lr,weight-decay -- python my_train.py --config c.yaml

The options come from the command's ``--help`` (`harness.trace.options`).  A baseline run and one run
per option are traced for ``--steps`` optimizer steps (`harness.trace.run`) and compared
(`harness.trace.compare`): a boolean option is switched on; a numeric one is set to a value that
differs from its default (twice its shown default, else a value chosen from its name, then a
second one, since an unknown default may equal the first).  Where the two traces part (stage and
field) is where the option acts.  An option whose value changes no recorded tensor, learning
rate, loss or logged value is **ignored by the code**, unless it is declared inert: paths, output
and logging options, guards, and options that only act on other data (``--inert`` adds more).

Exit status: 0 every exercised option acts or is declared inert, 1 some option is ignored, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from harness.trace.options import Option, help_text, parse_help

EXIT_OK, EXIT_IGNORED, EXIT_USAGE = 0, 1, 2
# Options that by their nature change no recorded training tensor: where output goes, how often it is
# saved or logged, which device, which checks run, what is resumed, which faults or data are used.
INERT_BY_NAME = re.compile(r"output|save|logging|log-|report|resume|device|cpu|allow|skip|bucket|timeout|"
                           r"max-audio|speech-floor|data|model-path|tokenizer-path|fault|speed|help|version|quiet|"
                           r"verbose|num-train-epochs|max-steps", re.IGNORECASE)
FLOAT_HINTS = re.compile(r"(^|-)lr$|learning-rate|rate|decay|dropout|norm|eps|beta|smooth|clip|weight|temperature|scale",
                         re.IGNORECASE)
INT_HINTS = re.compile(r"steps|size|accum|every|rank|alpha|seed|epochs|layers|workers|(^|-)r$|count|num", re.IGNORECASE)


@dataclass
class FlagResult:
    option: str
    value: str | None
    verdict: str          # acts | ignored | inert | not_exercised | failed
    where: str | None = None
    detail: str | None = None

    def to_json(self) -> dict:
        return self.__dict__.copy()


def _names(text: str) -> list[str]:
    """``lr,--weight-decay`` -> ``["--lr", "--weight-decay"]``."""
    return [n if n.startswith("-") else f"--{n}" for n in (x.strip() for x in text.split(",")) if n]


def candidate_values(opt: Option) -> list[str]:
    """Values to try for a numeric option (empty: not exercised)."""
    if opt.choices:
        return []
    name = opt.name.lstrip("-")
    if opt.default is not None:
        d = opt.default
        return [repr(d * 2 if d else 1.0), repr(d / 2 if d else 0.5)] if not float(d).is_integer() or "e" in repr(d) \
            else [str(int(d) + 1), str(int(d) + 2)]
    if INT_HINTS.search(name):
        return ["3", "5"]
    if FLOAT_HINTS.search(name):
        return ["0.0123", "0.0456"]
    return []


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="higgs-diff check-flags",
        description="Change each option of a training command in turn (from its --help) and name every option whose "
                    "value the run ignores; for the others, say where they act (stage and field of the first change).",
        epilog="exit status: 0 every exercised option acts or is declared inert, 1 some option is ignored, 2 bad usage.")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps traced per run (default: %(default)s)")
    p.add_argument("--only", type=_names, default=None, metavar="NAMES",
                   help="exercise only these options, comma-separated, with or without dashes (lr,weight-decay)")
    p.add_argument("--inert", type=_names, default=[], metavar="NAMES",
                   help="options declared inert on this data, comma-separated")
    p.add_argument("--work-dir", type=Path, default=None, help="runs and traces (default: a temp folder)")
    p.add_argument("--out", type=Path, default=None, help="write flags.json here (default: WORK_DIR/flags.json)")
    p.add_argument("--timeout", type=float, default=900.0, help="per run, seconds (default: %(default)s)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = p.parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        p.error("no command given: higgs-diff check-flags -- COMMAND ...")
    options = parse_help(help_text(command))
    if not options:
        print("higgs-diff check-flags: the command's --help lists no options", file=sys.stderr)
        return EXIT_USAGE
    if args.only:
        known = {f for o in options for f in o.flags}
        unknown = [f for f in args.only if f not in known]
        if unknown:
            print(f"higgs-diff check-flags: the command has no option {', '.join(unknown)}", file=sys.stderr)
            return EXIT_USAGE
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="higgs-check-flags-"))
    work.mkdir(parents=True, exist_ok=True)
    results = check_flags(command, options, work, steps=args.steps, only=args.only, inert=args.inert,
                          timeout=args.timeout)
    if results is None:
        return EXIT_USAGE
    out = args.out or work / "flags.json"
    out.write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
    _print(results, out)
    return EXIT_IGNORED if any(r.verdict == "ignored" for r in results) else EXIT_OK


def check_flags(command: Sequence[str], options: Sequence[Option], work: Path, *, steps: int,
                only: Sequence[str] | None, inert: Sequence[str], timeout: float) -> list[FlagResult] | None:
    from harness.trace.compare import compare_traces
    from harness.trace.load import Trace
    from harness.trace.run import reproducible_env, run_traced
    from harness.trace.symptoms import symptoms

    out_flag = next((o.name for o in options if o.name in ("--output-dir", "--output_dir")), None)
    n = [0]

    def traced(extra: list[str]) -> tuple[int, Path]:
        n[0] += 1
        tag = f"run{n[0]:02d}"
        cmd = list(command) + extra + ([out_flag, str(work / f"{tag}-out")] if out_flag else [])
        print(f"check-flags: {' '.join(extra) or '(baseline)'}", file=sys.stderr, flush=True)
        return (run_traced(cmd, work / f"{tag}-trace", steps=steps, echo=False, timeout=timeout, env=reproducible_env()),
                work / f"{tag}-trace")

    code, base_dir = traced([])
    if code != 0:
        print(f"higgs-diff check-flags: the baseline run failed (exit {code}); see {base_dir / 'command.log'}",
              file=sys.stderr)
        return None
    base = Trace.load(base_dir)
    results: list[FlagResult] = []
    for opt in options:
        if only and not any(f in only for f in opt.flags):
            continue
        declared = any(f in inert for f in opt.flags) or (not only and INERT_BY_NAME.search(opt.name))
        if declared and not only:
            results.append(FlagResult(opt.name, None, "inert", detail="declared inert (paths, output, guards, data)"))
            continue
        values = [None] if opt.is_boolean else candidate_values(opt)
        if not values:
            results.append(FlagResult(opt.name, None, "not_exercised",
                                      detail="no value to try (choices or unknown kind); use --only with a value "
                                             "in the command instead"))
            continue
        result = None
        for v in values:
            code, d = traced([opt.name] + ([] if v is None else [v]))
            if code != 0:
                result = FlagResult(opt.name, v, "failed", detail=f"the run exited with {code} ({d / 'command.log'})")
                break
            variant = Trace.load(d)
            report = compare_traces(base, variant)
            # The option acts where a recorded value changed; a symptom alone (e.g. "the command line asks
            # --lr X, the optimizer uses Y") is the run telling us the value did NOT arrive.
            moved = next((f for st in report.ordered_stages() for f in st.fields
                          if f.unexpected and not f.field.startswith("symptom.")), None)
            unheard = [sm for sm in symptoms(variant) if sm.kind == "hyperparameter" and opt.name in sm.text]
            if unheard:
                result = FlagResult(opt.name, v, "ignored", detail=f"{unheard[0].text}: {unheard[0].mechanism}")
                break
            if moved is not None:
                cause = moved.cause.get("mechanism") if isinstance(moved.cause, dict) else moved.cause
                result = FlagResult(opt.name, v, "acts", f"{moved.stage}: {moved.field}", cause)
                break
            result = FlagResult(opt.name, v, "inert" if declared else "ignored",
                                detail="no recorded tensor, learning rate, loss or logged value changed")
        results.append(result)
    return results


def _print(results: Sequence[FlagResult], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="check-flags")
    for col in ("option", "value", "verdict", "where it acts / why"):
        table.add_column(col, overflow="fold")
    style = {"acts": "green", "ignored": "bold red", "inert": "dim", "not_exercised": "yellow", "failed": "bold red"}
    for r in results:
        table.add_row(r.option, r.value or "", f"[{style.get(r.verdict, '')}]{r.verdict}[/]", r.where or r.detail or "")
    console = Console()
    console.print(table)
    ignored = [r.option for r in results if r.verdict == "ignored"]
    if ignored:
        console.print(f"[bold red]ignored by the code:[/] {', '.join(ignored)} (their value never changes the run)")
    console.print(f"  json: {out}")


if __name__ == "__main__":
    sys.exit(main())
