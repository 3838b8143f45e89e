"""The Python API: compare two pipelines and get a `Report`, from a notebook or a test suite.

    from harness import compare
    report = compare(reference="reference_impl.stages", custom="mypkg/higgs_stages.py", stage="all")
    report.verdict, report.first_divergence(), report.to_json()
    report.to_html()          # the self-contained HTML page, as a string
    report.write("out/")      # report.json, report.md, report.html

`python -m harness.compare` is this function plus argument parsing, progress and the terminal
summary; both produce the same report.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from higgs_common import DEFAULT_MANIFEST, REPO_ROOT

if TYPE_CHECKING:
    from harness.report.model import Report

STAGE_CHOICES = ("dataset", "collator", "forward", "loss", "backward", "step", "config", "all")


def resolve_data(data: Path | str | None) -> Path:
    """A manifest path, or a folder holding `manifest.jsonl` (as people type it); ManifestError otherwise."""
    from higgs_common.manifest import resolve_manifest

    return resolve_manifest(Path(data) if data is not None else DEFAULT_MANIFEST)


def select_records(records: list, n: int) -> list:
    """n records, taking speakers in turn (variety beats the first n of one voice)."""
    by_speaker: dict[str, list] = {}
    for r in records:
        by_speaker.setdefault(r.speaker, []).append(r)
    queues = [by_speaker[s] for s in sorted(by_speaker)]
    out, i = [], 0
    while len(out) < min(n, len(records)):
        q = queues[i % len(queues)]
        depth = i // len(queues)
        if depth < len(q):
            out.append(q[depth])
        i += 1
    return out


def portable(path: Path | None) -> str | None:
    """Paths inside the repo are reported relative to it, so reports don't depend on the clone."""
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def compare(reference: str | None = None, custom: str | None = None, *, stage: str = "all",
            mode: str = "isolated", data: Path | str | None = None, samples: int = 4, dataset_samples: int = 64,
            fault: str | Sequence[str] = (), device: str = "auto", model: Path | str | None = None,
            audio_tokenizer: Path | str | None = None, seed: int = 0,
            tolerance: Mapping[str, tuple[float, float]] | None = None, precision: str = "fp32",
            ddp_world_size: int = 2, ddp_steps: int = 3, optimizer_steps: int = 3, skip_bad_samples: bool = False,
            max_audio_seconds: float | None = None, run_name: str | None = None,
            progress: Callable[[str], None] | None = None, options: dict[str, Any] | None = None,
            perturb: Callable[[str, str, Any], Any] | None = None, grad_noise: float = 0.0,
            reference_python: str | None = None, reference_path: Sequence[str] = (),
            custom_python: str | None = None, custom_path: Sequence[str] = (), side_timeout: float | None = None,
            isolation: str = "auto", **deprecated: Any) -> "Report":
    """Diff two pipeline adapters stage by stage and return the report (nothing is written).

    Every parameter is the `python -m harness.compare` option of the same name (`--fault NAME` ->
    `fault=`, `--ddp-world-size` -> `ddp_world_size=`), with the same default; `--out` and `--quiet`
    have no counterpart (`Report.write(folder)` writes; `progress` receives the progress lines).

    reference, custom: adapter SPECs, a module path or a .py file (default: `reference_impl.stages`,
        the train-higgs-audio pipeline, and `custom_impl.stages`, the custom zero-shot pipeline).
    stage: one of STAGE_CHOICES; earlier stages run to feed it.
    mode: "isolated" (both sides get the same input at every stage) or "propagated".
    data: manifest (JSONL) or a folder holding manifest.jsonl (default: data/manifest.jsonl).
    samples: records every stage runs on; dataset_samples: records the (cheap) dataset stage checks,
        a superset of those (bugs that only some records trigger, like a transcript rule, show there).
    fault: a name, or a sequence of names, of the custom adapter's faults to switch on.
    device: "auto" (cuda when present, else cpu), "cpu", "cuda", "cuda:N".
    model, audio_tokenizer: checkpoint and codec folders (default: the tiny offline ones, built under
        .cache/ on first use, which takes a minute or two on a laptop CPU and is announced on stderr).
    tolerance: field (or prefix ending in "*") -> (rtol, atol), overriding the derived tolerances.
    precision: "fp32" or "bf16" (the common configuration both sides run under).
    ddp_world_size: ranks of the distributed check (0 skips it); ddp_steps, optimizer_steps: steps.
    skip_bad_samples: leave out bad samples (listed in `report.skipped`) instead of raising.
    max_audio_seconds: longer clips are bad input (default 30).
    progress: called with each progress line (default: none, except the first-use notice above).
    reference_python, reference_path, custom_python, custom_path: run that side in its own worker process
        with that interpreter and those folders first on its sys.path (`docs/real-pipelines.md`).
    isolation: "auto" (a worker where a python/path is given), "process" (both sides in workers),
        "inline".  side_timeout: seconds one stage call of a worker may take.
    Test hooks: `perturb(stage, side, output) -> output` is applied to every stage output, and
    `grad_noise` multiplies the accumulation/DDP check's reduced gradients by 1 + grad_noise * N(0, 1).
    Deprecated aliases: `faults=` (use `fault=`), `tolerances=` (use `tolerance=`).

    Returns a `harness.report.Report`: `.verdict` ("pass" or "diverged"), `.first_divergence()`,
    `.write(folder)` (report.json, report.md, report.html).
    Raises ValueError for a bad `stage` or `samples`, UnknownFaultError for an unknown fault, and
    HiggsDiffError (or ManifestError) subclasses for bad input, naming the file, sample and field.
    """
    fault, tolerance = _deprecated_aliases(deprecated, fault, tolerance)
    faults = (fault,) if isinstance(fault, str) else tuple(fault)
    tolerances = dict(tolerance or {})

    from harness.engine.sides import load_sides

    if stage not in STAGE_CHOICES:
        raise ValueError(f"stage {stage!r}: expected one of {STAGE_CHOICES}")
    if samples < 1:
        raise ValueError("samples must be at least 1")
    sides = load_sides(reference, custom, isolation=isolation, timeout=side_timeout,
                       workers={"reference": {"python": reference_python, "paths": list(reference_path)},
                                "custom": {"python": custom_python, "paths": list(custom_path)}})
    try:
        return _compare(sides, stage=stage, mode=mode, data=data, samples=samples, dataset_samples=dataset_samples,
                        faults=faults, device=device, model=model, audio_tokenizer=audio_tokenizer, seed=seed,
                        tolerances=tolerances, precision=precision, ddp_world_size=ddp_world_size,
                        ddp_steps=ddp_steps, optimizer_steps=optimizer_steps, skip_bad_samples=skip_bad_samples,
                        max_audio_seconds=max_audio_seconds, run_name=run_name, progress=progress, options=options,
                        perturb=perturb, grad_noise=grad_noise)
    finally:
        for side in sides.values():
            close = getattr(side.module, "close", None) if side.worker is not None else None
            if close is not None:
                close()


