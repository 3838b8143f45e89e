"""PNG plots for the HTML report (matplotlib, Agg, no pyplot global state).

Why no pyplot: the harness may run inside other tools/threads; an explicit `Figure` with an Agg
canvas never touches a GUI backend or the global figure registry.  PNG metadata is fixed
(no "Software" key) so the same input gives the same bytes.
"""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (before any other matplotlib import)
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import torch  # noqa: E402

_PNG_METADATA = {"Software": None}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata=_PNG_METADATA)
    return buf.getvalue()


def mismatch_heatmap(mask_2d: "torch.Tensor | Sequence[Sequence[bool]]", title: str, *,
                     ylabel: str = "codebook", xlabel: str = "frame") -> bytes:
    """Where two 2-D code grids differ; rows = dim 0 (codebooks), columns = dim 1 (frames)."""
    mask = torch.as_tensor(mask_2d).detach().to("cpu", torch.bool)
    if mask.dim() != 2:
        raise ValueError(f"mismatch_heatmap({title!r}): needs a 2-D mask, got shape {list(mask.shape)}")
    rows, cols = mask.shape
    fig = Figure(figsize=(min(14.0, 3.0 + cols / 40.0), min(8.0, 1.5 + rows * 0.35)))
    ax = fig.add_subplot(1, 1, 1)
    cmap = ListedColormap(["#e8f4e8", "#c0392b"])
    ax.imshow(mask.to(torch.uint8).numpy(), cmap=cmap, vmin=0, vmax=1, aspect="auto",
              interpolation="nearest")
    ax.set_title(f"{title}\n(red = differs; {int(mask.sum())}/{mask.numel()})", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if rows <= 32:
        ax.set_yticks(range(rows))
    fig.tight_layout()
    return _png(fig)


def per_codebook_bars(reference: Sequence[float], custom: Sequence[float], title: str) -> bytes:
    """Grouped bars of a per-codebook loss, reference vs custom (NaN drawn as missing)."""
    ref = [float(x) for x in torch.as_tensor(reference, dtype=torch.float64).reshape(-1).tolist()]
    cus = [float(x) for x in torch.as_tensor(custom, dtype=torch.float64).reshape(-1).tolist()]
    n = max(len(ref), len(cus))
    fig = Figure(figsize=(min(12.0, 3.0 + 0.6 * n), 3.5))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.4
    ax.bar([i - width / 2 for i in range(len(ref))], ref, width, label="reference", color="#2c7fb8")
    ax.bar([i + width / 2 for i in range(len(cus))], cus, width, label="custom", color="#f39c12")
    ax.set_xticks(range(n))
    ax.set_xlabel("codebook")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
