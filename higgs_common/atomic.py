"""Atomic file replacement: write a temporary file beside the target, then `os.replace` it.

A reader (another rank of a torchrun job, a second process sharing a cache) sees the old file or
the whole new one, never a truncated one; a writer that fails leaves the old file and no temporary.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(dst: Path) -> Iterator[Path]:
    """Yield a temporary path in `dst`'s folder; on a clean exit it replaces `dst`, on an exception
    it is removed and the exception propagates."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
