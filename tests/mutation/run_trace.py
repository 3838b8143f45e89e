"""`python -m tests.mutation.run_trace`: run the trace mutants (`mutants_trace`) through the tools a
user would pick, and tabulate what was caught where.

Per mutant: copy the tracked files of the repository into a throw-away folder (data/ linked, the
built assets and code cache shared through HIGGS_DIFF_ASSETS / HIGGS_DIFF_CODE_CACHE), apply it,
and run its tool:

- compare-traces: `higgs-diff trace` of the mutant's command in the copy, compared with the trace of
  the same command on an unmutated copy (each clean trace is taken once and reused);
- check-resume: `higgs-diff check-resume --steps 3 --kill-after 2` of the command in the copy;
- check-flags: `higgs-diff check-flags --only NAMES` of the command in the copy;
- compare: `python -m harness.compare --stage all` in the copy.

Caught: exit status 1 and the report puts it where the mutated code acts (`expect_stage`: the
first divergence's stage, or a symptom of that stage; for check-flags, that option reported
ignored).  Explained: the cause text names the mechanism (all of the mutant's keywords).  A
control row traces the plain custom command on a second clean copy: it must compare clean (exit 0),
else every catch is suspect.  Writes `<out>/results.json` (after every mutant) and `<out>/table.md`.

    python -m tests.mutation.run_trace                        # every CPU mutant (~25-40 min on 2 cores)
    python -m tests.mutation.run_trace --ids custom-cli-lr-flag-ignored --out /tmp/mt
    python -m tests.mutation.run_trace --gpu                  # also the CUDA-only ones (on a GPU host)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from tests.mutation.catalog import apply
from tests.mutation.mutants_trace import MUTANTS
from tests.mutation.run import REPO, _copy_repo

DEFAULT_OUT = REPO / "reports" / "mutation-trace"
STEPS = "3"
CONTROL_ID = "control-clean-vs-clean"


def _env() -> dict[str, str]:
    from higgs_common.assets.paths import default_assets_dir, default_code_cache_dir

    return dict(os.environ, HIGGS_DIFF_ASSETS=str(default_assets_dir()),
                HIGGS_DIFF_CODE_CACHE=str(default_code_cache_dir()), PYTHONWARNINGS="ignore",
                # the copy first; what the caller's PYTHONPATH holds (e.g. the GPU machine's wheels) after it
                PYTHONPATH=os.pathsep.join(["."] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                    if p]))


def _run(args: list[str], cwd: Path, timeout: int) -> tuple[int | str, str]:
    try:
        proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", ""
    return proc.returncode, (proc.stdout + proc.stderr)[-1500:]


def _higgs(tool: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", tool, *args]


def _trace(root: Path, command: Sequence[str], out: Path, timeout: int,
           trace_args: Sequence[str] = ()) -> tuple[int | str, str]:
    """Trace `command` (interpreter arguments) run in `root`, its run folder inside `root`; `trace_args`: more
    `higgs-diff trace` options (e.g. --layers)."""
    cmd = [sys.executable, *command, "--output-dir", str(root / "runs" / "traced")]
    return _run(_higgs("trace", "--quiet", "--steps", STEPS, *trace_args, "--out", str(out), "--", *cmd), root,
                timeout)


class CleanTraces:
    """Clean-tree traces, one per distinct command, made on first use (thread-safe enough: callers
    of the same command are serialised by the caller's ordering)."""

    def __init__(self, work: Path, timeout: int) -> None:
        self.work, self.timeout = work, timeout
        self.root = work / "clean"
        _copy_repo(self.root)
        self.traces: dict[tuple[str, ...], Path] = {}

    def get(self, command: Sequence[str], trace_args: Sequence[str] = ()) -> Path:
        key = (*command, "|", *trace_args)
        if key not in self.traces:
            out = self.work / "clean-traces" / f"t{len(self.traces):02d}"
            self.traces[key] = out
            rc, tail = _trace(self.root, command, out, self.timeout, trace_args)
            if rc != 0:
                raise RuntimeError(f"clean trace of {' '.join(command)} failed (exit {rc}): {tail}")
        return self.traces[key]


def _report_json(folder: Path) -> dict[str, Any]:
    found = sorted(folder.rglob("report.json")) if folder.is_dir() else []
    return json.loads(found[0].read_text()) if found else {}


def _symptom_stages(report: dict[str, Any]) -> list[str]:
    out = []
    for s in report.get("symptoms") or []:
        if isinstance(s, dict):
            out += [str(v) for k, v in s.items() if k == "stage" and v]
    return out


def _from_report(row: dict[str, Any], report: dict[str, Any], expect: str) -> None:
    fd = report.get("first_divergence") or {}
    row.update(reported_stage=fd.get("stage"), reported_field=fd.get("field"),
               cause=" ".join(str(fd.get(k)) for k in ("cause", "relation", "detail") if fd.get(k)) or
               report.get("headline"), symptom_stages=_symptom_stages(report))
    row["at_stage"] = row["exit"] == 1 and (fd.get("stage") == expect or expect in row["symptom_stages"])


def run_one(m: dict, clean: CleanTraces, work: Path, timeout: int, precision: str = "exact") -> dict[str, Any]:
    """Apply one mutant in a copy and run its tool; returns the result row."""
    row: dict[str, Any] = {k: m.get(k) for k in ("id", "path", "file", "tool", "expect_stage", "mechanism",
                                                 "keywords")}
    row["gpu"] = bool(m.get("gpu"))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="higgs-tmut-", dir=work) as tmp:
        root = Path(tmp) / "repo"
        _copy_repo(root)
        if m["id"] != CONTROL_ID:
            target = root / m["file"]
            target.write_text(apply(target.read_text(), m))
        rep = Path(tmp) / "report"
        cmd = [sys.executable, *m["command"]]
        if m["tool"] == "compare-traces":
            trace_args = tuple(m.get("trace_args", ()))
            base = clean.get(m["command"], trace_args)
            rc, tail = _trace(root, m["command"], Path(tmp) / "trace", timeout, trace_args)
            row["trace_exit"] = rc
            row["exit"], row["tail"] = _run(_higgs("compare-traces", "--quiet", "--precision", precision,
                                                   "--out", str(rep), str(base),
                                                   str(Path(tmp) / "trace")), root, timeout)
            _from_report(row, _report_json(rep), m["expect_stage"])
        elif m["tool"] == "check-resume":
            row["exit"], row["tail"] = _run(_higgs("check-resume", "--steps", STEPS, "--kill-after", "2",
                                                   "--work-dir", str(Path(tmp) / "cr"), "--out", str(rep),
                                                   "--", *cmd), root, 3 * timeout)
            _from_report(row, _report_json(rep), m["expect_stage"])
        elif m["tool"] == "check-flags":
            flags = Path(tmp) / "flags.json"
            row["exit"], row["tail"] = _run(_higgs("check-flags", "--only", m["only"], "--work-dir",
                                                   str(Path(tmp) / "cf"), "--out", str(flags), "--", *cmd),
                                            root, 3 * timeout)
            entries = json.loads(flags.read_text()) if flags.is_file() else []
            hit = [e for e in entries if str(e.get("option", "")).lstrip("-") == m["expect_stage"]]
            e = hit[0] if hit else {}
            row.update(reported_stage=e.get("verdict"), reported_field=e.get("where"),
                       cause=" ".join(str(e.get(k)) for k in ("option", "verdict", "where", "detail") if e.get(k)))
            row["at_stage"] = row["exit"] == 1 and "ignored" in str(e.get("verdict", "")).lower()
        elif m["tool"] == "compare":
            row["exit"], row["tail"] = _run([sys.executable, "-m", "harness.compare", "--stage", "all", "--quiet",
                                             "--ddp-world-size", "0", "--out", str(rep)], root, timeout)
            _from_report(row, _report_json(rep), m["expect_stage"])
        else:
            raise ValueError(f"mutant {m['id']}: unknown tool {m['tool']!r}")
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["caught"] = row["exit"] == 1
    return judge(row)


