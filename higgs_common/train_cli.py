"""Command-line options both training CLIs share, declared once so they stay identical.

(`reference_impl.train` and `custom_impl.train` differ in everything that is a recipe; resuming,
input safety and bad-sample handling are the project's own behaviour and must read the same.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from higgs_common.audio_io import DEFAULT_MAX_AUDIO_SECONDS

# `--resume` with no value: the last complete checkpoint of --output-dir.
RESUME_LATEST = Path("<latest>")


def add_reliability_args(p: argparse.ArgumentParser) -> None:
    """--resume [DIR], --max-audio-seconds, --skip-bad-samples."""
    p.add_argument("--resume", type=Path, nargs="?", const=RESUME_LATEST, default=None, metavar="DIR",
                   help="continue from the last complete checkpoint of --output-dir (or of run folder DIR, "
                        "or from checkpoint folder DIR)")
    p.add_argument("--max-audio-seconds", type=float, default=DEFAULT_MAX_AUDIO_SECONDS,
                   help="longer clips are bad input (default: %(default)s)")
    p.add_argument("--skip-bad-samples", action="store_true",
                   help="leave out samples that raise a SampleError (each is logged, with the count at the end)")
