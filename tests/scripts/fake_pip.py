"""A stand-in for `pip download` / `pip wheel` (scripts/gpu_wheels.py's `$HIGGS_GPU_PIP`), offline.

It reads the one `name==version` line of the `-r` file and writes an empty wheel of that name into
`--dest` / `--wheel-dir`, except:
* names starting with `no-such` or `also-missing`, or listed in `$FAKE_PIP_FAIL` (comma list):
  both commands fail with pip's "No matching distribution" message;
* `compiled-only`: no wheel to download; `pip wheel` builds a CPython 3.11 linux wheel;
* `sdist-only`: no wheel to download; `pip wheel` builds a pure-Python one.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    command = argv[0]
    req = Path(argv[argv.index("-r") + 1]).read_text().split()[0]
    name, version = re.match(r"([^=\s]+)==(\S+)", req).groups()
    folder = Path(argv[argv.index("--dest" if command == "download" else "--wheel-dir") + 1])
    failing = {n for n in os.environ.get("FAKE_PIP_FAIL", "").split(",") if n}
    if name.startswith(("no-such", "also-missing")) or name in failing:
        print(f"ERROR: No matching distribution found for {req}", file=sys.stderr)
        return 1
    if command == "download" and name in ("compiled-only", "sdist-only"):
        print(f"ERROR: Could not find a version that satisfies the requirement {req}", file=sys.stderr)
        return 1
    tag = "cp311-cp311-linux_x86_64" if name == "compiled-only" else "py3-none-any"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name.replace('-', '_')}-{version}-{tag}.whl").write_bytes(b"")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
