"""`python -m harness.compare`: diff the reference and custom pipelines stage by stage.

Exit status: 0 when nothing unexpected diverges (catalogued differences are fine), 1 when
something does (or a stage crashed), 2 for bad usage or bad input (the message names the file,
sample and field).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from higgs_common import DEFAULT_MANIFEST, REPO_ROOT
from higgs_common.train_cli import add_speech_args, speech_options

EXIT_OK, EXIT_DIVERGED, EXIT_BAD_INPUT = 0, 1, 2
STAGE_CHOICES = ("dataset", "collator", "forward", "loss", "backward", "step", "all")


def _fault_epilog() -> str:
    """The fault list for --help, one wrapped paragraph per fault (names never hyphen-split)."""
    import textwrap

    from harness.sides import known_faults

    lines = ["faults (--fault NAME, repeatable; custom pipeline only):"]
    for name, fault in sorted(known_faults().items()):
        lines.append(f"  {name}")
        lines += textwrap.wrap(f"{fault.stage}: {fault.symptom}", width=88,
                               initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness.compare",
        description="Feed identical samples, tokenizers and weights through the reference "
                    "(train-higgs-audio) and the custom zero-shot pipeline stage by stage, diff every "
                    "tensor, and write a report that pinpoints the first divergence.",
        epilog=_fault_epilog() + "\n\nexit status: 0 nothing unexpected diverged, 1 something did, "
               "2 bad usage or input.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--stage", choices=STAGE_CHOICES, default="all",
                   help="stage to compare; earlier stages run as needed to feed it (default: all)")
    p.add_argument("--mode", choices=("isolated", "propagated"), default="isolated",
                   help="isolated: every stage of both sides gets the same input (default); "
                        "propagated: each side runs end to end on its own outputs")
    p.add_argument("--fault", action="append", default=[], metavar="NAME",
                   help="inject a named historical fault into the custom pipeline (see the list below)")
    p.add_argument("--device", default="auto",
                   help="torch device for models and diffs: auto (cuda when present, else cpu), cpu, cuda, "
                        "cuda:N (default: auto)")
    p.add_argument("--data", type=Path, default=DEFAULT_MANIFEST,
                   help="canonical manifest (JSONL) of samples, or a folder holding manifest.jsonl "
                        "(default: the shipped data/manifest.jsonl)")
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint folder (HiggsAudioModel + text tokenizer); default: the embedded tiny one")
    p.add_argument("--audio-tokenizer", type=Path, default=None,
                   help="audio tokenizer folder (config.json + model.pth); default: the embedded one")
    p.add_argument("--samples", type=int, default=4, help="number of samples, one per speaker in turn (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed for everything random (default: 0)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: reports/<run name>)")
    p.add_argument("--tolerance", action="append", default=[], metavar="FIELD=RTOL,ATOL",
                   help="override the float tolerance of one field, e.g. logits=1e-3,1e-4")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="precision of the common configuration both sides run under (default fp32: under "
                        "bf16 the pipelines' precision policies differ by design; see README)")
    p.add_argument("--ddp-world-size", type=int, default=2,
                   help="ranks for the custom pipeline's distributed check (0: skip; default: 2). On CUDA with "
                        "that many GPUs the ranks run NCCL, one GPU each; otherwise gloo on the CPU")
    p.add_argument("--ddp-steps", type=int, default=3,
                   help="optimizer steps of the distributed check; the global loss is compared at each (default: 3)")
    p.add_argument("--quiet", action="store_true", help="no progress output, only the summary")
    p.add_argument("--skip-bad-samples", action="store_true",
                   help="leave out samples that are bad input for either pipeline (each one is reported with "
                        "its reason, and the count at the end) instead of exiting with status 2")
    p.add_argument("--max-audio-seconds", type=float, default=None,
                   help="longer clips are bad input (default: higgs_common.audio_io.DEFAULT_MAX_AUDIO_SECONDS, 30)")
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


def select_records(records: list, n: int) -> list:
    """n records, taking speakers in turn (variety beats the first n of one voice)."""
    by_speaker: dict[str, list] = {}
    for r in records:
        by_speaker.setdefault(r.speaker, []).append(r)
    queues = [by_speaker[s] for s in sorted(by_speaker)]
    out, i = [], 0
    while len(out) < min(n, len(records)):
        q = queues[i % len(queues)]
        depth = i // len(queues)
        if depth < len(q):
            out.append(q[depth])
        i += 1
    return out


def _portable(path: Path | None) -> str | None:
    """Paths inside the repo are reported relative to it, so reports don't depend on the clone."""
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def run_name(args: argparse.Namespace) -> str:
    faults = "+".join(sorted(args.fault)) or "nofault"
    return f"{args.stage}-{args.mode}-{faults}-seed{args.seed}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tolerances = _tolerances(args.tolerance, parser)
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")

    from rich.console import Console

    console = Console(stderr=False)
    try:
        return _run(args, tolerances, console)
    except _bad_input_errors() as exc:
        from rich.markup import escape

        # escape: the message ends in "[sample=... field=... file=...]", which rich would eat as markup
        console.print(f"[bold red]bad input:[/] {type(exc).__name__}: {escape(str(exc))}", soft_wrap=True)
        return EXIT_BAD_INPUT


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from higgs_common.manifest import ManifestError
    from higgs_common.stages import HiggsDiffError

    return (HiggsDiffError, ManifestError, FileNotFoundError)


