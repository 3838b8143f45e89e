"""Test hook: SIGKILL this process at a named point, to test crash-safe checkpoints and resume.

Set ``HIGGS_DIFF_KILL_AT`` to ``"<point>:<step>"`` (comma-separated for several), e.g.
``in_save:4`` (while checkpoint 4 is half written) or ``after_step:5`` (after optimizer step 5,
before any save).  Points used by the pipelines: ``after_step`` and ``in_save``.  A kill is a real
SIGKILL (no Python cleanup, no ``finally``), which is what a pre-empted job or the OOM killer does.
Unset (the normal case), `maybe_kill` costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "HIGGS_DIFF_KILL_AT"


def _targets() -> set[tuple[str, int]]:
    spec = os.environ.get(ENV_VAR, "").strip()
    out = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, step = part.partition(":")
        out.add((point, int(step)))
    return out


def maybe_kill(point: str, step: int) -> None:
    """SIGKILL the current process if ``HIGGS_DIFF_KILL_AT`` names (point, step)."""
    if os.environ.get(ENV_VAR) and (point, int(step)) in _targets():
        os.kill(os.getpid(), signal.SIGKILL)
