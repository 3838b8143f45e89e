"""Pair-specific expected differences: the exception to deriving them from declared conventions.

Only for facts no `Conventions` field expresses, each pinned to exact values by a predicate
(`holds`), so it can never hide anything but the one difference it names.  Keyed by the adapters'
NAMEs (reference, custom); `overrides_for` also returns the entries registered for ("*", "*").
"""

from __future__ import annotations

from harness.semantics.expectations import Expected


def _exact(ref_value, cus_value):
    return lambda r, c, info: r == ref_value and c == cus_value


def _ref_is(ref_value):
    return lambda r, c, info: r == ref_value


# Per-pipeline implementation choices are declared by the adapters (`Conventions.config_notes`);
# nothing is left that only a pair can explain, so this table is empty for the in-repo pairs.
OVERRIDES: dict[tuple[str, str], list[Expected]] = {}


def overrides_for(reference: str, custom: str) -> list[Expected]:
    """Entries for this pair of adapter names (plus wildcard ones)."""
    return list(OVERRIDES.get((reference, custom), [])) + list(OVERRIDES.get(("*", "*"), []))