def _run(args: argparse.Namespace, tolerances: dict, console) -> int:
    import torch

    from harness.catalogue import CATALOGUE
    from harness.configdiff import config_diff
    from harness.diagnosis import diagnose
    from harness.report import Report, write_report
    from harness.runner import STAGES, Comparison, RunOptions
    from harness.sides import known_faults
    from harness.terminal import print_summary
    from higgs_common.context import build_context
    from higgs_common.manifest import load_manifest, resolve_manifest
    from higgs_common.stages import HiggsDiffError, UnknownFaultError

    unknown = sorted(set(args.fault) - set(known_faults()))
    if unknown:
        raise UnknownFaultError(f"unknown fault(s) {unknown}; known: {sorted(known_faults())}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise HiggsDiffError(f"--device {args.device}: CUDA is not available on this machine")
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(args.device == "cpu", warn_only=True)

    from harness.screen import screen_records
    from higgs_common.audio_io import DEFAULT_MAX_AUDIO_SECONDS
    from higgs_common.skipping import SkipLog

    max_seconds = args.max_audio_seconds if args.max_audio_seconds is not None else DEFAULT_MAX_AUDIO_SECONDS
    skip_log = SkipLog(where="harness.compare")
    manifest_errors: list = []
    manifest = resolve_manifest(args.data)   # --data data/ means data/manifest.jsonl
    all_records = load_manifest(manifest, skip_bad=args.skip_bad_samples, skipped=manifest_errors)
    for exc in manifest_errors:
        skip_log.add(exc)
    ctx = build_context(args.model, args.audio_tokenizer, device=args.device, seed=args.seed,
                        options={"max_audio_seconds": max_seconds, **speech_options(args)})
    if args.skip_bad_samples:   # screen everything, then pick: the same picks as without bad samples
        records = select_records(screen_records(all_records, ctx, skip=True, skip_log=skip_log,
                                                manifest=manifest, max_seconds=max_seconds), args.samples)
        from rich.markup import escape

        console.print(escape(skip_log.summary()), highlight=False, soft_wrap=True)
        for item in skip_log.skipped:
            console.print(escape(f"  skipped {item.sample_id!r}: {item.error}: {item.reason}"), highlight=False,
                          soft_wrap=True)
        if not records:
            raise HiggsDiffError(f"every sample of {manifest} is bad input (skipped {len(skip_log)})")
    else:
        records = screen_records(select_records(all_records, args.samples), ctx, skip=False, skip_log=skip_log,
                                 manifest=manifest, max_seconds=max_seconds)
    stages = STAGES if args.stage == "all" else (args.stage,)

    def progress(msg: str) -> None:
        if not args.quiet:
            console.log(msg)

    with tempfile.TemporaryDirectory(prefix="higgs-diff-") as work:
        comparison = Comparison(records, ctx, args.fault, Path(work),
                                RunOptions(stages=stages, mode=args.mode, tolerances=tolerances,
                                           precision=args.precision,
                                           ddp_world_size=args.ddp_world_size, ddp_steps=args.ddp_steps,
                                           progress=progress))
        results = comparison.run()

    train = comparison.train
    report = Report(
        run_name=run_name(args), mode=args.mode, stages_requested=list(stages), stages=results,
        config={
            "device": args.device, "seed": args.seed, "faults": sorted(args.fault),
            "data": _portable(args.data), "model": _portable(ctx.model_path),
            "audio_tokenizer": _portable(ctx.audio_tokenizer_path),
            "samples": [r.id for r in records], "common_train_config": _train_json(train),
            "torch": torch.__version__,
            **({"skipped_samples": [{"sample_id": i.sample_id, "field": i.field, "error": i.error}
                                    for i in skip_log.skipped]} if args.skip_bad_samples else {}),
        },
        config_diff=config_diff(comparison.side["reference"].effective, comparison.side["custom"].effective),
        catalogue=[e.to_json() for e in CATALOGUE],
        diagnoses=diagnose(comparison.evidence, {r.stage: r for r in results}),
        extras=comparison.extras,
    )
    out = args.out or (REPO_ROOT / "reports" / report.run_name)
    paths = write_report(report, out)
    print_summary(report, console=console, paths=paths)
    if args.skip_bad_samples:
        console.print(escape(skip_log.summary()), highlight=False, soft_wrap=True)   # the count again, at the end
    return EXIT_OK if report.verdict == "pass" else EXIT_DIVERGED


def _train_json(train) -> dict:
    import dataclasses

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(train).items()}


if __name__ == "__main__":
    sys.exit(main())
