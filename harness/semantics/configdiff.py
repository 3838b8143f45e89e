"""Side-by-side effective settings of the two pipelines, generated from their code.

Each pipeline's `effective_config(ctx, train)` reports what its code actually uses (collator
parameters, message layout, loss reduction, LoRA, optimizer, schedule, precision); this module
flattens both into rows like the tables of the seed report.
"""

from __future__ import annotations

from typing import Any


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists/tuples become their JSON-ish repr."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k in sorted(tree):
            out.update(flatten(tree[k], f"{prefix}{k}."))
        return out
    if isinstance(tree, (list, tuple)):
        return {prefix[:-1]: [_plain(v) for v in tree]}
    return {prefix[:-1]: _plain(tree)}


def _plain(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return str(v)


def config_diff(reference: dict, custom: dict) -> list[dict]:
    """Rows {setting, reference, custom, same}, settings in sorted order."""
    fr, fc = flatten(reference), flatten(custom)
    rows = []
    for key in sorted(set(fr) | set(fc)):
        r, c = fr.get(key, "—"), fc.get(key, "—")
        rows.append({"setting": key, "reference": r, "custom": c, "same": r == c})
    return rows
