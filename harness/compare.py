"""`python -m harness.compare`: diff the reference and custom pipelines stage by stage.

Exit status: 0 when nothing unexpected diverges (catalogued differences are fine), 1 when
something does (or a stage crashed), 2 for bad usage or bad input (the message names the file,
sample and field).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from higgs_common import DEFAULT_MANIFEST, REPO_ROOT

EXIT_OK, EXIT_DIVERGED, EXIT_BAD_INPUT = 0, 1, 2
STAGE_CHOICES = ("dataset", "collator", "forward", "loss", "backward", "step", "config", "all")


# The default custom adapter's fault registry: a torch-free module whose `FAULTS` maps name -> object
# with `stage` and `symptom`, so that `--help` lists the faults without importing any pipeline.
# Another adapter's faults: `--list-faults --custom SPEC` (that imports the adapter).
DEFAULT_FAULT_REGISTRY = "custom_impl.faults"


def fault_lines(faults: dict[str, Any], title: str) -> str:
    """`title`, then one entry per fault: its name, then `stage: symptom` wrapped at 88 columns."""
    import textwrap

    lines = [title]
    for name, fault in sorted(faults.items()):
        lines.append(f"  {name}")
        lines += textwrap.wrap(f"{fault.stage}: {fault.symptom}", width=88,
                               initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def _fault_epilog() -> str:
    """The fault list of the default custom adapter for --help (names never hyphen-split)."""
    import importlib

    registry = importlib.import_module(DEFAULT_FAULT_REGISTRY)
    return fault_lines(registry.FAULTS, "faults of the default custom adapter (--fault NAME, repeatable; another\n"
                                        "adapter's: --list-faults --custom SPEC):")


class _LazyEpilogParser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog is computed only when `--help` is printed, so that argument
    errors and runs never import the fault registry."""

    def __init__(self, *args: Any, epilog_factory: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epilog_factory = epilog_factory

    def format_help(self) -> str:
        if self._epilog_factory is not None:
            self.epilog = self._epilog_factory() + ("\n\n" + self.epilog if self.epilog else "")
            self._epilog_factory = None
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    p = _LazyEpilogParser(
        prog="python -m harness.compare", epilog_factory=_fault_epilog,
        description="Feed identical samples, tokenizers and weights through two Higgs Audio training pipelines "
                    "(by default the reference train-higgs-audio and the custom zero-shot pipeline) stage by stage, "
                    "diff every tensor, and write a report that pinpoints the first divergence, how the two values "
                    "relate, and the mechanism behind it.",
        epilog="SPEC: a module path (mypkg.higgs_stages) or a .py file that implements the stage "
               "contract (higgs_common/stages.py; check it with python -m harness.check_adapter SPEC), or "
               "'module=M;python=PY;path=DIR;timeout=S' / a .json file with those keys: the side then runs in "
               "its own worker process (docs/real-pipelines.md).\n\n"
               "exit status: 0 nothing unexpected diverged, 1 something did, 2 bad usage or bad input (one line "
               "naming sample, field and file).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--reference", metavar="SPEC", default=None,
                   help="adapter of the trusted pipeline (default: reference_impl.stages, train-higgs-audio)")
    p.add_argument("--custom", metavar="SPEC", default=None,
                   help="adapter of the pipeline under test (default: custom_impl.stages)")
    for role in ("reference", "custom"):
        p.add_argument(f"--{role}-python", metavar="PY", default=None,
                       help=f"run the {role} side in its own worker process with this interpreter "
                            "(see docs/real-pipelines.md)")
        p.add_argument(f"--{role}-path", metavar="DIR", action="append", default=[],
                       help=f"folder put first on the {role} worker's sys.path (repeatable; e.g. a checkout with "
                            "its own boson_multimodal); implies a worker process")
    p.add_argument("--side-timeout", type=float, default=None, metavar="SECONDS",
                   help="seconds one stage call of a side's worker may take before the worker is killed and the "
                        "stage reported as that side's error (default: 1800)")
    p.add_argument("--isolation", choices=("auto", "process", "inline"), default="auto",
                   help="auto: a side runs in its own worker process when it is given an interpreter or import "
                        "path (flags or SPEC), else in this process (default); process: both sides in workers; "
                        "inline: both in this process")
    p.add_argument("--stage", choices=STAGE_CHOICES, default="all",
                   help="stage to compare; earlier stages run as needed to feed it (default: all)")
    p.add_argument("--mode", choices=("isolated", "propagated"), default="isolated",
                   help="isolated: every stage of both sides gets the same input (default); "
                        "propagated: each side runs end to end on its own outputs")
    p.add_argument("--fault", action="append", default=[], metavar="NAME",
                   help="switch on a named fault of the custom adapter (repeatable; see the list below)")
    p.add_argument("--list-faults", action="store_true",
                   help="print the named faults of the --custom adapter and exit")
    p.add_argument("--device", default="auto",
                   help="torch device for models and diffs: auto (cuda when present, else cpu), cpu, cuda, "
                        "cuda:N (default: auto)")
    p.add_argument("--data", type=Path, default=DEFAULT_MANIFEST,
                   help="canonical manifest (JSONL), or a folder holding manifest.jsonl (default: data/manifest.jsonl)")
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint folder (HiggsAudioModel + text tokenizer); default: the embedded tiny one")
    p.add_argument("--audio-tokenizer", type=Path, default=None,
                   help="audio tokenizer folder (config.json + model.pth); default: the embedded one")
    p.add_argument("--samples", type=int, default=4, help="number of samples, one per speaker in turn (default: 4)")
    p.add_argument("--dataset-samples", type=int, default=64,
                   help="records the dataset stage checks (cheap; a superset of --samples, so bugs that only some "
                        "records trigger show there; default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed for everything random (default: 0)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: reports/<run name>)")
    p.add_argument("--tolerance", action="append", default=[], metavar="FIELD=RTOL,ATOL",
                   help="override the float tolerance of one field (a trailing * matches a prefix), e.g. logits=1e-3,1e-4")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="precision of the common configuration both sides run under (default fp32: under "
                        "bf16 the pipelines' precision policies differ by design; see docs/benchmarks.md)")
    p.add_argument("--ddp-world-size", type=int, default=2,
                   help="ranks for the custom pipeline's distributed check (0: skip it; gradient accumulation in one "
                        "process is checked regardless; default: 2). On CUDA with that many GPUs the ranks run NCCL, "
                        "one GPU each; otherwise gloo on the CPU")
    p.add_argument("--ddp-steps", type=int, default=3,
                   help="optimizer steps of the distributed check; the global loss is compared at each (default: 3)")
    p.add_argument("--optimizer-steps", type=int, default=3,
                   help="optimizer steps of the step stage, each on a different batch (default: 3)")
    p.add_argument("--quiet", action="store_true", help="no progress output, only the summary")
    p.add_argument("--skip-bad-samples", action="store_true",
                   help="leave out samples that are bad input for either pipeline (each one is reported with "
                        "its reason, and the count at the end) instead of exiting with status 2")
    p.add_argument("--max-audio-seconds", type=float, default=None,
                   help="longer clips are bad input (default: higgs_common.audio_io.DEFAULT_MAX_AUDIO_SECONDS, 30)")
    from higgs_common.train_cli import add_speech_args   # shared with both training CLIs

    add_speech_args(p)
    return p