def _compare(sides: dict, *, stage: str, mode: str, data: Any, samples: int, dataset_samples: int,
             faults: Sequence[str], device: str, model: Any, audio_tokenizer: Any, seed: int,
             tolerances: Any, precision: str, ddp_world_size: int, ddp_steps: int, optimizer_steps: int,
             skip_bad_samples: bool, max_audio_seconds: float | None, run_name: str | None,
             progress: Any, options: Any, perturb: Any, grad_noise: float) -> "Report":
    import torch

    from harness.engine.runner import STAGES, Comparison, RunOptions
    from harness.engine.symptoms import comparison_symptoms
    from harness.explain import causes
    from harness.report.model import Report
    from harness.screen import screen_records
    from harness.semantics.configdiff import config_diff
    from higgs_common.audio_io import DEFAULT_MAX_AUDIO_SECONDS
    from higgs_common.context import build_context
    from higgs_common.manifest import load_manifest
    from higgs_common.skipping import SkipLog
    from higgs_common.stages import HiggsDiffError, UnknownFaultError

    known = sides["custom"].faults()
    unknown = sorted(set(faults) - set(known))
    if unknown:
        raise UnknownFaultError(f"unknown fault(s) {unknown} for the custom adapter {sides['custom'].spec!r}; "
                                f"known: {sorted(known)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HiggsDiffError(f"--device {device}: CUDA is not available on this machine")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(device == "cpu", warn_only=True)
    data_path = resolve_data(data)
    max_seconds = max_audio_seconds if max_audio_seconds is not None else DEFAULT_MAX_AUDIO_SECONDS
    skip_log = SkipLog(where="harness.compare")
    manifest_errors: list = []
    all_records = load_manifest(data_path, skip_bad=skip_bad_samples, skipped=manifest_errors)
    for exc in manifest_errors:
        skip_log.add(exc)
    ctx = build_context(model, audio_tokenizer, device=device, seed=seed,
                        options={"max_audio_seconds": max_seconds, **(options or {})})
    wide = max(samples, dataset_samples)
    if skip_bad_samples:   # screen everything, then pick: the same picks as without bad samples
        good = screen_records(all_records, ctx, skip=True, skip_log=skip_log, manifest=data_path,
                              max_seconds=max_seconds, sides=sides)
        dataset_records = select_records(good, wide)
        if not dataset_records:
            raise HiggsDiffError(f"every sample of {data_path} is bad input (skipped {len(skip_log)})")
    else:
        dataset_records = screen_records(select_records(all_records, wide), ctx, skip=False, skip_log=skip_log,
                                         manifest=data_path, max_seconds=max_seconds, sides=sides)
    records = dataset_records[:samples]     # select_records' picks for n are a prefix of its picks for more
    stages = STAGES if stage == "all" else (stage,)
    with tempfile.TemporaryDirectory(prefix="higgs-diff-") as work:
        comparison = Comparison(records, ctx, list(faults), Path(work), dataset_records=dataset_records,
                                options=RunOptions(stages=stages, mode=mode, tolerances=tolerances,
                                           precision=precision, ddp_world_size=ddp_world_size, ddp_steps=ddp_steps,
                                           optimizer_steps=optimizer_steps, progress=progress,
                                           perturb=perturb, grad_noise=grad_noise),
                                sides=sides)
        results = comparison.run()
    causes.explain_fields(results, comparison.evidence, comparison.extras)
    from harness.explain.location import attach_locations

    from higgs_common import REPO_ROOT

    origin = Path(str(getattr(sides["custom"], "origin", "") or "?"))   # the adapter file (also for a worker side)
    origin = origin if origin.is_absolute() else Path(REPO_ROOT) / origin
    attach_locations(results, list(faults), [origin.parent] if origin.is_file() else [])
    name = run_name or default_run_name(stage, mode, faults, seed)
    report = Report(
        run_name=name, mode=mode, stages_requested=list(stages), stages=results,
        config={
            "device": device, "seed": seed, "faults": sorted(faults), "data": portable(data_path),
            "model": portable(ctx.model_path), "audio_tokenizer": portable(ctx.audio_tokenizer_path),
            "samples": [r.id for r in records], "dataset_samples": len(dataset_records),
            "common_train_config": _train_json(comparison.train),
            "torch": torch.__version__, "lora_b_init": comparison.lora_b_init,
            "sides": {role: _side_json(s, ctx.model_config) for role, s in sides.items()},
            **({"skipped_samples": [{"sample_id": i.sample_id, "field": i.field, "error": i.error}
                                    for i in skip_log.skipped]} if skip_bad_samples else {}),
        },
        config_diff=config_diff(comparison.side["reference"].effective, comparison.side["custom"].effective),
        catalogue=comparison.catalogue.to_json(),
        diagnoses=causes.diagnoses(results, comparison.evidence),
        extras=comparison.extras,
    )
    report.symptoms = comparison_symptoms(comparison, {role: err for (stage_, role), err in
                                                       comparison.side_errors.items() if stage_ == "backward"})
    report.skipped = skip_log
    return report


def _deprecated_aliases(deprecated: dict[str, Any], fault: str | Sequence[str],
                        tolerance: Mapping[str, tuple[float, float]] | None) -> tuple[Any, Any]:
    """Map the old keyword names (`faults=`, `tolerances=`) onto the CLI's vocabulary, warning once each;
    any other unknown keyword is a TypeError, as for a plain function."""
    import warnings

    aliases = {"faults": "fault", "tolerances": "tolerance"}
    unknown = sorted(set(deprecated) - set(aliases))
    if unknown:
        raise TypeError(f"compare() got unexpected keyword argument(s) {unknown}")
    values = {"fault": fault, "tolerance": tolerance}
    defaults = {"fault": (), "tolerance": None}
    for old, new in aliases.items():
        if old in deprecated:
            if values[new] != defaults[new]:
                raise TypeError(f"compare() got both {new}= and its deprecated alias {old}=")
            warnings.warn(f"compare({old}=...) is deprecated: use {new}=, the name of the --{new} option",
                          DeprecationWarning, stacklevel=3)
            values[new] = deprecated[old]
    return values["fault"], values["tolerance"]


def default_run_name(stage: str, mode: str, faults: Sequence[str], seed: int) -> str:
    return f"{stage}-{mode}-{'+'.join(sorted(faults)) or 'nofault'}-seed{seed}"


def _side_json(side: Any, model_config: Any) -> dict:
    out = side.to_json(model_config)
    out["origin"] = portable(Path(out["origin"])) if out.get("origin") not in (None, "?") else out.get("origin")
    return out


def _train_json(train: Any) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(train).items()}
