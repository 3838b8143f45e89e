"""Render a `Report` as Markdown (`report.md`) and self-contained HTML (`report.html`), and write
all three report files.  The data model and the JSON form live in `harness.report.model`.

Both documents follow one order (`SECTIONS`), built for a reader with ten seconds: the summary
first (verdict and why, the faults' symptoms, the first divergence with its cause, code location
and a decoded window with a legend), then the diagnoses, plots, stages (only what diverged is open;
declared differences one click away; equal fields as a count), the configuration differences, the
catalogue of declared differences, the configuration and the timing.  The HTML needs no network
and no script, and fits a 1366 px wide window without horizontal scrolling.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from harness.engine.diff import FieldDiff, jsonable, round_float
from harness.report.json_text import report_json_text

if TYPE_CHECKING:
    from harness.report.model import Report, StageResult

# (anchor id, title) of each section, in the order both documents show them.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"), ("diagnoses", "Diagnoses"), ("plots", "Plots"), ("stages", "Stages"),
    ("config-diff", "Configuration differences"), ("catalogue", "Declared differences (catalogue)"),
    ("configuration", "Configuration"), ("timing", "Timing"),
)
# Heatmaps drawn at most (the first divergence's field first, then one per other diverged field name).
MAX_HEATMAPS = 4

# What the special values of a decoded window mean (shown as a legend under every window).
WINDOW_LEGEND: tuple[tuple[str, str], ...] = (
    ("nan", "no value at this position on that side: for a per-position loss, the position is not supervised "
            "(its label is -100, e.g. a codebook the delay pattern has not started yet)"),
    ("-100", "ignored label: the loss skips (masks) this position"),
    ("inf", "infinite value"),
)

# --------------------------------------------------------------------------------------------
# shared helpers


def _text(x: Any) -> str:
    """A value as report text: None empty, floats rounded, strings as they are, the rest as JSON."""
    if x is None:
        return ""
    if isinstance(x, float):
        x = round_float(x)
    return x if isinstance(x, str) else json.dumps(jsonable(x), sort_keys=True)


def _cell(x: Any) -> str:
    """A Markdown table cell: `_text`, pipes escaped, newlines flattened."""
    return _text(x).replace("|", "\\|").replace("\n", " ")


def _counts(f: FieldDiff) -> str:
    return f"{f.mismatches} of {f.numel}" if f.status in ("mismatch", "nonfinite") else ""


def _columns(check: str | None, side: str | None) -> tuple[str, str]:
    if check == "declared":
        return (f"declared ({side})" if side else "declared", f"actual ({side})" if side else "actual")
    return ("reference", "custom")


def _window_symbols(win: dict | None) -> list[tuple[str, str]]:
    """The legend entries whose symbol occurs in the window (always all of them is noise)."""
    if not win:
        return []
    values = {v for r in win["rows"] for side in ("reference", "custom") for v in r[side]}
    return [(sym, meaning) for sym, meaning in WINDOW_LEGEND if sym in values]


def _summary_rows(report: Report) -> list[tuple[str, str, Any]]:
    """(css id or "", label, value) rows of the first divergence, in reading order."""
    fd = report.first_divergence()
    if fd is None:
        return []
    left, right = _columns(fd.get("check"), fd.get("side"))
    cause = fd.get("cause") or {}
    rows = [("fd-where", "where", f"{fd['stage']}.{fd['field']}"),
            ("fd-sample", "sample", fd.get("sample")),
            ("fd-position", "position", fd.get("decoded") or (fd.get("index") if fd.get("index") else None)),
            ("fd-reference", left, fd.get("reference")), ("fd-custom", right, fd.get("custom")),
            ("fd-relation", "relation", fd.get("relation")),
            ("first-cause", "cause", cause.get("mechanism") or "no rule explains it: read the relation and the window"),
            ("fd-evidence", "evidence", cause.get("evidence")),
            ("fd-location", "code location", cause.get("location"))]
    return [r for r in rows if r[2] not in (None, "", [])]


def _no_divergence_text(report: Report) -> str:
    """What the summary says in place of a first divergence (pass, propagated spread, or a crashed stage)."""
    errored = next((st for st in report.ordered_stages() if st.status == "error"), None)
    if report.verdict == "error" and errored is not None:
        return f"Stage {errored.stage} could not run: {errored.error}"
    origin = report.propagation_origin()
    if origin is not None:
        n = sum(k for _, k in report.spread())
        return (f"No first divergence: the declared differences at stage {origin} spread to {n} undeclared "
                "difference(s) in later stages (listed under Stages).")
    return (f"No undeclared divergence ({sum(st.n_expected for st in report.stages)} declared difference(s), "
            f"{sum(st.n_equal for st in report.stages)} equal field(s)).")


def _expected_and_diverged(st: StageResult) -> tuple[list[FieldDiff], list[FieldDiff]]:
    return ([f for f in st.fields if f.diverged and f.expected], [f for f in st.fields if f.unexpected])


def _field_row(f: FieldDiff) -> list[Any]:
    relation = (f.relation or {}).get("words")
    cause = (f.cause or {}).get("mechanism")
    return [f.field, f.status, _counts(f), f.first_index, f.reference, f.custom, f.decoded, f.sample, relation,
            cause, f.note]


FIELD_HEADER = ["field", "status", "differ", "first index", "reference / declared", "custom / actual", "decoded",
                "sample", "relation", "cause", "note"]
EXPECTED_HEADER = ["field", "status", "differ", "sample", "why (declared)"]


def _expected_row(f: FieldDiff) -> list[Any]:
    return [f.field, f.status, _counts(f), f.sample, f.expected_reason]


def _stage_line(st: StageResult) -> str:
    parts = [f"{st.n_diverged} diverged"] if st.n_diverged else []
    parts += [f"{st.n_expected} declared difference(s)"] if st.n_expected else []
    parts += [f"{st.n_equal} equal"]
    return ", ".join(parts)


def _config_rows(report: Report) -> tuple[list[dict], int]:
    """The settings that differ between the pipelines, and how many are the same."""
    differ = [r for r in report.config_diff if not r.get("same")]
    return differ, len(report.config_diff) - len(differ)


# --------------------------------------------------------------------------------------------
# Markdown


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _window_md(win: dict | None) -> list[str]:
    if not win:
        return []
    pos = [f"**{p}**" if p == win["first"] else str(p) for p in win["positions"]]
    rows = [[r["label"], side] + list(r[side]) for r in win["rows"] for side in ("reference", "custom")]
    out = ["", f"Decoded window around the first difference ({win['axis']} {win['positions'][0]}.."
               f"{win['positions'][-1]}; the first differing {win['axis']} in bold):", ""]
    out += _table(["row", "side"] + pos, rows)
    legend = _window_symbols(win)
    if legend:
        out += ["", "Legend: " + "; ".join(f"`{sym}` = {meaning}" for sym, meaning in legend) + "."]
    return out + [""]


def symptom_line(s: dict) -> str:
    """One symptom as a line: who shows it, what, why, where."""
    run = f"[{s['run']}] " if s.get("run") else ""
    loc = f" (at {s['location']})" if s.get("location") else ""
    return f"- {run}**{s.get('text')}**: {s.get('mechanism')}{loc}"


def _headline_text(report: Report) -> str | None:
    """The divergence chosen by consequence (`Report.headline`) in one or two sentences (Markdown bold)."""
    hl = report.headline()
    if hl is None:
        return None
    first = hl["first_in_pipeline_order"]
    text = (f"**{hl['stage']}/{hl['field']}** ({hl['status']}): {hl['consequence']}."
            + ("" if (first["stage"], first["field"]) == (hl["stage"], hl["field"]) else
               f" First divergence in pipeline order: {first['stage']}/{first['field']}."))
    if hl["other_divergences"]:
        text += (" Also diverged outside the loss, backward and step stages: "
                 + ", ".join(f"{d['stage']}/{d['field']}" for d in hl["other_divergences"][:10])
                 + (" ..." if len(hl["other_divergences"]) > 10 else "") + ".")
    return text


def render_markdown(report: Report) -> str:
    v = report.verdict
    lines = [f"# {report.run_name}: {report.summary()}", "",
             f"**Verdict:** `{v}`. {report.verdict_reason()}", "",
             f"Mode: {report.mode}; stages requested: {', '.join(report.stages_requested)}.", "",
             "Contents: " + " · ".join(f"[{title}](#{anchor})" for anchor, title in SECTIONS), ""]

    lines += ['<a id="summary"></a>', "## Summary", ""]
    if report.symptoms:
        lines += ["### Symptoms", ""] + [symptom_line(s) for s in report.symptoms] + [""]
    headline = _headline_text(report)
    if headline:
        lines += ["### Headline", "", headline, ""]
    rows = _summary_rows(report)
    if rows:
        lines += ["### First divergence", ""]
        lines += [f"- **{label}:** {_text(value)}" for _, label, value in rows]
        lines += _window_md((report.first_divergence() or {}).get("window"))
    else:
        lines += [_no_divergence_text(report), ""]

    lines += ['<a id="diagnoses"></a>', "## Diagnoses", ""]
    if report.diagnoses:
        for d in report.diagnoses:
            where = ".".join(p for p in (d.stage, d.field) if p)
            lines += [f"- **{d.cause}**" + (f" (`{where}`)" if where else "") + f": {d.evidence}"
                      + (f" [at `{d.location}`]" if d.location else "")]
    else:
        lines += ["(none)"]
    lines += [""]

    lines += ['<a id="plots"></a>', "## Plots", "", "The plots are in report.html.", ""]

    lines += ['<a id="stages"></a>', "## Stages", ""]
    lines += _table(["stage", "status", "equal", "declared", "diverged", "first diverged field", "error"],
                    [[st.stage, st.status, st.n_equal, st.n_expected, st.n_diverged,
                      (st.first_unexpected().field if st.first_unexpected() else None), st.error]
                     for st in report.ordered_stages()]) + [""]
    for st in report.ordered_stages():
        lines += [f"### Stage `{st.stage}`: {st.status} ({_stage_line(st)})", ""]
        if st.note:
            lines += [st.note, ""]
        if st.error:
            lines += ["```", st.error.rstrip(), "```", ""]
        expected, diverged = _expected_and_diverged(st)
        if diverged:
            lines += _table(FIELD_HEADER, [_field_row(f) for f in diverged]) + [""]
        if expected:
            lines += [f"<details><summary>{len(expected)} declared difference(s)</summary>", ""]
            lines += _table(EXPECTED_HEADER, [_expected_row(f) for f in expected]) + ["", "</details>", ""]
        lines += [f"{st.n_equal} equal field(s) (not listed)." if st.fields else "(no fields compared)", ""]

    differ, same = _config_rows(report)
    lines += ['<a id="config-diff"></a>', "## Configuration differences", ""]
    if differ:
        lines += _table(["setting", "reference", "custom"],
                        [[r.get("setting"), r.get("reference"), r.get("custom")] for r in differ])
        lines += ["", f"{same} setting(s) the same (not listed)."]
    else:
        lines += [f"(none: {same} setting(s), all the same)" if same else "(none recorded)"]
    lines += [""]

    lines += ['<a id="catalogue"></a>', "## Declared differences (catalogue)", ""]
    if report.catalogue:
        lines += ["<details><summary>" + f"{len(report.catalogue)} declared difference(s)" + "</summary>", ""]
        lines += _table(["id", "field", "reason"],
                        [[c.get("id"), c.get("field"), c.get("reason")] for c in report.catalogue])
        lines += ["", "</details>"]
    else:
        lines += ["(none declared)"]
    lines += [""]

    lines += ['<a id="configuration"></a>', "## Configuration", "", "```json",
              json.dumps(jsonable(report.config), sort_keys=True, indent=2), "```", ""]
    if report.extras:
        lines += ["Extras:", "", "```json", json.dumps(jsonable(report.extras), sort_keys=True, indent=2), "```", ""]

    # Volatile section last, so everything above it is reproducible.
    lines += ['<a id="timing"></a>', "## Timing (volatile)", "", f"Generated at {report.generated_at}.", ""]
    lines += _table(["stage", "compute s", "diff s"],
                    [[st.stage, round_float(st.seconds_compute), round_float(st.seconds_diff)]
                     for st in report.ordered_stages()])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#222;line-height:1.4}
.layout{display:grid;grid-template-columns:13rem minmax(0,1fr);gap:1.5rem;max-width:1500px;margin:0 auto;padding:1rem 1.5rem}
nav.toc{position:sticky;top:1rem;align-self:start;font-size:0.9em;border-right:1px solid #ddd;padding-right:1rem}
nav.toc ol{padding-left:1.2em;margin:0.3em 0}nav.toc li{margin:0.15em 0}
main{min-width:0}
h1{font-size:1.4em;margin:0 0 0.3em 0;overflow-wrap:anywhere}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:0.4em 0 1em 0;font-size:0.85em;max-width:100%}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f0f0f0}
.wide{width:100%;table-layout:fixed}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:0.9em}
pre{background:#f7f7f7;padding:0.6em;white-space:pre-wrap;overflow-wrap:anywhere;max-height:30em;overflow-y:auto}
.verdict{font-size:1.2em;font-weight:bold;padding:0.2em 0.6em;border-radius:4px;display:inline-block}
.pass{background:#d4f5d4}.diverged{background:#f8d0d0}.error{background:#f8e0b0}
.st-ok{color:#176117}.st-expected{color:#7a5b00}.st-diverged{color:#a31515;font-weight:bold}
.st-error{color:#a35a00;font-weight:bold}.st-skipped{color:#777}
.card{border:2px solid #a31515;border-radius:6px;padding:0.5em 0.8em;margin:0.6em 0;background:#fffafa}
.card.clean{border-color:#176117;background:#f6fff6}.card.error{border-color:#a35a00;background:#fff8ee}
.card dl{display:grid;grid-template-columns:8.5em minmax(0,1fr);gap:0.15em 0.8em;margin:0}
.card dt{font-weight:bold;text-align:right;color:#555}.card dd{margin:0;overflow-wrap:anywhere}
#first-cause{font-weight:bold}
.symptoms{margin:0.3em 0;padding-left:1.2em}
.window td.first,.window th.first{outline:2px solid #a31515}
.window td.differs{background:#fdecec}
.legend{font-size:0.85em;color:#444;margin:0 0 0.8em 0}
tr.expected td{background:#fffbe6}tr.unexpected td{background:#fdecec}
details{margin:0.3em 0 0.8em 0}summary{cursor:pointer}
details.stage>summary{font-size:1.05em;font-weight:bold}
figure{margin:0.5em 0 1em 0}figcaption{font-size:0.85em;color:#444}
img{max-width:100%;height:auto;border:1px solid #ddd}
.muted{color:#666}
"""