def _tolerances(specs: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, tuple[float, float]]:
    out = {}
    for spec in specs:
        try:
            name, values = spec.split("=", 1)
            rtol, atol = (float(v) for v in values.split(","))
        except ValueError:
            parser.error(f"--tolerance {spec!r}: expected FIELD=RTOL,ATOL")
        out[name] = (rtol, atol)
    return out


def run_name(args: argparse.Namespace) -> str:
    from harness.api import default_run_name

    return default_run_name(args.stage, args.mode, args.fault, args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tolerances = _tolerances(args.tolerance, parser)
    if args.list_faults:
        return _list_faults(args.custom)
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    from rich.console import Console

    console = Console(stderr=False)
    try:
        return _run(args, tolerances, console)
    except _bad_input_errors() as exc:
        from rich.markup import escape

        # escape: the message ends in "[sample=... field=... file=...]", which rich would eat as markup
        console.print(f"[bold red]bad input:[/] {type(exc).__name__}: {escape(str(exc))}", soft_wrap=True)
        return EXIT_BAD_INPUT


def _list_faults(custom: str | None) -> int:
    """Print the named faults of the custom adapter `custom` (None: the default); bad SPEC -> exit 2."""
    from harness.engine.sides import AdapterError, known_faults

    try:
        faults = known_faults(custom)
    except AdapterError as exc:
        print(f"bad input: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(fault_lines(faults, f"faults of the custom adapter {custom or 'custom_impl.stages'}:")
          if faults else f"the custom adapter {custom or 'custom_impl.stages'} declares no faults (FAULTS)")
    return EXIT_OK


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from higgs_common.manifest import ManifestError
    from higgs_common.stages import HiggsDiffError

    return (HiggsDiffError, ManifestError, FileNotFoundError)


def _run(args: argparse.Namespace, tolerances: dict, console) -> int:
    from rich.markup import escape

    from harness.api import compare
    from harness.engine.runner import STAGES
    from harness.report.render import write_report
    from harness.report.terminal import RunOutput, print_summary
    from higgs_common.audio_io import DEFAULT_MAX_AUDIO_SECONDS
    from higgs_common.audit import audit_before_training
    from higgs_common.context import load_text_tokenizer
    from higgs_common.train_cli import speech_options

    # one progress channel (a bar over the stages; logs and warnings through it); --quiet: errors only
    stages = STAGES if args.stage == "all" else STAGES[: STAGES.index(args.stage) + 1]
    # The data audit's own checks (higgs_common.audit): its findings on stderr (only bad data has any), errors are
    # bad input (exit 2); before the progress channel starts, which would capture them.
    audit_before_training(args.data, prog="higgs-diff compare", tokenizer=load_text_tokenizer(args.model),
                          options={"max_audio_seconds": args.max_audio_seconds or DEFAULT_MAX_AUDIO_SECONDS,
                                   **speech_options(args)})
    with RunOutput(console, stages, quiet=args.quiet) as progress:
        report = compare(args.reference, args.custom, stage=args.stage, mode=args.mode, data=args.data,
                         samples=args.samples, dataset_samples=args.dataset_samples, fault=args.fault,
                         device=args.device, model=args.model,
                         audio_tokenizer=args.audio_tokenizer, seed=args.seed, tolerance=tolerances,
                         precision=args.precision, ddp_world_size=args.ddp_world_size, ddp_steps=args.ddp_steps,
                         optimizer_steps=args.optimizer_steps, skip_bad_samples=args.skip_bad_samples,
                         max_audio_seconds=args.max_audio_seconds, run_name=run_name(args), progress=progress,
                         options=speech_options(args), reference_python=args.reference_python,
                         reference_path=args.reference_path, custom_python=args.custom_python,
                         custom_path=args.custom_path, side_timeout=args.side_timeout, isolation=args.isolation)
    if args.skip_bad_samples and report.skipped is not None:
        console.print(escape(report.skipped.summary()), highlight=False, soft_wrap=True)
        for item in report.skipped.skipped:
            console.print(escape(f"  skipped {item.sample_id!r}: {item.error}: {item.reason}"), highlight=False,
                          soft_wrap=True)
    out = args.out or (REPO_ROOT / "reports" / report.run_name)
    paths = write_report(report, out)
    print_summary(report, console=console, paths=paths)
    if args.skip_bad_samples and report.skipped is not None:
        console.print(escape(report.skipped.summary()), highlight=False, soft_wrap=True)   # the count again, at the end
    # propagated mode: declared differences spreading give verdict "pass" (Report.propagation_origin)
    return EXIT_OK if report.verdict == "pass" else EXIT_DIVERGED


def select_records(records: list, n: int) -> list:
    """Kept for callers of the old location: see harness.api.select_records."""
    from harness.api import select_records as _select

    return _select(records, n)


if __name__ == "__main__":
    sys.exit(main())

