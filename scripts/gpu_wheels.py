"""Build, from the lock files, the wheels the GPU machine lacks into one folder to carry there.

    python3 scripts/gpu_wheels.py [--out .gpu-wheels]      (scripts/gpu.sh --prepare runs this)

The lent GPU machine has no network and an image whose transformers is too new for
boson_multimodal (`scripts/gpu_image.toml` lists what it holds).  This script takes every entry of
`requirements.lock` and `requirements-no-deps.lock` that the image lacks (or holds at a version
this project cannot use), plus the optional packages that file names, and for each one:

1. downloads the wheel for the image's Python (3.12, manylinux x86_64 or pure Python) with
   `pip download --no-deps --only-binary=:all: --require-hashes` (the lock's hashes are checked);
2. if no such wheel exists, builds one from the locked sdist (`pip wheel --no-deps`), kept only if it
   is pure Python (`*-none-any.whl`; a compiled build here would not load there).

The folder is built beside `--out` and moved into place only when every package has its wheel, with
`manifest.txt` (one `name==version wheel-file` line each) that `scripts/gpu.sh --on-device` checks
before installing.  Exit status: 0 all built; 1 a wheel could not be built or found (each one is
named, with pip's last error line); 2 bad input (lock or image file).  `$HIGGS_GPU_PIP` replaces the
pip command (default: this Python's `-m pip`), for tests.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LOCKS = (REPO / "requirements.lock", REPO / "requirements-no-deps.lock")
DEFAULT_IMAGE = REPO / "scripts" / "gpu_image.toml"
MANIFEST = "manifest.txt"
DEVICE_TREE_LIMIT = 64 * 2**20          # the device tool sends at most 64 MiB: tree + carried folders
# manylinux tags pip must be given one by one (it matches each exactly): glibc 2.17 .. 2.39.
PLATFORMS = ["manylinux2014_x86_64", "manylinux1_x86_64",
             *(f"manylinux_2_{n}_x86_64" for n in range(17, 40)), "linux_x86_64"]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


class InputError(ValueError):
    """A lock or image file that cannot be read as expected (exit 2)."""


@dataclass(frozen=True)
class Pin:
    """One package to carry: canonical name, version, and its lock entry (hash lines included)."""

    name: str
    version: str
    requirement: str        # the text pip reads: 'name==version --hash=sha256:...' (no hash for extras)
    source: str             # the lock file (or image file) it came from


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of '-', '_', '.' as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> list[Pin]:
    """Every `name==version` entry of a pip-compile / uv lock file, with its `--hash` lines.

    Raises InputError naming the file and line of an entry that is not pinned with `==`.
    """
    if not path.is_file():
        raise InputError(f"{path}: lock file not found")
    pins: list[Pin] = []
    entry: list[str] = []

    def close() -> None:
        if entry:
            text = " ".join(part.strip().rstrip("\\").strip() for part in entry)
            m = _PIN.match(text)
            pins.append(Pin(canonical(m.group(1)), m.group(2), text, path.name))
            entry.clear()

    for number, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(r"^[A-Za-z0-9]", line):
            close()
            if not _PIN.match(line):
                raise InputError(f"{path}:{number}: {line.split()[0]!r} is not pinned with '=='")
            entry.append(line)
        elif line.startswith("    --hash") and entry:
            entry.append(line)
        else:
            close()
    close()
    return pins


@dataclass(frozen=True)
class Image:
    """What the GPU image holds (`scripts/gpu_image.toml`)."""

    python_version: str
    provided: frozenset[str]
    override: frozenset[str]
    host_only: frozenset[str]
    extra: tuple[str, ...]

    @classmethod
    def read(cls, path: Path) -> "Image":
        """Raises InputError naming the file and key when a key is missing or malformed."""
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InputError(f"{path}: {exc}") from exc
        missing = [k for k in ("python-version", "provided", "override", "host-only", "extra") if k not in data]
        if missing:
            raise InputError(f"{path}: missing keys {missing}")
        bad = [e for e in data["extra"] if not _PIN.match(e)]
        if bad:
            raise InputError(f"{path}: 'extra' entries must be name==version: {bad}")
        return cls(str(data["python-version"]), frozenset(map(canonical, data["provided"])),
                   frozenset(map(canonical, data["override"])), frozenset(map(canonical, data["host-only"])),
                   tuple(data["extra"]))


def to_carry(locks: Sequence[Path], image: Image) -> list[Pin]:
    """The lock entries the image lacks or overrides, then the image file's extras (one per name).

    Raises InputError when an `override` name is pinned in no lock file, or a name is pinned twice
    at different versions (two wheels of one package stop the install there).
    """
    pins: dict[str, Pin] = {}
    for lock in locks:
        for pin in read_lock(lock):
            if pin.name in pins and pins[pin.name].version != pin.version:
                raise InputError(f"{pin.name} is pinned to {pins[pin.name].version} in {pins[pin.name].source} "
                                 f"and to {pin.version} in {pin.source}")
            pins.setdefault(pin.name, pin)
    unknown = sorted(image.override - set(pins))
    if unknown:
        raise InputError(f"image file: override names {unknown} are pinned in no lock file")
    carry = [p for p in pins.values()
             if p.name not in image.host_only and (p.name not in image.provided or p.name in image.override)]
    for text in image.extra:
        m = _PIN.match(text)
        name = canonical(m.group(1))
        if name in pins:
            raise InputError(f"image file: extra {text!r} is already pinned in {pins[name].source}")
        carry.append(Pin(name, m.group(2), text, "gpu_image.toml extra"))
    return carry


def pip_command() -> list[str]:
    """The pip invocation: `$HIGGS_GPU_PIP` (split like a shell) or this Python's `-m pip`."""
    override = os.environ.get("HIGGS_GPU_PIP")
    return shlex.split(override) if override else [sys.executable, "-m", "pip"]


