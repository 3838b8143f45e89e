"""What an audit check reports: a `Finding` (level, check, message, file, sample, field) and the report.

Levels: ``error`` (the data is wrong for training: the training CLIs stop with exit status 2) and
``warning`` (suspicious but trainable: printed once before training).  ``--strict`` turns every
warning into an error (`AuditReport.errors(strict=True)`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

ERROR, WARNING = "error", "warning"
LEVELS = (ERROR, WARNING)


@dataclass(frozen=True)
class Finding:
    """One problem found in the data.

    `check` is a dotted name (``audio.range``, ``text.control``, ...; the full list is in
    docs/data-and-resume.md); `path` the file holding the offending value; `sample_id` and `field`
    where in that file (a field name of the data format, e.g. ``text``, ``transcript_file``,
    ``messages[1].content[2].text``); `value` the measured number the check compared (unit in the
    message); `clip` an audio file worth plotting in the HTML report; `related` the other samples
    involved (a contradiction names both sides).
    """

    level: str
    check: str
    message: str
    path: Optional[str]
    sample_id: Optional[str]
    field: Optional[str]
    value: Optional[float] = None
    clip: Optional[str] = None
    related: tuple[str, ...] = ()     # other sample ids the finding involves (e.g. the other transcript's)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"finding level must be one of {LEVELS}, got {self.level!r}")

    def where(self) -> str:
        """The ``[sample=... field=... file=...]`` suffix every bad-input message of the project carries."""
        return f"[sample={self.sample_id!r} field={self.field!r} file={self.path!r}]"

    def line(self) -> str:
        """One line: level, check, message and where."""
        return f"{self.level}: {self.check}: {self.message} {self.where()}"


@dataclass
class ClipStats:
    """Measurements of one decoded clip (mono mix at its own rate)."""

    path: str
    sample_rate: int
    seconds: float
    peak: float                  # max |x|, full scale = 1.0
    beyond_full_scale: int       # samples with |x| > 1.0
    full_scale_share: float      # share of samples with FULL_SCALE_LEVEL <= |x| <= 1.0 (0..1)
    rms_dbfs: float              # AES17 dBFS RMS after removing DC
    frame_range_db: float        # p95 - p10 of 20 ms frame levels, dB: speech pauses make this large
    sha256: str                  # of the decoded float32 mono samples


@dataclass
class AuditReport:
    """Every finding of one audit, the clips it measured, and what it read."""

    data: str
    data_format: str
    records: int = 0
    findings: list[Finding] = field(default_factory=list)
    clips: dict[str, ClipStats] = field(default_factory=dict)
    seconds: float = 0.0
    chars_per_second: dict[str, float] = field(default_factory=dict)   # median, mad of the data set

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def errors(self, *, strict: bool = False) -> list[Finding]:
        """Findings at error level (with `strict`, warnings count as errors too)."""
        return [f for f in self.findings if f.level == ERROR or (strict and f.level == WARNING)]

    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == WARNING]

    def exit_status(self, *, strict: bool = False) -> int:
        """0: clean or warnings only; 2: errors (or, with `strict`, any finding)."""
        return 2 if self.errors(strict=strict) else 0

    def summary(self) -> str:
        """One line: what was read, how many errors and warnings, and how long it took."""
        n_err = sum(f.level == ERROR for f in self.findings)
        n_warn = sum(f.level == WARNING for f in self.findings)
        return (f"data audit of {self.data} ({self.data_format}, {self.records} records, {len(self.clips)} clips): "
                f"{n_err} error(s), {n_warn} warning(s) in {self.seconds:.2f} s")

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data, "format": self.data_format, "records": self.records,
                "seconds": round(self.seconds, 4), "chars_per_second": self.chars_per_second,
                "errors": sum(f.level == ERROR for f in self.findings),
                "warnings": sum(f.level == WARNING for f in self.findings),
                "findings": [asdict(f) for f in self.findings],
                "clips": {k: asdict(v) for k, v in self.clips.items()}}
