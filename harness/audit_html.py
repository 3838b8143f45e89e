"""The audit's HTML page: the findings table and, per offending clip, its waveform and spectrogram (PNG inline)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (before any other matplotlib import)
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from higgs_common.audit.findings import AuditReport  # noqa: E402

MAX_PLOTS = 40   # clips plotted at most (the table lists every finding)


def clip_png(path: str | Path, title: str) -> bytes:
    """Waveform (full scale +-1 marked) above a spectrogram of the clip at `path` (mono mix), as PNG bytes."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)   # (T, channels)
    wav = data.mean(axis=1)                                           # (T,)
    t = np.arange(wav.shape[0]) / sr
    fig = Figure(figsize=(9.0, 4.0))
    ax1, ax2 = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    ax1.plot(t, wav, linewidth=0.4, color="#1f4e79")
    for y in (-1.0, 1.0):
        ax1.axhline(y, color="#c0392b", linewidth=0.6, linestyle="--")
    ax1.set_title(title, fontsize=8)
    ax1.set_ylabel("amplitude")
    ax1.set_xlim(0, max(t[-1] if t.size else 0.0, 1e-3))
    finite = np.nan_to_num(wav, nan=0.0, posinf=0.0, neginf=0.0)
    with np.errstate(divide="ignore"):   # digital silence: log10(0) is drawn as the colour floor
        ax2.specgram(finite if finite.size >= 512 else np.pad(finite, (0, 512 - finite.size)), NFFT=512, Fs=sr,
                     noverlap=256, cmap="magma")
    ax2.set_xlabel("seconds")
    ax2.set_ylabel("Hz")
    fig.tight_layout()
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    return buf.getvalue()


def render_html(report: AuditReport, *, strict: bool = False) -> str:
    """A standalone HTML page of `report` (findings table, then one figure per offending clip)."""
    h = html.escape
    rows = []
    for f in report.findings:
        level = "error" if f.level == "error" or strict else "warning"
        rows.append(f'<tr class="{level}"><td>{h(f.level)}</td><td>{h(f.check)}</td><td>{h(str(f.sample_id))}</td>'
                    f'<td>{h(str(f.field))}</td><td>{h(str(f.path))}</td><td>{h(f.message)}</td></tr>')
    figures = []
    clips = list(dict.fromkeys(f.clip for f in report.findings if f.clip and Path(f.clip).is_file()))
    for clip in clips[:MAX_PLOTS]:
        checks = ", ".join(sorted({f.check for f in report.findings if f.clip == clip}))
        try:
            png = clip_png(clip, f"{clip}  [{checks}]")
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            figures.append(f"<p>cannot plot {h(clip)}: {h(str(exc))}</p>")
            continue
        data = base64.b64encode(png).decode("ascii")
        figures.append(f'<figure><img alt="{h(clip)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{h(clip)}: {h(checks)}</figcaption></figure>")
    if len(clips) > MAX_PLOTS:
        figures.append(f"<p>{len(clips) - MAX_PLOTS} more clips not plotted.</p>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>data audit: {h(report.data)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:90%}}
td,th{{border:1px solid #ccc;padding:3px 6px;vertical-align:top}} tr.error td{{background:#fbe9e7}}
tr.warning td{{background:#fff8e1}} figure{{margin:1em 0}}</style></head><body>
<h1>Data audit</h1><p>{h(report.summary())}</p>
<p>characters per second (spoken-length estimate): {h(str(report.chars_per_second))}</p>
<table><tr><th>level</th><th>check</th><th>sample</th><th>field</th><th>file</th><th>message</th></tr>
{''.join(rows)}</table>
<h2>Offending clips</h2>{''.join(figures) or '<p>none</p>'}
</body></html>
"""