def _h(x: Any) -> str:
    return html.escape(_text(x))


def _html_table(header: Sequence[str], rows: list[list[Any]], row_classes: list[str] | None = None,
                *, cls: str = "") -> str:
    table_class = f' class="{cls}"' if cls else ""
    out = [f"<table{table_class}><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for i, row in enumerate(rows):
        rc = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        out.append(f"<tr{rc}>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _window_html(win: dict | None) -> str:
    if not win:
        return ""
    first = win["first"]
    head = "".join(f'<th{" class=first" if p == first else ""}>{p}</th>' for p in win["positions"])   # (positions,)
    out = [f'<p>Decoded window around the first difference (along <b>{html.escape(str(win["axis"]))}</b>; '
           f'the first differing {html.escape(str(win["axis"]))} is outlined, differing cells are shaded):</p>',
           f'<table class="window" id="fd-window"><tr><th>row</th><th>side</th>{head}</tr>']
    for r in win["rows"]:
        for side in ("reference", "custom"):
            cells = []
            for p, a, b in zip(win["positions"], r["reference"], r["custom"]):
                classes = " ".join((["first"] if p == first else []) + (["differs"] if a != b else []))
                attr = f' class="{classes}"' if classes else ""
                value = a if side == "reference" else b
                cells.append(f"<td{attr}><code>{html.escape(str(value))}</code></td>")
            out.append(f"<tr><td>{html.escape(str(r['label']))}</td><td>{side}</td>{''.join(cells)}</tr>")
    out.append("</table>")
    legend = _window_symbols(win)
    if legend:
        out.append('<p class="legend" id="fd-legend">Legend: '
                   + "; ".join(f"<code>{html.escape(s)}</code> = {html.escape(m)}" for s, m in legend) + ".</p>")
    return "\n".join(out)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def heatmap_fields(report: Report) -> list[FieldDiff]:
    """The diverged fields that get a heatmap: 2-D, a kept mismatch mask; the first divergence's own field
    first, then the first diverged field of every other name, at most `MAX_HEATMAPS`."""
    first = report.first_divergence_field()
    candidates = [f for st in report.ordered_stages() for f in st.fields
                  if f.unexpected and f.mismatch_mask is not None and f.mismatch_mask.dim() == 2]
    if first is not None and first in candidates:
        candidates.remove(first)
        candidates.insert(0, first)
    out, names = [], set()
    for f in candidates:
        if (f.stage, f.field) in names:
            continue
        names.add((f.stage, f.field))
        out.append(f)
    return out[:MAX_HEATMAPS]


def _sample_words(f: FieldDiff) -> str:
    return f"sample {f.sample}" if f.sample else "the whole batch (no single sample)"


def _plots(report: Report) -> list[str]:
    """Heatmaps of 2-D masks (axes from the field's declared axes, naming the sample) and the
    per-codebook loss bars, as <figure> snippets."""
    from harness.report import plots  # matplotlib is only needed for HTML

    out = []
    first = report.first_divergence_field()
    for f in heatmap_fields(report):
        mask = f.mismatch_mask
        title = f"{f.stage}.{f.field}, {_sample_words(f)}: {f.mismatches} of {f.numel} differ"
        png = plots.mismatch_heatmap(mask, f"{f.stage}.{f.field}, {_sample_words(f)}", axes=f.axes)
        tag = " (the first divergence)" if f is first else ""
        out.append(f'<figure id="plot-{html.escape(f.stage)}-{html.escape(f.field)}">{_img(png, title)}'
                   f"<figcaption>{html.escape(title)}{tag}; red = differs, axes as the stage declares them "
                   f"({html.escape(' x '.join(f.axes) if f.axes else 'undeclared')}).</figcaption></figure>")
    pcb = report.extras.get("per_codebook") if isinstance(report.extras, dict) else None
    if isinstance(pcb, dict) and pcb.get("reference") is not None and pcb.get("custom") is not None:
        samples = report.config.get("samples") if isinstance(report.config, dict) else None
        which = f"samples {', '.join(samples)}" if samples else "the batch"
        title = f"audio loss per codebook, {which}"
        png = plots.per_codebook_bars(pcb["reference"], pcb["custom"], title)
        out.append(f"<figure>{_img(png, title)}<figcaption>{html.escape(title)}: reference vs custom "
                   "(a missing bar: no supervised token in that codebook).</figcaption></figure>")
    return out


def _summary_html(report: Report) -> list[str]:
    v = report.verdict
    parts = ['<section id="summary">',
             f'<p id="verdict"><span class="verdict {html.escape(v)}">verdict: {html.escape(v)}</span> '
             f'<span id="verdict-reason">{html.escape(report.verdict_reason())}</span></p>']
    if report.symptoms:
        parts.append('<p><b>Symptoms</b> (what a user sees in training):</p><ul class="symptoms" id="symptoms">'
                     + "".join(f"<li>{_h(('[' + s['run'] + '] ') if s.get('run') else '')}<b>{_h(s.get('text'))}</b>: "
                               f"{_h(s.get('mechanism'))}"
                               f"{_h(' (at ' + s['location'] + ')' if s.get('location') else '')}</li>"
                               for s in report.symptoms) + "</ul>")
    headline = _headline_text(report)
    if headline:
        parts.append(f'<p id="headline"><b>Headline</b> (by consequence): {_h(headline.replace("**", ""))}</p>')
    rows = _summary_rows(report)
    if rows:
        parts.append('<div class="card" id="first-divergence"><dl>')
        for ident, label, value in rows:
            parts.append(f'<dt>{html.escape(label)}</dt><dd id="{ident}">{_h(value)}</dd>')
        parts.append("</dl></div>")
        parts.append(_window_html((report.first_divergence() or {}).get("window")))
    else:
        kind = "clean" if v == "pass" else "error"
        parts.append(f'<div class="card {kind}" id="first-divergence"><p id="first-cause">'
                     f"{html.escape(_no_divergence_text(report))}</p></div>")
    parts.append("</section>")
    return parts


def _stages_html(report: Report) -> list[str]:
    parts = ['<section id="stages"><h2>Stages</h2>']
    rows, classes = [], []
    for st in report.ordered_stages():
        first = st.first_unexpected()
        rows.append([st.stage, st.status, st.n_equal, st.n_expected, st.n_diverged, first.field if first else None,
                     st.error])
        classes.append(f"st-{st.status}")
    parts.append(_html_table(["stage", "status", "equal", "declared", "diverged", "first diverged field", "error"],
                             rows, classes))
    for st in report.ordered_stages():
        expected, diverged = _expected_and_diverged(st)
        is_open = " open" if diverged or st.error else ""
        parts.append(f'<details class="stage" id="stage-{html.escape(st.stage)}"{is_open}><summary>Stage '
                     f'<code>{html.escape(st.stage)}</code>: <span class="st-{html.escape(st.status)}">'
                     f"{html.escape(st.status)}</span> <span class=muted>({html.escape(_stage_line(st))})</span>"
                     "</summary>")
        if st.note:
            parts.append(f"<p>{html.escape(st.note)}</p>")
        if st.error:
            parts.append(f"<pre>{html.escape(st.error)}</pre>")
        if diverged:
            parts.append(_html_table(FIELD_HEADER, [_field_row(f) for f in diverged], ["unexpected"] * len(diverged),
                                     cls="wide"))
        if expected:
            parts.append(f"<details><summary>{len(expected)} declared difference(s)</summary>")
            parts.append(_html_table(EXPECTED_HEADER, [_expected_row(f) for f in expected],
                                     ["expected"] * len(expected), cls="wide"))
            parts.append("</details>")
        parts.append(f'<p class="muted">{st.n_equal} equal field(s), not listed.</p>' if st.fields
                     else "<p>(no fields compared)</p>")
        parts.append("</details>")
    parts.append("</section>")
    return parts


def render_html(report: Report) -> str:
    plots_html = _plots(report)
    toc = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in SECTIONS)
    stage_toc = "".join(f'<li><a href="#stage-{html.escape(st.stage)}">{html.escape(st.stage)}</a> '
                        f'<span class="st-{html.escape(st.status)}">{html.escape(st.status)}</span></li>'
                        for st in report.ordered_stages())
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>Differential report: {html.escape(report.run_name)}</title>",
             f"<style>{_CSS}</style></head><body>", '<div class="layout">',
             f'<nav class="toc" id="toc"><b>Contents</b><ol>{toc}</ol><b>Stages</b><ol>{stage_toc}</ol></nav>',
             "<main>",
             f"<h1>Differential report: {html.escape(report.run_name)}</h1>",
             f'<p class="muted">Mode {html.escape(report.mode)} &middot; stages requested: '
             f"{html.escape(', '.join(report.stages_requested))} &middot; generated at "
             f"{html.escape(report.generated_at)}</p>"]
    parts += _summary_html(report)

    parts.append('<section id="diagnoses"><h2>Diagnoses</h2>')
    if report.diagnoses:
        parts.append("<ul>")
        for d in report.diagnoses:
            where = ".".join(p for p in (d.stage, d.field) if p)
            parts.append(f"<li><b>{html.escape(d.cause)}</b>"
                         + (f" (<code>{html.escape(where)}</code>)" if where else "")
                         + f": {html.escape(d.evidence)}"
                         + (f" &middot; at <code>{html.escape(d.location)}</code>" if d.location else "") + "</li>")
        parts.append("</ul>")
    else:
        parts.append("<p>(none)</p>")
    parts.append("</section>")

    parts.append('<section id="plots"><h2>Plots</h2>')
    parts += plots_html or ["<p>(no plot: no diverged 2-D field with a kept mask, no per-codebook loss)</p>"]
    parts.append("</section>")

    parts += _stages_html(report)

    differ, same = _config_rows(report)
    parts.append('<section id="config-diff"><h2>Configuration differences</h2>')
    if differ:
        parts.append(_html_table(["setting", "reference", "custom"],
                                 [[r.get("setting"), r.get("reference"), r.get("custom")] for r in differ],
                                 cls="wide"))
        parts.append(f'<p class="muted">{same} setting(s) the same, not listed.</p>')
    else:
        parts.append(f"<p>(none: {same} setting(s), all the same)</p>" if same else "<p>(none recorded)</p>")
    parts.append("</section>")

    parts.append('<section id="catalogue"><h2>Declared differences (catalogue)</h2>')
    if report.catalogue:
        parts.append(f"<details><summary>{len(report.catalogue)} declared difference(s)</summary>")
        parts.append(_html_table(["id", "field", "reason"],
                                 [[c.get("id"), c.get("field"), c.get("reason")] for c in report.catalogue],
                                 cls="wide"))
        parts.append("</details>")
    else:
        parts.append("<p>(none declared)</p>")
    parts.append("</section>")

    parts.append('<section id="configuration"><h2>Configuration</h2><details><summary>the run\'s configuration'
                 "</summary>"
                 f"<pre>{html.escape(json.dumps(jsonable(report.config), sort_keys=True, indent=2))}</pre>")
    if report.extras:
        parts.append(f"<p>Extras:</p><pre>{html.escape(json.dumps(jsonable(report.extras), sort_keys=True, indent=2))}"
                     "</pre>")
    parts.append("</details></section>")

    parts.append('<section id="timing"><h2>Timing</h2>')
    parts.append(_html_table(["stage", "compute s", "diff s"],
                             [[st.stage, round_float(st.seconds_compute), round_float(st.seconds_diff)]
                              for st in report.ordered_stages()]))
    parts += ["</section>", "</main></div></body></html>"]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------

def write_report(report: Report, out_dir: Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md",
             "html": out_dir / "report.html"}
    paths["json"].write_text(report_json_text(report), encoding="utf-8")
    paths["md"].write_text(render_markdown(report), encoding="utf-8")
    paths["html"].write_text(render_html(report), encoding="utf-8")
    return paths
