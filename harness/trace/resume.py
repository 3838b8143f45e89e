"""`higgs-diff check-resume -- COMMAND ...`: a killed-and-resumed run must continue exactly as an uninterrupted one.

    higgs-diff check-resume -- python -m custom_impl.train
    higgs-diff check-resume --steps 4 --kill-after 2 -- torchrun --nproc-per-node 2 -m custom_impl.train

Three traced runs of the same command (`harness.trace.run`), each in its own output folder:

1. straight: ``COMMAND --max-steps N --output-dir D1 <save every step>``;
2. interrupted: the same in D2, SIGKILLed when step k+1 starts (its checkpoint of step k is complete);
3. resumed: ``COMMAND --max-steps N --output-dir D2 --resume``, its steps numbered from k+1.

Steps k+1..N of the resumed run are compared with the straight run's (`harness.trace.compare`): the
batch (data position), the model's outputs and losses (weights and RNG restored), gradients, the
optimizer's state and the learning rate (scheduler restored), parameters after each step.  The
weights the resumed run starts from are compared exactly with the interrupted run's after step k
(the weights its checkpoint saved; the straight run's when the interrupted trace lacks step k).

The flags come from the command's ``--help``: ``--max-steps``, ``--output-dir``, a save interval
(``--save-every`` or ``--save-steps``) and ``--resume``; other spellings are given with
``--max-steps-flag`` and friends.  Exit status: 0 the resumed run matches, 1 it does not (report
written), 2 bad usage (a flag the command does not have, a run that failed before the kill).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from harness.trace.options import find, help_text, parse_help

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE = 0, 1, 2
SAVE_FLAGS = ("--save-every", "--save-steps", "--save_steps", "--checkpoint-every")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="higgs-diff check-resume",
        description="Run a training command straight for N steps, and again killed after step k and resumed to N; "
                    "the resumed steps must match the straight run's (data position, weights, optimizer state, "
                    "scheduler, RNG).",
        epilog="exit status: 0 the resumed run matches, 1 it does not, 2 bad usage or a run that failed.")
    p.add_argument("--steps", type=int, default=4, help="N: optimizer steps of the straight run (default: %(default)s)")
    p.add_argument("--kill-after", type=int, default=2, help="k: kill after this step (default: %(default)s)")
    p.add_argument("--work-dir", type=Path, default=None, help="where runs and traces go (default: a temp folder)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: WORK_DIR/report)")
    p.add_argument("--max-steps-flag", default=None, help="default: --max-steps from the command's --help")
    p.add_argument("--output-dir-flag", default=None, help="default: --output-dir")
    p.add_argument("--save-args", default=None, help="arguments that save every step (default: '--save-every 1' or "
                                                     "'--save-steps 1', whichever the command has)")
    p.add_argument("--resume-args", default=None, help="arguments that resume (default: --resume)")
    p.add_argument("--precision", choices=("exact", "bf16"), default="exact", help="float tolerance (compare-traces)")
    p.add_argument("--timeout", type=float, default=900.0, help="per run, seconds (default: %(default)s)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    return p


def resolve_flags(command: Sequence[str], args: argparse.Namespace) -> dict[str, list[str] | str]:
    """The command's spellings of max-steps, output-dir, save-every-step and resume (ValueError naming a missing one)."""
    options = parse_help(help_text(command))

    def pick(given: str | None, *names: str, what: str) -> str:
        if given:
            return given
        o = find(options, *names)
        if o is None:
            raise ValueError(f"the command's --help shows no {what} option ({', '.join(names)}); give it with "
                             f"--{what.replace(' ', '-')}-flag")
        return o.name
    save = shlex.split(args.save_args) if args.save_args else None
    if save is None:
        o = find(options, *SAVE_FLAGS)
        if o is None:
            raise ValueError(f"the command's --help shows no save interval ({', '.join(SAVE_FLAGS)}); give "
                             "--save-args")
        save = [o.name, "1"]
    resume = shlex.split(args.resume_args) if args.resume_args else [pick(None, "--resume", "--resume-from-checkpoint",
                                                                         "--resume_from_checkpoint", what="resume")]
    return {"max_steps": pick(args.max_steps_flag, "--max-steps", "--max_steps", what="max steps"),
            "output_dir": pick(args.output_dir_flag, "--output-dir", "--output_dir", what="output dir"),
            "save": save, "resume": resume}