def judge(row: dict[str, Any]) -> dict[str, Any]:
    """cause_right: caught at its stage and the cause (with the reported field; for check-flags the
    option's name) contains every keyword of the mutant."""
    text = f"{row.get('cause') or ''} {row.get('reported_field') or ''}".lower()
    if row.get("tool") == "check-flags" and row.get("at_stage"):
        text += f" --{row.get('expect_stage')}"
    row["cause_right"] = bool(row.get("at_stage")) and all(k.lower() in text for k in (row.get("keywords") or ()))
    return row


def scores(rows: list[dict]) -> dict[str, Any]:
    live = [r for r in rows if not r["gpu"] and r["id"] != CONTROL_ID]
    caught = [r for r in live if r["at_stage"]]
    explained = [r for r in caught if r["cause_right"]]
    by_path = {p: f"{sum(r['at_stage'] for r in live if r['path'] == p)}/{sum(r['path'] == p for r in live)}"
               for p in ("cli", "speed", "precision", "settings")}
    by_tool = {t: f"{sum(r['at_stage'] for r in live if r['tool'] == t)}/{sum(r['tool'] == t for r in live)}"
               for t in ("compare-traces", "check-resume", "check-flags", "compare")}
    control = next((r for r in rows if r["id"] == CONTROL_ID), None)
    return {"cpu_mutants": len(live), "caught_at_stage": len(caught), "explained": len(explained),
            "detection_score": round(len(caught) / max(len(live), 1), 4),
            "explanation_score": round(len(explained) / max(len(caught), 1), 4),
            "by_path": by_path, "by_tool": by_tool,
            "gpu_only_run": sum(1 for r in rows if r["gpu"]),
            "control_exit": control["exit"] if control else None}


