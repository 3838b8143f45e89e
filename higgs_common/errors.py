"""The project's error classes, importable without torch (command-line parsers use them).

`higgs_common.stages` re-exports them; both names refer to the same classes.
"""

from __future__ import annotations

from pathlib import Path


class HiggsDiffError(Exception):
    """Base class of every error this project raises on purpose."""


class UnknownFaultError(HiggsDiffError, ValueError):
    """A `--fault` name that the pipeline does not define."""


class SampleError(HiggsDiffError, ValueError):
    """Bad input, naming where it is.

    Every message names the file, the sample id and the field, so that a user can go straight to
    the offending record; `str(err)` always contains all three.
    """

    def __init__(self, message: str, *, sample_id: str | None = None, field: str | None = None,
                 path: str | Path | None = None) -> None:
        self.sample_id = sample_id
        self.field = field
        self.path = str(path) if path is not None else None
        where = f"sample={sample_id!r} field={field!r} file={self.path!r}"
        super().__init__(f"{message} [{where}]")
