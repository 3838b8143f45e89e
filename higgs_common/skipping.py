"""`--skip-bad-samples`: leave bad samples out only when asked, and say so for every one.

Why a shared helper: both pipelines and the harness must behave the same way — without the
option the first bad sample raises its `SampleError`; with it, each skipped sample is logged at
WARNING with its reason (file, sample id, field) and the count is reported at the end, so nothing
disappears silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, TypeVar

from higgs_common.stages import SampleError

log = logging.getLogger("higgs_common.skipping")
T = TypeVar("T")


@dataclass(frozen=True)
class SkippedSample:
    """One left-out sample and why."""

    sample_id: str | None
    field: str | None
    path: str | None
    error: str          # exception class name
    reason: str         # str(exception): already names file, sample and field

    def to_json(self) -> dict:
        return dict(sample_id=self.sample_id, field=self.field, path=self.path, error=self.error, reason=self.reason)


@dataclass
class SkipLog:
    """Every sample skipped so far (in order); `summary()` is the end-of-run line."""

    where: str = "dataset"
    skipped: list[SkippedSample] = field(default_factory=list)

    def add(self, exc: SampleError) -> SkippedSample:
        item = SkippedSample(exc.sample_id, exc.field, exc.path, type(exc).__name__, str(exc))
        self.skipped.append(item)
        log.warning("skipping bad sample (%s): %s: %s", self.where, item.error, item.reason)
        return item

    def __len__(self) -> int:
        return len(self.skipped)

    @property
    def sample_ids(self) -> list[str | None]:
        return [s.sample_id for s in self.skipped]

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.where}: no samples skipped"
        ids = ", ".join(repr(s.sample_id) for s in self.skipped)
        return f"{self.where}: skipped {len(self.skipped)} bad sample(s): {ids}"

    def to_json(self) -> list[dict]:
        return [s.to_json() for s in self.skipped]


def build_or_skip(keys: Iterable[T], build: Callable[[T], object], *, skip: bool, skip_log: SkipLog | None) -> list:
    """`[build(k) for k in keys]`, except that with `skip=True` a `SampleError` skips that key.

    Only `SampleError` is caught: a bug (any other exception) still stops the run.
    """
    out = []
    for key in keys:
        try:
            out.append(build(key))
        except SampleError as exc:
            if not skip:
                raise
            if skip_log is None:
                raise ValueError("build_or_skip(skip=True) needs a SkipLog to record what it skips") from exc
            skip_log.add(exc)
    return out
