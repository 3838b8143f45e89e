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


def heatmap_layout(shape: Sequence[int], axes: Sequence[str] | None) -> tuple[bool, str, str]:
    """(transpose, y label, x label) for a 2-D field of `shape` whose dims mean `axes`.

    The longer dimension runs along x (a (frame, codebook) grid of (167, 8) is drawn 8 rows by 167
    columns); each label is the declared name of the dimension drawn along it, or "dim 0"/"dim 1"
    when the field declares none.  Raises ValueError for a shape that is not 2-D or axes of another length.
    """
    if len(shape) != 2:
        raise ValueError(f"heatmap_layout: needs a 2-D shape, got {list(shape)}")
    if axes is not None and len(axes) != 2:
        raise ValueError(f"heatmap_layout: a 2-D field needs 2 axis names, got {list(axes)}")
    labels = [f"{axes[0]} (dim 0)", f"{axes[1]} (dim 1)"] if axes is not None else ["dim 0", "dim 1"]
    transpose = shape[0] > shape[1]
    return (True, labels[1], labels[0]) if transpose else (False, labels[0], labels[1])


def mismatch_heatmap(mask_2d: "torch.Tensor | Sequence[Sequence[bool]]", title: str, *,
                     axes: Sequence[str] | None = None, ylabel: str | None = None, xlabel: str | None = None) -> bytes:
    """PNG of where two 2-D values differ (red = differs) with axes named from `axes`, the field's
    declared dimension names (`heatmap_layout`: the longer dimension along x).  `ylabel`/`xlabel`
    override the labels.  Raises ValueError for a mask that is not 2-D."""
    return _png(heatmap_figure(mask_2d, title, axes=axes, ylabel=ylabel, xlabel=xlabel))


def heatmap_figure(mask_2d: "torch.Tensor | Sequence[Sequence[bool]]", title: str, *,
                   axes: Sequence[str] | None = None, ylabel: str | None = None, xlabel: str | None = None) -> Figure:
    """The `mismatch_heatmap` figure itself (for callers that want another format, and for tests)."""
    mask = torch.as_tensor(mask_2d).detach().to("cpu", torch.bool)
    if mask.dim() != 2:
        raise ValueError(f"mismatch_heatmap({title!r}): needs a 2-D mask, got shape {list(mask.shape)}")
    transpose, ylab, xlab = heatmap_layout(tuple(mask.shape), axes)
    grid = mask.t() if transpose else mask               # (rows drawn, columns drawn)
    rows, cols = grid.shape
    fig = Figure(figsize=(min(12.0, 3.5 + cols / 40.0), min(6.0, 1.8 + rows * 0.3)))
    ax = fig.add_subplot(1, 1, 1)
    cmap = ListedColormap(["#e8f4e8", "#c0392b"])
    ax.imshow(grid.to(torch.uint8).numpy(), cmap=cmap, vmin=0, vmax=1, aspect="auto",
              interpolation="nearest")
    ax.set_title(f"{title}\n(red = differs; {int(mask.sum())} of {mask.numel()})", fontsize=9)
    ax.set_xlabel(xlabel if xlabel is not None else xlab)
    ax.set_ylabel(ylabel if ylabel is not None else ylab)
    if rows <= 32:
        ax.set_yticks(range(rows))
    fig.tight_layout()
    return fig


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
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
