"""Render a `Report` as Markdown (`report.md`) and self-contained HTML (`report.html`), and write
all three report files.  The data model and the JSON form live in `harness.report.model`.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.engine.diff import FieldDiff, jsonable, round_float
from harness.report.json_text import report_json_text

if TYPE_CHECKING:
    from harness.report.model import Report, StageResult

# Markdown tables list every diverged field but at most this many equal ones per stage.
MAX_EQUAL_ROWS = 40

# --------------------------------------------------------------------------------------------
# Markdown

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


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


FIELD_HEADER = ["field", "status", "expected", "mismatches", "max_abs", "max_rel", "first index",
                "reference / declared", "custom / actual", "decoded", "sample", "relation", "cause", "note"]
FIRST_HEADER = ["stage", "field", "status", "sample", "index", "reference / declared", "custom / actual", "decoded",
                "relation", "cause", "evidence"]


def _field_row(f: FieldDiff) -> list[Any]:
    expected = f"yes: {f.expected_reason}" if f.expected else ""
    counts = f"{f.mismatches}/{f.numel}" if f.status in ("equal", "mismatch", "nonfinite") else ""
    relation = (f.relation or {}).get("words")
    cause = (f.cause or {}).get("mechanism")
    return [f.field, f.status, expected, counts, f.max_abs, f.max_rel, f.first_index,
            f.reference, f.custom, f.decoded, f.sample, relation, cause, f.note]


def _first_row(fd: dict) -> list[Any]:
    return [fd["stage"], fd["field"], fd["status"], fd["sample"], fd["index"], fd["reference"], fd["custom"],
            fd["decoded"], fd.get("relation"), fd.get("cause"), fd.get("cause_evidence")]


def _window_md(win: dict | None) -> list[str]:
    if not win:
        return []
    head = ["", f"{win['axis']} " + " ".join(f"**{p}**" if p == win["first"] else str(p) for p in win["positions"])]
    rows = [[r["label"], "reference", " ".join(r["reference"])] for r in win["rows"]]
    rows += [[r["label"], "custom", " ".join(r["custom"])] for r in win["rows"]]
    return ["", f"Around the first index ({win['axis']} {win['positions'][0]}..{win['positions'][-1]}):", ""] + \
        _table(["row", "side", " ".join(str(p) for p in win["positions"])], rows) + [""]


def _window_html(win: dict | None) -> str:
    if not win:
        return ""
    head = "".join(f"<th>{'<u>' if p == win['first'] else ''}{p}{'</u>' if p == win['first'] else ''}</th>"
                   for p in win["positions"])
    out = [f"<p>Around the first index ({html.escape(str(win['axis']))}):</p>",
           f"<table><tr><th>row</th><th>side</th>{head}</tr>"]
    for r in win["rows"]:
        for side in ("reference", "custom"):
            cells = "".join(f"<td><code>{html.escape(str(v))}</code></td>" for v in r[side])
            out.append(f"<tr><td>{html.escape(str(r['label']))}</td><td>{side}</td>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _shown_fields(st: StageResult) -> tuple[list[FieldDiff], int]:
    """Fields to list in a stage table (all diverged ones, the first MAX_EQUAL_ROWS equal ones)."""
    shown, hidden, shown_equal = [], 0, 0
    for f in st.fields:
        if not f.diverged:
            if shown_equal >= MAX_EQUAL_ROWS:
                hidden += 1
                continue
            shown_equal += 1
        shown.append(f)
    return shown, hidden


def _first_field(st: StageResult) -> str | None:
    first = st.first_unexpected()
    return first.field if first is not None else None


def symptom_line(s: dict) -> str:
    """One symptom as a line: who shows it, what, why, where."""
    run = f"[{s['run']}] " if s.get("run") else ""
    loc = f" (at {s['location']})" if s.get("location") else ""
    return f"- {run}**{s.get('text')}**: {s.get('mechanism')}{loc}"


def render_markdown(report: Report) -> str:
    fd = report.first_divergence()
    lines = [f"# {report.run_name}: {report.summary()}", "",
             f"- **Verdict:** `{report.verdict}`",
             f"- **Mode:** {report.mode}",
             f"- **Stages requested:** {', '.join(report.stages_requested)}", ""]
    if report.symptoms:
        lines[1:1] = ["", "## Symptoms", ""] + [symptom_line(s) for s in report.symptoms] + [""]

    hl = report.headline()
    if hl is not None:
        first = hl["first_in_pipeline_order"]
        lines += ["## Headline", "", f"**{hl['stage']}/{hl['field']}** ({hl['status']}): {hl['consequence']}."
                  + ("" if (first["stage"], first["field"]) == (hl["stage"], hl["field"]) else
                     f" First divergence in pipeline order: {first['stage']}/{first['field']}."), ""]
        if hl["other_divergences"]:
            lines += ["Also diverged outside the loss, backward and step stages: "
                      + ", ".join(f"{d['stage']}/{d['field']}" for d in hl["other_divergences"][:10])
                      + (" ..." if len(hl["other_divergences"]) > 10 else ""), ""]
    lines += ["## First divergence", ""]
    if fd is None:
        lines += ["No unexpected divergence.", ""]
    else:
        lines += _table(FIRST_HEADER, [_first_row(fd)]) + _window_md(fd.get("window")) + [""]

    lines += ["## Stages", ""]
    lines += _table(["stage", "status", "fields", "diverged", "expected", "first diverged field",
                     "error"],
                    [[st.stage, st.status, len(st.fields), st.n_diverged, st.n_expected,
                      _first_field(st), st.error] for st in report.ordered_stages()]) + [""]

    for st in report.ordered_stages():
        lines += [f"### Stage `{st.stage}`: {st.status}", ""]
        if st.note:
            lines += [st.note, ""]
        if st.error:
            lines += ["```", st.error.rstrip(), "```", ""]
        if not st.fields:
            lines += ["(no fields compared)", ""]
            continue
        shown, hidden = _shown_fields(st)
        lines += _table(FIELD_HEADER, [_field_row(f) for f in shown])
        if hidden:
            lines += ["", f"... and {hidden} further equal fields."]
        lines += [""]

    lines += ["## Configuration differences", ""]
    if report.config_diff:
        lines += _table(["setting", "reference", "custom", "same"],
                        [[r.get("setting"), r.get("reference"), r.get("custom"),
                          "yes" if r.get("same") else "**no**"] for r in report.config_diff])
    else:
        lines += ["(none recorded)"]
    lines += [""]

    lines += ["## Expected differences (catalogue)", ""]
    if report.catalogue:
        lines += _table(["id", "field", "reason"],
                        [[c.get("id"), c.get("field"), c.get("reason")] for c in report.catalogue])
    else:
        lines += ["(none declared)"]
    lines += [""]

    lines += ["## Diagnoses", ""]
    if report.diagnoses:
        for d in report.diagnoses:
            where = ".".join(p for p in (d.stage, d.field) if p)
            lines += [f"- **{d.cause}**" + (f" (`{where}`)" if where else "") + f": {d.evidence}"]
    else:
        lines += ["(none)"]
    lines += [""]

    if report.extras:
        lines += ["## Extras", "", "```json",
                  json.dumps(jsonable(report.extras), sort_keys=True, indent=2), "```", ""]

    lines += ["## Configuration", "", "```json",
              json.dumps(jsonable(report.config), sort_keys=True, indent=2), "```", ""]

    # Volatile section last, so everything above it is reproducible.
    lines += ["## Timing (volatile)", "", f"Generated at {report.generated_at}.", ""]
    lines += _table(["stage", "compute s", "diff s"],
                    [[st.stage, round_float(st.seconds_compute), round_float(st.seconds_diff)]
                     for st in report.ordered_stages()])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:0.5em 0 1.5em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f0f0f0}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:0.9em}
pre{background:#f7f7f7;padding:0.6em;overflow-x:auto}
.verdict{font-size:1.3em;font-weight:bold;padding:0.3em 0.6em;border-radius:4px;display:inline-block}
.pass{background:#d4f5d4}.diverged{background:#f8d0d0}.error{background:#f8e0b0}
.st-ok{color:#176117}.st-expected{color:#7a5b00}.st-diverged{color:#a31515;font-weight:bold}
.st-error{color:#a35a00;font-weight:bold}.st-skipped{color:#777}
tr.expected td{background:#fffbe6}tr.unexpected td{background:#fdecec}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}
"""


