"""A training command's options, read from its ``--help`` (argparse's format), for check-flags and check-resume.

Only what argparse prints is used: the option strings, whether it takes a value (a metavar follows),
the ``choices`` in braces, and a default when the help text shows one (``(default: 0.001)``,
``default 5e-3``).  Nothing is imported from the command, so this works for any script.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import Sequence

_DEFAULT = re.compile(r"default[:=]?\s*([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))", re.IGNORECASE)


@dataclass(frozen=True)
class Option:
    """One command-line option as ``--help`` shows it."""

    flags: tuple[str, ...]          # every spelling, long ones first
    takes_value: bool
    metavar: str | None
    choices: tuple[str, ...] | None
    default: float | None           # numeric default shown in the help text, if any
    help: str

    @property
    def name(self) -> str:
        return self.flags[0]

    @property
    def is_boolean(self) -> bool:
        return not self.takes_value


def help_text(command: Sequence[str], timeout: float = 120.0) -> str:
    """``COMMAND --help`` output (stdout and stderr)."""
    proc = subprocess.run(list(command) + ["--help"], capture_output=True, text=True, timeout=timeout)
    return (proc.stdout or "") + (proc.stderr or "")


def parse_help(text: str) -> list[Option]:
    """Options of an argparse ``--help`` text (continuation lines joined to their option)."""
    options: list[Option] = []
    current: dict | None = None
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if stripped.startswith("-") and 1 <= indent <= 8:
            if current:
                options.append(_finish(current))
            parts = re.split(r"\s{2,}", stripped, maxsplit=1)
            current = {"spec": parts[0], "help": parts[1].strip() if len(parts) > 1 else ""}
        elif current and stripped and indent > 8:
            current["help"] += " " + stripped
        elif current:
            options.append(_finish(current))
            current = None
    if current:
        options.append(_finish(current))
    return [o for o in options if o.name not in ("-h", "--help")]


def _finish(cur: dict) -> Option:
    flags, metavar = [], None
    for piece in re.split(r",\s+(?=-)", cur["spec"]):
        toks = piece.strip().split(None, 1)
        if not toks:
            continue
        flags.append(toks[0])
        if len(toks) > 1:
            metavar = toks[1].strip()
    choices = None
    if metavar and metavar.startswith("{") and "}" in metavar:
        choices = tuple(c.strip() for c in metavar[1:metavar.index("}")].split(","))
    m = _DEFAULT.search(cur["help"])
    default = float(m.group(1)) if m else None
    flags = sorted(flags, key=lambda f: not f.startswith("--"))   # stable: long spellings first
    return Option(tuple(flags), metavar is not None and not metavar.startswith("["), metavar, choices, default,
                  " ".join(cur["help"].split()))


def find(options: Sequence[Option], *spellings: str) -> Option | None:
    """The option answering to any of `spellings`."""
    for o in options:
        if any(s in o.flags for s in spellings):
            return o
    return None