def table(rows: list[dict]) -> str:
    s = scores(rows)
    lines = ["# Trace mutation suite", "",
             f"**{s['caught_at_stage']} of {s['cpu_mutants']} CPU mutants caught at their stage "
             f"({100 * s['detection_score']:.0f}%)**; **{s['explained']} of those {s['caught_at_stage']} explained** "
             f"(cause names the mechanism). By path: {s['by_path']}. By tool: {s['by_tool']}. "
             f"Control (clean vs clean) exit: {s['control_exit']}.", "",
             "| mutant | path | tool | expected | exit | reported | caught at stage | cause | explained |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cell(x: object) -> str:
        text = re.sub(r"/\S*?/higgs-tmut-[^/\s]+/(repo|clean)/", "", str(x if x is not None else ""))
        text = re.sub(r"/\S*?/higgs-tmut-\S*$", "...", text)          # a path cut by the cell's length
        return text.replace("|", "\\|").replace("\n", " ")

    for r in rows:
        lines.append("| " + " | ".join(cell(x) for x in (
            r["id"] + (" (gpu)" if r["gpu"] else ""), r["path"], r["tool"], r["expect_stage"], r["exit"],
            f"{r.get('reported_stage')} / {r.get('reported_field')}",
            "n/a (control: must be exit 0)" if r["id"] == CONTROL_ID else ("yes" if r["at_stage"] else "**no**"),
            (r.get("cause") or "")[:260],
            "yes" if r["cause_right"] else "no")) + " |")
    return "\n".join(lines) + "\n"


def _write(out: Path, rows: list[dict], mutants: list[dict]) -> None:
    order = {m["id"]: i for i, m in enumerate(mutants)}
    done = sorted(rows, key=lambda r: order[r["id"]])
    (out / "results.json").write_text(json.dumps({"scores": scores(done), "rows": done}, indent=2) + "\n")
    (out / "table.md").write_text(table(done))


def interleaved(mutants: list[dict]) -> list[dict]:
    """Round-robin over the code paths, so a partial run covers every path."""
    by_path: dict[str, list[dict]] = {}
    for m in mutants:
        by_path.setdefault(m["path"], []).append(m)
    out: list[dict] = []
    while any(by_path.values()):
        for queue in by_path.values():
            if queue:
                out.append(queue.pop(0))
    return out


def merge(out: Path, extra: Path) -> int:
    """Rows of `extra` replace or join those of `<out>/results.json`; every row re-judged against the
    current catalogue's keywords; results.json and table.md rewritten in catalogue order."""
    current = out / "results.json"
    rows = {r["id"]: r for r in (json.loads(current.read_text())["rows"] if current.is_file() else [])}
    rows.update({r["id"]: r for r in json.loads(extra.read_text())["rows"]})
    catalogue = {m["id"]: m for m in MUTANTS}
    for r in rows.values():
        if r["id"] in catalogue:
            r["keywords"] = list(catalogue[r["id"]]["keywords"])
        judge(r)
    order = [control_mutant(), *interleaved(list(MUTANTS))]
    known = [m for m in order if m["id"] in rows]
    _write(out, list(rows.values()), known)
    print(json.dumps(scores(list(rows.values())), indent=2))
    return 0


def control_mutant() -> dict[str, Any]:
    return dict(id=CONTROL_ID, path="control", file="", tool="compare-traces", expect_stage="none",
                command=("-m", "custom_impl.train", "--max-steps", STEPS), mechanism="no mutation", keywords=())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.mutation.run_trace", description=__doc__.split("\n\n")[0])
    p.add_argument("--ids", nargs="*", default=None, help="only these mutant ids")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    p.add_argument("--timeout", type=int, default=600, help="seconds per traced run")
    p.add_argument("--gpu", action="store_true", help="also run the CUDA-only mutants")
    p.add_argument("--paths", nargs="*", default=None, metavar="PATH",
                   help="only the mutants of these code paths (cli, speed, precision, settings)")
    p.add_argument("--precision", choices=("exact", "bf16"), default="exact",
                   help="compare-traces tolerance: bf16 where the traced runs compute in bf16 (CUDA defaults)")
    p.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1; CPU is shared)")
    p.add_argument("--no-control", action="store_true", help="skip the clean-vs-clean control row")
    p.add_argument("--merge", type=Path, default=None, metavar="RESULTS_JSON",
                   help="no run: merge the rows of RESULTS_JSON into <out>/results.json (same id: replaced), "
                        "re-judge every row and rewrite the table")
    args = p.parse_args(argv)
    if args.merge is not None:
        return merge(args.out, args.merge)
    mutants = [m for m in MUTANTS if (not args.ids or m["id"] in args.ids) and (args.gpu or not m.get("gpu"))
               and (not args.paths or m["path"] in args.paths)]
    mutants = interleaved(mutants)
    if not args.no_control and not args.ids:
        mutants = [control_mutant(), *mutants]
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="higgs-tmut-work-") as work_s:
        work = Path(work_s)
        clean = CleanTraces(work, args.timeout)
        # Clean traces first (one per distinct command), so parallel mutants never race to make the same one.
        commands = list(dict.fromkeys(tuple(m["command"]) for m in mutants if m["tool"] == "compare-traces"))
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(clean.get, commands))
        lock = threading.Lock()

        def one(m: dict) -> dict:
            try:
                row = run_one(m, clean, work, args.timeout, args.precision)
            except Exception as exc:   # a broken mutant run is a row, not a lost table
                row = {k: m.get(k) for k in ("id", "path", "file", "tool", "expect_stage", "mechanism", "keywords")}
                row.update(gpu=bool(m.get("gpu")), exit=f"error: {type(exc).__name__}: {exc}", caught=False,
                           at_stage=False, cause_right=False)
            with lock:
                rows.append(row)
                _write(args.out, rows, mutants)
            print(f"[{len(rows)}/{len(mutants)}] {m['id']} ({m['tool']}): exit {row['exit']} at "
                  f"{row.get('reported_stage')}/{row.get('reported_field')} ({row.get('seconds')} s) "
                  f"caught={row['at_stage']} cause: {(row.get('cause') or '')[:120]}", flush=True)
            return row

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(one, mutants))
    print(json.dumps(scores(rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