def check_resume(command: Sequence[str], work: Path, *, steps: int, kill_after: int, flags: dict,
                 precision: str = "exact", timeout: float = 900.0, echo=print):
    """Run the three traced runs and compare; returns (report, problem) where problem is a usage error text."""
    from harness.trace.compare import Tolerance, compare_traces
    from harness.trace.load import Trace
    from harness.trace.run import reproducible_env, run_traced

    ms, od = flags["max_steps"], flags["output_dir"]
    base = list(command) + [ms, str(steps)] + list(flags["save"])
    runs = {
        "straight": (base + [od, str(work / "run-straight")], {}),
        "interrupted": (base + [od, str(work / "run-resumed")], {"HIGGS_TRACE_KILL_AFTER_STEP": str(kill_after)}),
        "resumed": (base + [od, str(work / "run-resumed")] + list(flags["resume"]),
                    {"HIGGS_TRACE_STEP_OFFSET": str(kill_after)}),
    }
    codes = {}
    for name, (cmd, extra) in runs.items():
        echo(f"check-resume: {name} run: {shlex.join(cmd)}")
        env = reproducible_env(**extra)
        codes[name] = run_traced(cmd, work / f"trace-{name}", steps=steps, echo=False, env=env, timeout=timeout)
    if codes["straight"] != 0:
        return None, f"the straight run failed (exit {codes['straight']}); see {work / 'trace-straight' / 'command.log'}"
    interrupted = Trace.load(work / "trace-interrupted")
    if not any(e.get("kind") == "killed" for evs in interrupted.events.values() for e in evs):
        return None, (f"the interrupted run was not killed after step {kill_after} (exit {codes['interrupted']}); "
                      f"see {work / 'trace-interrupted' / 'command.log'}")
    straight, resumed = Trace.load(work / "trace-straight"), Trace.load(work / "trace-resumed")
    report = compare_traces(straight, resumed, tolerance=Tolerance.for_precision(precision), common_steps_only=True)
    _check_restored_weights(report, interrupted if _has_step(interrupted, kill_after) else straight, resumed,
                            kill_after)
    _name_the_state_not_restored(report, straight, resumed, kill_after)
    report.run_name = "check-resume"
    report.config["check_resume"] = {"steps": steps, "kill_after": kill_after, "exit_codes": codes,
                                     "command": list(command)}
    return report, None


def _batch_key(st) -> list:
    """The content hashes of every model call's batch rows in a step (sample identity without ids)."""
    return [c.get("row_hashes") or {} for c in st.model_calls]


def _where_from(straight, b, k: int) -> str:
    """Where the resumed step's first micro-batch sits in the straight run, as words ('' when nowhere):
    the data position's offset in steps, or in micro-batches when it is not a whole number of steps."""
    first = _batch_key(b)[:1]
    per_step = max(1, len(next((st for st in straight.rank_steps(0) if st.step == k + 1), b).model_calls))
    for st in straight.rank_steps(0):
        for i, key in enumerate(_batch_key(st)):
            if key and [key] == first:
                off = (st.step - 1) * per_step + i - k * per_step       # in micro-batches
                by = (f"{off // per_step:+d} step(s)" if off % per_step == 0 else f"{off:+d} micro-batch(es)")
                return (f"; its first micro-batch is the one the straight run trained at step {st.step} "
                        f"(micro-batch {i}): the position is off by {by}")
    return ""


def _adamw_steps(st) -> dict[str, float]:
    return {n: v["step"] for n, v in st.optimizer_state().items() if isinstance(v, dict) and "step" in v}


def _schedule(st) -> tuple[Any, list]:
    """(the scheduler's last_epoch after the step's last scheduler step, lr of each param group) of a step
    (the first step of a run also holds the scheduler's construction, whose step() is recorded too)."""
    records = st.records("scheduler")
    return (records[-1].get("last_epoch") if records else None), [g.get("lr") for g in st.param_groups()]


