"""Adapters that run users' own training code (a checkout of their repository) as a higgs-diff side.

Each module here implements the stage contract (`higgs_common.stages`) by importing a checkout's
modules at run time and calling them; none of the checkout's code lives in this repository.  A
side is named ``NAME=PATH`` on the command line, e.g. ``--reference train-higgs-audio=~/src/train-higgs-audio``:
`BUILTIN` maps NAME to the adapter module, and the harness hands PATH to that module's
``configure(path)`` before any stage runs.
"""

from __future__ import annotations

# Short names accepted before "=" in a SPEC, and the adapter module each one selects.
BUILTIN: dict[str, str] = {
    "train-higgs-audio": "adapters.train_higgs_audio",
}
