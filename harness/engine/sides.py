"""The two pipelines, seen only through their stage modules (`<pipeline>.stages`).

This is the single place where the harness imports the pipelines; everything else talks to the
`higgs_common.stages.PipelineStages` contract.
"""

from __future__ import annotations

import importlib
from types import ModuleType

SIDES: tuple[str, str] = ("reference", "custom")
_MODULES = {"reference": "reference_impl.stages", "custom": "custom_impl.stages"}


def stages_of(side: str) -> ModuleType:
    """Import `<side>_impl.stages` (lazily, so the harness's own units load without the pipelines)."""
    return importlib.import_module(_MODULES[side])


def known_faults() -> dict[str, object]:
    """Fault registry of the custom pipeline: name -> fault description object."""
    faults = importlib.import_module("custom_impl.faults")
    return dict(faults.FAULTS)


def canonical_transcript(text: str) -> str:
    """The canonical form transcripts are compared in: the reference's normalisation.

    The reference normalises target transcripts and the custom pipeline does not, so comparing
    raw strings would flag every sample; normalising is idempotent, so normalising both sides
    compares what was said, not how it was punctuated.
    """
    normalize = importlib.import_module("reference_impl.normalize").normalize_transcript
    return normalize(text)