def _h(x: Any) -> str:
    return html.escape(_text(x))


def _html_table(header: list[str], rows: list[list[Any]], row_classes: list[str] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _plots(report: Report) -> list[str]:
    """Heatmaps of 2-D audio masks and the per-codebook loss bars, as <figure> snippets."""
    from harness.report import plots  # matplotlib is only needed for HTML

    out = []
    for st in report.ordered_stages():
        for f in st.fields:
            mask = f.mismatch_mask
            if mask is None or mask.dim() != 2 or "audio" not in f.field.lower() or not f.diverged:
                continue
            title = f"{st.stage}.{f.field}: {f.mismatches}/{f.numel} differ"
            png = plots.mismatch_heatmap(mask, title)
            out.append(f"<figure>{_img(png, title)}<figcaption>{html.escape(title)}</figcaption></figure>")
    pcb = report.extras.get("per_codebook") if isinstance(report.extras, dict) else None
    if isinstance(pcb, dict) and pcb.get("reference") is not None and pcb.get("custom") is not None:
        title = "loss per codebook"
        png = plots.per_codebook_bars(pcb["reference"], pcb["custom"], title)
        out.append(f"<figure>{_img(png, title)}<figcaption>{title}: reference vs custom</figcaption></figure>")
    return out


def render_html(report: Report) -> str:
    fd = report.first_divergence()
    v = report.verdict
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Differential report: {html.escape(report.run_name)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Differential report: {html.escape(report.run_name)}</h1>",
             f'<p><span class="verdict {html.escape(v)}">verdict: {html.escape(v)}</span></p>',
             f"<p>Mode: {html.escape(report.mode)} &middot; stages requested: "
             f"{html.escape(', '.join(report.stages_requested))} &middot; generated at "
             f"{html.escape(report.generated_at)}</p>"]
    if report.symptoms:
        parts += ['<h2 id="symptoms">Symptoms</h2>', "<ul>"] + [
            f"<li>{_h(('[' + s['run'] + '] ') if s.get('run') else '')}<b>{_h(s.get('text'))}</b>: "
            f"{_h(s.get('mechanism'))}{_h(' (at ' + s['location'] + ')' if s.get('location') else '')}</li>"
            for s in report.symptoms] + ["</ul>"]
    parts.append("<h2>First divergence</h2>")
    if fd is None:
        parts.append("<p>No unexpected divergence.</p>")
    else:
        parts.append(_html_table(FIRST_HEADER, [_first_row(fd)]))
        parts.append(_window_html(fd.get("window")))
    plots_html = _plots(report)
    if plots_html:
        parts += ["<h2>Plots</h2>"] + plots_html

    parts.append("<h2>Stages</h2>")
    rows, classes = [], []
    for st in report.ordered_stages():
        first = st.first_unexpected()
        rows.append([st.stage, st.status, len(st.fields), st.n_diverged, st.n_expected,
                     first.field if first else None, round_float(st.seconds_compute),
                     round_float(st.seconds_diff), st.error])
        classes.append(f"st-{st.status}")
    parts.append(_html_table(["stage", "status", "fields", "diverged", "expected",
                              "first diverged field", "compute s", "diff s", "error"], rows, classes))

    for st in report.ordered_stages():
        parts.append(f'<h3>Stage <code>{html.escape(st.stage)}</code>: '
                     f'<span class="st-{html.escape(st.status)}">{html.escape(st.status)}</span></h3>')
        if st.note:
            parts.append(f"<p>{html.escape(st.note)}</p>")
        if st.error:
            parts.append(f"<pre>{html.escape(st.error)}</pre>")
        if not st.fields:
            parts.append("<p>(no fields compared)</p>")
            continue
        shown, hidden = _shown_fields(st)
        classes = ["" if not f.diverged else ("expected" if f.expected else "unexpected")
                   for f in shown]
        parts.append(_html_table(FIELD_HEADER, [_field_row(f) for f in shown], classes))
        if hidden:
            parts.append(f"<p>... and {hidden} further equal fields.</p>")

    parts.append("<h2>Configuration differences</h2>")
    if report.config_diff:
        parts.append(_html_table(["setting", "reference", "custom", "same"],
                                 [[r.get("setting"), r.get("reference"), r.get("custom"),
                                   "yes" if r.get("same") else "no"] for r in report.config_diff],
                                 ["" if r.get("same") else "unexpected" for r in report.config_diff]))
    else:
        parts.append("<p>(none recorded)</p>")
    parts.append("<h2>Expected differences (catalogue)</h2>")
    if report.catalogue:
        parts.append(_html_table(["id", "field", "reason"],
                                 [[c.get("id"), c.get("field"), c.get("reason")]
                                  for c in report.catalogue]))
    else:
        parts.append("<p>(none declared)</p>")
    parts.append("<h2>Diagnoses</h2>")
    if report.diagnoses:
        parts.append("<ul>")
        for d in report.diagnoses:
            where = ".".join(p for p in (d.stage, d.field) if p)
            parts.append(f"<li><b>{html.escape(d.cause)}</b>"
                         + (f" (<code>{html.escape(where)}</code>)" if where else "")
                         + f": {html.escape(d.evidence)}</li>")
        parts.append("</ul>")
    else:
        parts.append("<p>(none)</p>")
    if report.extras:
        parts += ["<h2>Extras</h2>",
                  f"<pre>{html.escape(json.dumps(jsonable(report.extras), sort_keys=True, indent=2))}</pre>"]
    parts += ["<h2>Configuration</h2>",
              f"<pre>{html.escape(json.dumps(jsonable(report.config), sort_keys=True, indent=2))}</pre>",
              "</body></html>"]
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
