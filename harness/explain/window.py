"""A small decoded window of both values around the first differing index, for reports.

For a code grid (codebook, frame) every codebook row is shown over frames first-4 .. first+4; for
token ids or labels (sample, position) the sample's row over positions first-4 .. first+4, each id
decoded to its token text; other tensors show the last axis around the index.  JSON-able.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

WIDTH = 4


def _fmt(v: Any, token: Callable[[int], str] | None) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if token is not None and isinstance(v, int):
        return token(v)
    return str(v)


def window(reference: Any, custom: Any, index: Sequence[int] | None, *, axes: Sequence[str] | None = None,
           token: Callable[[int], str] | None = None, width: int = WIDTH) -> dict | None:
    """{"axis", "positions", "rows": [{"label", "reference", "custom"}]} around `index`, or None."""
    if not isinstance(reference, torch.Tensor) or not isinstance(custom, torch.Tensor) or not index:
        return None
    if reference.shape != custom.shape or reference.dim() == 0:
        return None
    ref, cus = reference.detach().cpu(), custom.detach().cpu()
    last = ref.dim() - 1
    j = int(index[last])
    lo, hi = max(0, j - width), min(ref.shape[last], j + width + 1)
    axis = axes[last] if axes and len(axes) > last else f"axis {last}"
    rows = []
    if ref.dim() == 2 and axes and axes[0] == "codebook":
        for cb in range(ref.shape[0]):
            rows.append({"label": f"codebook {cb}", "reference": [_fmt(v, None) for v in ref[cb, lo:hi].tolist()],
                         "custom": [_fmt(v, None) for v in cus[cb, lo:hi].tolist()]})
    else:
        prefix = tuple(int(i) for i in index[:last])
        r_row, c_row = ref[prefix][lo:hi].tolist(), cus[prefix][lo:hi].tolist()
        label = ", ".join(f"{(axes or [])[d] if axes and d < len(axes) else d} {i}" for d, i in enumerate(prefix))
        rows.append({"label": label or "values", "reference": [_fmt(v, token) for v in r_row],
                     "custom": [_fmt(v, token) for v in c_row]})
    return {"axis": axis, "positions": list(range(lo, hi)), "first": j, "rows": rows}
