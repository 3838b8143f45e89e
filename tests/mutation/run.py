"""`python -m tests.mutation.run`: run every mutant through `python -m harness.compare` and tabulate.

For each mutant: copy the tracked files of the repository into a throw-away folder (data/ linked,
the built assets and code cache shared through HIGGS_DIFF_ASSETS / HIGGS_DIFF_CODE_CACHE), apply it,
run `python -m harness.compare --stage all` there, and read `report.json`.  A mutant is caught when
the exit status is 1 and the first divergence is at the stage where the mutated code runs; its
explanation is judged right when the cause names its mechanism (the mutant's keywords, or a
reviewed judgement in `JUDGEMENTS`).  Writes `<out>/results.json` and `<out>/table.md`, prints the
table and the scores.

    python -m tests.mutation.run                     # all mutants (~20 min on 2 CPU cores)
    python -m tests.mutation.run --ids custom-loss-text-no-shift --out /tmp/m
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from tests.mutation.catalog import all_mutants, apply

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "reports" / "mutation"
# Reviewed explanation judgements that keyword matching gets wrong: id -> (right?, reason).
JUDGEMENTS: dict[str, tuple[bool, str]] = {
    "custom-forward-audio-in-dropped": (True, "reviewed: 'the batch passed to the model differs from the collated one (a "
                                              "field dropped, renamed or altered in forward)' is the mechanism; it does "
                                              "not name audio_in_ids"),
    "custom-loss-audio-ignore-not-masked": (True, "reviewed: the cause names ignored (-100) labels scored as code 0, "
                                                  "i.e. their cross-entropy not masked out; the keyword 'mask' is absent"),
}


def _copy_repo(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        if rel.startswith(("reports/", "data/")):
            continue
        src = REPO / rel
        if not src.is_file():
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)
    (dst / "data").symlink_to(REPO / "data")


def run_one(mutant: dict, *, timeout: int = 600) -> dict:
    """Apply one mutant in a copy and run the comparison; returns the result row."""
    from higgs_common.assets.paths import default_assets_dir, default_code_cache_dir

    row = {k: mutant.get(k) for k in ("id", "author", "file", "stage", "mechanism", "keywords", "equivalent")}
    with tempfile.TemporaryDirectory(prefix="higgs-mutant-") as tmp:
        root = Path(tmp) / "repo"
        _copy_repo(root)
        target = root / mutant["file"]
        target.write_text(apply(target.read_text(), mutant))
        env = dict(os.environ, HIGGS_DIFF_ASSETS=str(default_assets_dir()),
                   HIGGS_DIFF_CODE_CACHE=str(default_code_cache_dir()), PYTHONWARNINGS="ignore")
        out = Path(tmp) / "report"
        args = ["--ddp-world-size", "0", *mutant.get("args", ())]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "harness.compare", "--stage", "all", "--quiet",
                                   "--out", str(out), *args], cwd=root, env=env, capture_output=True, text=True,
                                  timeout=timeout)
            row["exit"] = proc.returncode
            row["tail"] = (proc.stdout + proc.stderr)[-600:]
        except subprocess.TimeoutExpired:
            row["exit"] = "timeout"
        row["seconds"] = round(time.perf_counter() - t0, 1)
        report = out / "report.json"
        fd = json.loads(report.read_text()).get("first_divergence") if report.is_file() else None
    fd = fd or {}
    row.update(reported_stage=fd.get("stage"), reported_field=fd.get("field"), relation=fd.get("relation"),
               cause=(fd.get("cause") or {}).get("mechanism"))   # report.json 2.x: a cause object
    row["caught"] = row["exit"] == 1
    row["at_stage"] = row["caught"] and fd.get("stage") == mutant["stage"]
    return judge(row)


def judge(row: dict) -> dict:
    text = f"{row.get('cause') or ''}".lower()
    auto = bool(row.get("cause")) and all(k.lower() in text for k in (row.get("keywords") or ()))
    if row["id"] in JUDGEMENTS:
        row["cause_right"], row["judgement"] = JUDGEMENTS[row["id"]]
    else:
        row["cause_right"], row["judgement"] = auto, "keywords" if auto else "keywords missing"
    return row


def scores(rows: list[dict]) -> dict:
    live = [r for r in rows if not r.get("equivalent")]
    caught = [r for r in live if r["at_stage"]]
    explained = [r for r in caught if r["cause_right"]]
    return {"mutants": len(rows), "equivalent": len(rows) - len(live), "non_equivalent": len(live),
            "exit_1": sum(r["caught"] for r in live), "caught_at_stage": len(caught),
            "detection_score": round(len(caught) / max(len(live), 1), 4),
            "explained_right": len(explained), "explanation_score": round(len(explained) / max(len(caught), 1), 4)}


def table(rows: list[dict]) -> str:
    s = scores(rows)
    lines = ["# Mutation suite", "",
             f"{s['non_equivalent']} non-equivalent mutants ({s['equivalent']} equivalent, listed with the reason): "
             f"**{s['caught_at_stage']} caught at the stage where the mutated code runs "
             f"({100 * s['detection_score']:.1f}%)**; {s['exit_1']} exit 1 in all. Of the caught ones, "
             f"**{s['explained_right']} get a cause naming the mechanism ({100 * s['explanation_score']:.1f}%)**.", "",
             "| mutant | by | stage | exit | reported stage / field | relation | cause | caught at stage | cause right |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cell(x: object) -> str:
        return str(x if x is not None else "").replace("|", "\\|").replace("\n", " ")

    for r in rows:
        lines.append("| " + " | ".join(cell(x) for x in (
            r["id"], r["author"], r["stage"], r["exit"], f"{r.get('reported_stage')} / {r.get('reported_field')}",
            (r.get("relation") or "")[:160], (r.get("cause") or "")[:220],
            "equivalent: " + r["equivalent"] if r.get("equivalent") else ("yes" if r["at_stage"] else "**no**"),
            ("yes" if r["cause_right"] else "**no**") + ("" if r["judgement"] == "keywords" else f" ({r['judgement']})")))
            + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.mutation.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--ids", nargs="*", default=None, help="only these mutant ids")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    p.add_argument("--timeout", type=int, default=600, help="seconds per mutant")
    args = p.parse_args(argv)
    mutants = [m for m in all_mutants() if not args.ids or m["id"] in args.ids]
    rows = []
    for i, m in enumerate(mutants, 1):
        row = run_one(m, timeout=args.timeout)
        rows.append(row)
        print(f"[{i}/{len(mutants)}] {m['id']}: exit {row['exit']} at {row.get('reported_stage')}/"
              f"{row.get('reported_field')} ({row['seconds']} s) cause: {(row.get('cause') or '')[:100]}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"scores": scores(rows), "rows": rows}, indent=2) + "\n")
    (args.out / "table.md").write_text(table(rows))
    print(json.dumps(scores(rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