def _wheels_of(folder: Path, pin: Pin) -> list[Path]:
    """Wheels in `folder` whose distribution name and version are `pin`'s."""
    found = []
    for whl in folder.glob("*.whl"):
        parts = whl.name.split("-")
        if len(parts) >= 5 and canonical(parts[0]) == pin.name and parts[1] == pin.version.replace("-", "_"):
            found.append(whl)
    return found


def _last_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "error" in ln]
    return (errors or lines or [f"exit status {proc.returncode}, no output"])[-1].strip()


def fetch(pin: Pin, dest: Path, python_version: str, scratch: Path) -> str | None:
    """Put `pin`'s wheel into `dest`; returns None, or why it could not (pip's last error line)."""
    req = scratch / f"{pin.name}.txt"
    req.write_text(pin.requirement + "\n")
    hashes = ["--require-hashes"] if "--hash" in pin.requirement else []
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    download = subprocess.run(
        [*pip_command(), "download", "--quiet", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
         "--python-version", python_version, *platforms, *hashes, "--dest", str(dest), "-r", str(req)],
        capture_output=True, text=True)
    if download.returncode == 0 and _wheels_of(dest, pin):
        return None
    build_dir = scratch / f"build-{pin.name}"
    build = subprocess.run([*pip_command(), "wheel", "--quiet", "--no-deps", *hashes, "--wheel-dir", str(build_dir),
                            "-r", str(req)], capture_output=True, text=True)
    built = _wheels_of(build_dir, pin) if build_dir.is_dir() else []
    if build.returncode != 0 or not built:
        why = _last_error(build) if build.returncode != 0 else "pip wheel produced no wheel of that name"
        return f"no wheel for Python {python_version} x86_64 ({_last_error(download)}); building one failed: {why}"
    impure = [w.name for w in built if not w.name.endswith("-none-any.whl")]
    if impure:
        return (f"only an sdist exists and it builds a compiled wheel here ({impure[0]}), which would not load "
                f"under the GPU machine's Python {python_version}")
    for whl in built:
        shutil.move(str(whl), dest / whl.name)
    return None


def tree_bytes(repo: Path) -> int:
    """Bytes the device tool sends of the working tree (tracked and untracked-not-ignored files)."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return 0
    total = 0
    for rel in filter(None, out.stdout.split("\0")):
        path = repo / rel
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def build(carry: Sequence[Pin], out: Path, python_version: str) -> list[tuple[Pin, str]]:
    """Fetch every pin into a sibling of `out`, moved into place when none failed.

    Returns the failures as (pin, reason); `out` is left untouched when there are any.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    failures: list[tuple[Pin, str]] = []
    manifest: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-wheels-scratch-") as scratch:
            for i, pin in enumerate(carry, 1):
                print(f"[{i:2d}/{len(carry)}] {pin.name}=={pin.version} ({pin.source})", flush=True)
                why = fetch(pin, staging, python_version, Path(scratch))
                if why is not None:
                    print(f"        FAILED: {why}", flush=True)
                    failures.append((pin, why))
                    continue
                wheels = _wheels_of(staging, pin)
                manifest += [f"{pin.name}=={pin.version} {w.name}" for w in sorted(wheels)]
        if failures:
            return failures
        (staging / MANIFEST).write_text("\n".join(manifest) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
        return []
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 scripts/gpu_wheels.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / ".gpu-wheels", help="wheel folder (default .gpu-wheels)")
    p.add_argument("--lock", type=Path, action="append", default=None,
                   help="lock file (repeatable; default: requirements.lock and requirements-no-deps.lock)")
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="what the GPU image holds (TOML)")
    args = p.parse_args(argv)
    try:
        image = Image.read(args.image)
        carry = to_carry(args.lock or DEFAULT_LOCKS, image)
    except InputError as exc:
        print(f"gpu_wheels: {exc}", file=sys.stderr)
        return 2
    print(f"building {len(carry)} wheels for Python {image.python_version} x86_64 into {args.out}", flush=True)
    failures = build(carry, args.out, image.python_version)
    if failures:
        print(f"\ngpu_wheels: {len(failures)} wheel(s) could not be built or found; {args.out} left as it was:",
              file=sys.stderr)
        for pin, why in failures:
            print(f"  - {pin.name}=={pin.version} (from {pin.source}): {why}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in args.out.iterdir())
    tree = tree_bytes(REPO)
    print(f"{len(carry)} wheels, {size / 2**20:.1f} MiB in {args.out}; working tree {tree / 2**20:.1f} MiB; "
          f"the device tool sends at most {DEVICE_TREE_LIMIT / 2**20:.0f} MiB of both", flush=True)
    if size + tree > DEVICE_TREE_LIMIT:
        print(f"gpu_wheels: {args.out} ({size / 2**20:.1f} MiB) and the tree ({tree / 2**20:.1f} MiB) exceed what "
              "the device tool sends", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
