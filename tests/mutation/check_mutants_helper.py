"""Check every entry of tests/mutation/mutants_helper.py: well-formed, `find` occurs exactly once in its
file, and the pipeline still imports once the mutant is applied.

    python tests/mutation/check_mutants_helper.py [MUTANT_ID ...]

The tracked files (`git ls-files`) are copied once into a temporary directory; each mutant is applied
to that copy, `python -c "import <pipeline>.stages"` runs there (and must import the copy, not the
checkout), and the file is restored.  One line per mutant: OK or the problem.  Exit status 1 if any
mutant has a problem.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STAGES = {"dataset", "collator", "forward", "loss", "backward", "step", "config"}
PIPELINES = {"reference": "reference_impl", "custom": "custom_impl"}
FIELDS = ("id", "file", "find", "replace", "stage", "mechanism", "keywords", "note")
FORBIDDEN_FILES = {"custom_impl/faults.py"}


def load_mutants() -> list[dict]:
    spec = importlib.util.spec_from_file_location("mutants_helper", Path(__file__).with_name("mutants_helper.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MUTANTS


def static_problems(m: dict, ids: Counter) -> list[str]:
    problems = [f"missing field {f!r}" for f in FIELDS if f not in m]
    if problems:
        return problems
    mid = m["id"]
    if ids[mid] > 1:
        problems.append("duplicate id")
    if not re.fullmatch(r"(reference|custom)(-[a-z0-9]+)+", mid):
        problems.append("id is not kebab-case with prefix reference-/custom-")
    prefix = mid.split("-", 1)[0]
    if PIPELINES.get(prefix) != m["file"].split("/", 1)[0]:
        problems.append(f"id prefix {prefix!r} does not match file {m['file']!r}")
    if m["file"] in FORBIDDEN_FILES:
        problems.append("mutates the FAULTS registry")
    if m["stage"] not in STAGES:
        problems.append(f"stage {m['stage']!r} not in {sorted(STAGES)}")
    kw = m["keywords"]
    if not (isinstance(kw, tuple) and 1 <= len(kw) <= 3 and all(isinstance(k, str) and k == k.lower() and k for k in kw)):
        problems.append("keywords must be a tuple of 1-3 lowercase strings")
    if m["find"] == m["replace"]:
        problems.append("replace equals find")
    for decl in ("CONVENTIONS = ", "DEFAULT_TRAIN = ", "LossConventions("):
        if decl in m["find"]:
            problems.append(f"touches a declaration ({decl.strip()})")
    path = REPO / m["file"]
    if not path.is_file():
        problems.append(f"file {m['file']} not found")
    else:
        n = path.read_text(encoding="utf-8").count(m["find"])
        if n != 1:
            problems.append(f"find snippet occurs {n} times (must be exactly once)")
    return problems


def copy_repo(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src = REPO / rel
        if not src.is_file():
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)


def import_problem(copy: Path, pipeline: str) -> str | None:
    code = (f"import {pipeline}.stages as s, pathlib; "
            f"p = pathlib.Path(s.__file__).resolve(); "
            f"assert p.is_relative_to(pathlib.Path.cwd().resolve()), f'imported {{p}}, not the mutated copy'")
    r = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, timeout=600)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"import {pipeline}.stages failed: {last}"
    return None


def main(argv: list[str]) -> int:
    mutants = load_mutants()
    if argv:
        wanted = set(argv)
        unknown = wanted - {m.get("id") for m in mutants}
        if unknown:
            print(f"unknown mutant id(s): {sorted(unknown)}")
            return 2
        mutants = [m for m in mutants if m.get("id") in wanted]
    ids = Counter(m.get("id") for m in load_mutants())
    bad = 0
    with tempfile.TemporaryDirectory(prefix="mutants_helper_") as tmp:
        copy = Path(tmp)
        copy_repo(copy)
        for m in mutants:
            problems = static_problems(m, ids)
            if not problems:
                target = copy / m["file"]
                original = target.read_text(encoding="utf-8")
                target.write_text(original.replace(m["find"], m["replace"], 1), encoding="utf-8")
                try:
                    err = import_problem(copy, m["file"].split("/", 1)[0])
                finally:
                    target.write_text(original, encoding="utf-8")
                    for cache in (copy / m["file"]).parent.glob("__pycache__"):
                        shutil.rmtree(cache, ignore_errors=True)
                if err:
                    problems.append(err)
            bad += bool(problems)
            status = "OK" if not problems else "PROBLEM: " + "; ".join(problems)
            print(f"{m.get('id', '?'):48s} {m.get('stage', '?'):9s} {status}", flush=True)
    all_m = load_mutants()
    by_stage = Counter(m["stage"] for m in all_m)
    by_pipe = Counter(m["id"].split("-", 1)[0] for m in all_m)
    print(f"{len(mutants)} checked, {bad} with problems; all mutants: {len(all_m)}; "
          f"per pipeline {dict(by_pipe)}; per stage {dict(sorted(by_stage.items()))}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
