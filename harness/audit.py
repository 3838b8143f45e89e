"""`higgs-diff audit DATA`: check a data set before training on it.

DATA is a canonical manifest (``*.jsonl`` or a folder holding ``manifest.jsonl``), a reference
metadata folder, or a ChatML JSON list.  Every check the pipelines' datasets run, plus data-quality
checks (`higgs_common.audit`: audio range, clipping, loudness, speech presence, characters per
second, invisible characters in any text field, contradicting records, file encodings, and with
a tokenizer the reserved-token and tokenizer-vs-embedding checks).  Each finding names the file,
the sample id and the field.

Exit status: 0 clean or warnings only, 2 errors (with --strict: any finding), or bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

EXIT_OK, EXIT_ERRORS = 0, 2


def build_parser() -> argparse.ArgumentParser:
    from higgs_common.train_cli import add_speech_args

    p = argparse.ArgumentParser(prog="higgs-diff audit", description=__doc__.split("\n\n")[0],
                                epilog="exit status: 0 clean or warnings only, 2 errors (--strict: any finding)")
    p.add_argument("data", type=Path, metavar="DATA",
                   help="canonical manifest (*.jsonl, or a folder holding manifest.jsonl), reference metadata folder, "
                        "or ChatML JSON")
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint folder whose text tokenizer and config to check against (reserved tokens in "
                        "transcripts, tokenizer size vs embedding rows); default: none (those checks are skipped)")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 2 on any finding)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="write every finding and clip measure as JSON")
    p.add_argument("--html", type=Path, default=None, metavar="PATH",
                   help="write an HTML page with the findings and the offending clips' waveform and spectrogram")
    p.add_argument("--max-audio-seconds", type=float, default=None,
                   help="longer clips are errors (default: higgs_common.audio_io.DEFAULT_MAX_AUDIO_SECONDS, 30)")
    add_speech_args(p)
    return p


def _model_parts(model: Path | None) -> dict[str, Any]:
    """tokenizer, model_config, model_path of a checkpoint folder (empty without one)."""
    if model is None:
        return {}
    from transformers import AutoTokenizer

    from boson_multimodal.model.higgs_audio import HiggsAudioConfig

    return {"tokenizer": AutoTokenizer.from_pretrained(str(model)),
            "model_config": HiggsAudioConfig.from_pretrained(str(model)), "model_path": model}


def print_table(report, console, *, strict: bool) -> None:
    """The findings as a rich table, then the summary line."""
    from rich.table import Table

    if report.findings:
        table = Table(title=f"data audit: {report.data}", show_lines=False, expand=False)
        for col in ("level", "check", "sample", "field", "file", "message"):
            table.add_column(col, overflow="fold")
        for f in report.findings:
            style = "red" if f.level == "error" or strict else "yellow"
            table.add_row(f.level, f.check, str(f.sample_id), str(f.field), str(f.path), f.message, style=style)
        console.print(table)
    console.print(report.summary() + (" (--strict: warnings count as errors)" if strict else ""),
                  highlight=False, markup=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console

    from higgs_common.audit import run_audit
    from higgs_common.audio_io import DEFAULT_MAX_AUDIO_SECONDS
    from higgs_common.stages import SampleError
    from higgs_common.train_cli import speech_options

    console = Console(stderr=False, width=200 if not sys.stdout.isatty() else None)
    options = {"max_audio_seconds": args.max_audio_seconds or DEFAULT_MAX_AUDIO_SECONDS, **speech_options(args)}
    try:
        report = run_audit(args.data, options=options, **_model_parts(args.model))
    except (SampleError, OSError) as exc:
        print(f"higgs-diff audit: bad input: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERRORS
    print_table(report, console, strict=args.strict)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**report.to_json(), "strict": args.strict,
                                         "exit_status": report.exit_status(strict=args.strict)}, indent=2,
                                        default=str) + "\n", encoding="utf-8")
    if args.html is not None:
        from harness.audit_html import render_html

        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(render_html(report, strict=args.strict), encoding="utf-8")
    return report.exit_status(strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