def resume_state_cause(straight, resumed, k: int) -> tuple[str, str] | None:
    """Which part of the training state the resumed run did not get back, read from its first step (k+1)
    against the straight run's step k+1: (mechanism, evidence), or None when that step agrees on it all.

    Checked in the order a step uses its state: the data position (the batch rows' content hashes; where
    the resumed batch comes from in the straight run); then AdamW's state (its step count after the
    update) and the learning-rate schedule (the scheduler's last_epoch, and the param groups' lr when
    the optimizer's state was restored), both named when both are lost (HF's Trainer loads neither when
    one file is missing); and, with the same batch, weights and schedule, the random state (the forward
    differs: dropout masks).
    """
    a = next((st for st in straight.rank_steps(0) if st.step == k + 1), None)
    b = next((st for st in resumed.rank_steps(0) if st.step == k + 1), None)
    if a is None or b is None:
        return None
    if _batch_key(a) != _batch_key(b):
        return (f"the checkpoint does not restore the data position: the resumed run's first step ({k + 1}) "
                f"reads another batch than the straight run's step {k + 1}{_where_from(straight, b, k)}",
                "batch row hashes differ at the first resumed step")
    parts, evidence = [], []
    steps_a, steps_b = _adamw_steps(a), _adamw_steps(b)
    diff = sorted(n for n in steps_a if n in steps_b and steps_a[n] != steps_b[n])
    if diff:
        parts.append(f"the optimizer's state (after step {k + 1} AdamW's step count is {steps_b[diff[0]]:g} in the "
                     f"resumed run against {steps_a[diff[0]]:g} straight: its moments restarted from zero)")
        evidence.append(f"AdamW step count differs for {len(diff)} of {len(steps_a)} parameters (first: {diff[0]})")
    (epoch_a, lrs_a), (epoch_b, lrs_b) = _schedule(a), _schedule(b)
    if epoch_a != epoch_b or (lrs_a != lrs_b and not diff):
        # With the optimizer's state lost, the param groups' lr restart too: only last_epoch then says
        # whether the scheduler itself was restored.
        parts.append(f"the learning-rate schedule (at step {k + 1} the scheduler's last_epoch is {epoch_b} in the "
                     f"resumed run against {epoch_a} straight, the learning rates {lrs_b} against {lrs_a})")
        evidence.append("scheduler state differs at the first resumed step")
    if parts:
        return "the checkpoint does not restore " + " and ".join(parts), "; ".join(evidence)
    return ("the checkpoint does not restore the random state (RNG): the first resumed step reads the same batch with "
            "the same weights, optimizer state and schedule, yet computes differently (dropout masks and other "
            "random draws come from a fresh generator)", "batch, restored weights, AdamW step counts and schedule agree")


def _name_the_state_not_restored(report, straight, resumed, k: int) -> None:
    """Give the first divergence the part of the state the resume lost (`resume_state_cause`), keeping the
    field's own evidence and location; a divergence of the restored weights keeps its own cause."""
    fd = report.first_divergence_field()
    if fd is None or fd.field.startswith("restored_weights."):
        return
    found = resume_state_cause(straight, resumed, k)
    if found is None:
        return
    mechanism, evidence = found
    old = fd.cause or {}
    fd.cause = {"mechanism": mechanism, "rule": "check-resume", "location": old.get("location"),
                "evidence": f"{evidence}; first diverging field {fd.stage}.{fd.field}: "
                            f"{old.get('mechanism') or fd.summary()}"}


def _has_step(trace, k: int) -> bool:
    return any(st.step == k and st.complete for st in trace.rank_steps(0))


def _check_restored_weights(report, straight, resumed, k: int) -> None:
    """The resumed run's weights before its first step = the weights after step k of the run that saved
    the checkpoint (the interrupted run's own trace, else the straight run's): a save/load round trip,
    compared exactly, whatever two processes' floating-point sums may do to each other's step k."""
    from harness.engine.diff import diff_tensors
    from harness.report.model import StageResult
    from higgs_common.param_names import canonical_name

    after_k = next((st for st in straight.rank_steps(0) if st.step == k), None)
    first = next(iter(resumed.rank_steps(0)), None)
    if after_k is None or first is None:
        return
    before = {canonical_name(n[len("param_before."):]): t for n, t in first.tensors().items()
              if n.startswith("param_before.")}
    fields = []
    for name, desc in after_k.params_after().items():
        t = after_k.tensor(desc)
        if t is not None and name in before:
            fd = diff_tensors(t, before[name], stage="step", field=f"restored_weights.{name}")
            if fd.diverged:
                fd.cause = {"mechanism": f"the resumed run starts from weights that are not the saving run's after "
                                         f"step {k}: the checkpoint does not restore {name}",
                            "evidence": fd.summary(), "rule": "check-resume"}
            fields.append(fd)
    if fields:
        st = report.stage("step")
        if st is None:
            st = StageResult("step", "ok", [])
            report.stages.append(st)
        st.fields[:0] = fields
        st.refresh_status()


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        p.error("no command given: higgs-diff check-resume -- COMMAND ...")
    if not 1 <= args.kill_after < args.steps:
        p.error("need 1 <= --kill-after < --steps")
    try:
        flags = resolve_flags(command, args)
    except ValueError as exc:
        print(f"higgs-diff check-resume: {exc}", file=sys.stderr)
        return EXIT_USAGE
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="higgs-check-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    say = lambda m: print(m, file=sys.stderr, flush=True)   # noqa: E731
    report, problem = check_resume(command, work, steps=args.steps, kill_after=args.kill_after, flags=flags,
                                   precision=args.precision, timeout=args.timeout, echo=say)
    if problem:
        say(f"higgs-diff check-resume: {problem}")
        return EXIT_USAGE
    from harness.report.render import write_report
    from harness.report.terminal import print_summary
    paths = write_report(report, args.out or work / "report")
    print_summary(report, paths=paths)
    return EXIT_OK if report.verdict == "pass" else EXIT_DIVERGED


if __name__ == "__main__":
    sys.exit(main())
