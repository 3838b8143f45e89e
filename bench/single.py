"""`python -m bench`: benchmarks of both pipelines and of the harness, side by side.

Three sections, one run, one device (`nox -s bench` runs this):

1. train   training throughput of reference_impl (HF Trainer path) and custom_impl (manual
           micro-step, with its speed switches: `custom_impl.speed`) on the same batch: tokens/s,
           step time, peak GPU memory, MFU (useful-work FLOP model in `bench.train`),
           under LoRA with each pipeline's defaults, under the harness's common configuration,
           and full fine-tuning; the common configuration at every `--batch-sizes` size, `max`
           adding a doubling search for the largest batch that fits (per pipeline); custom
           speed variants (`--variants`) and an epoch-batching comparison (`--epoch-batch`,
           where length grouping can show) as in `bench.sweep`; `--yardstick` adds a
           plain-PyTorch yardstick of the same step (`bench.yardstick`), `--repeats N`
           measures the first batch size N times (the spread is in the summary), and
           `--profile-batch B` profiles the custom step at batch B (`bench.profile`).
2. harness `python -m harness.compare --stage all` in-process: time the pipelines spend computing
           the stages vs the time the harness spends diffing and writing the report.
3. data    the data path on CPU (dataset + collator, warm code cache), samples/s, against the
           rate the GPU consumes samples in section 1.

Results go to `<out>/bench.json` and `<out>/bench.md` (device, torch version and settings
included); `--out` defaults to a new `reports/bench/bench-<UTC time>/`, and a folder that already
holds a bench.json is refused (exit 2) unless `--overwrite` is given.  Without CUDA everything runs on the CPU with the tiny checkpoint (a smoke run: the
numbers mean nothing, MFU is left out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from bench.host import host_context
from higgs_common import DEFAULT_MANIFEST, REPO_ROOT

log = logging.getLogger("bench")
SECTIONS = ("train", "harness", "data")
TRAIN_CONFIGS = ("lora-defaults", "lora-common", "full-ft")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Targets checked in the report (issue 17): custom >= 2x reference tokens/s at the same "
                                       "batch size under the common configuration; best MFU >= 25%; diff+report <= 10% "
                                       "of compute; data path >= 5x the GPU's sample rate.")
    p.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: embedded tiny)")
    p.add_argument("--audio-tokenizer", type=Path, default=None, help="codec folder (default: embedded tiny)")
    p.add_argument("--build-full", type=Path, default=None, metavar="DIR",
                   help="first build the full-size random checkpoint into DIR (on the GPU) and use it")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    p.add_argument("--data", type=Path, default=DEFAULT_MANIFEST, help="canonical manifest (JSONL)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    p.add_argument("--configs", default=",".join(TRAIN_CONFIGS), help=f"comma list of {TRAIN_CONFIGS}")
    p.add_argument("--batch-sizes", default="8", help="comma list; the first is used for every config, "
                                                      "the others only for lora-common; a final 'max' doubles the "
                                                      "largest until a run fails (out of memory) or --max-batch")
    p.add_argument("--max-batch", type=int, default=512, help="upper bound of the 'max' search")
    p.add_argument("--custom-speed", default=None, metavar="SPEC",
                   help="the custom pipeline's speed switches for its main rows (custom_impl.speed SPEC, applied "
                        "after the device defaults and $HIGGS_CUSTOM_SPEED; e.g. 'none' for the plain pipeline)")
    p.add_argument("--variants", default="", metavar="SPEC;SPEC",
                   help="';'-separated custom speed SPECs, each applied on top of the main custom options and "
                        "measured at --variant-batch (e.g. 'none;-compile;-fast-head')")
    p.add_argument("--variant-batch", type=int, default=None, help="batch size of the variants (default: the "
                                                                   "second --batch-sizes size, else the first)")
    p.add_argument("--epoch-batch", type=int, default=None,
                   help="also compare both pipelines over one pool of samples at this batch size, each with its own "
                        "batching (reference: random; custom: length-grouped, and with group-by-length flipped)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="stop launching train runs after this many seconds (the rest are reported as skipped)")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (torch.compile compiles in the first)")
    p.add_argument("--no-flop-count", action="store_true", help="skip the torch.utils.flop_counter cross-check")
    p.add_argument("--compare-samples", type=int, default=4, help="samples for the harness section")
    p.add_argument("--ddp-world-size", type=int, default=None,
                   help="harness section DDP check ranks (default: 2 on the tiny model, 0 otherwise: the check "
                        "runs CPU gloo workers that would each load the full model in fp32)")
    p.add_argument("--data-repeats", type=int, default=3, help="repeats of the data-path timing")
    p.add_argument("--yardstick", action="store_true",
                   help="also measure the plain-PyTorch yardstick of the same step (bench.yardstick) at every "
                        "lora-common batch size")
    p.add_argument("--repeats", type=int, default=1,
                   help="measure the first batch size's main rows this many times (the summary reports the spread)")
    p.add_argument("--repeat-steps", type=int, default=None, metavar="N",
                   help="timed steps of each of those repeated rows (default: --steps). A launch-bound small batch "
                        "varies 10-20%% from step to step on a shared host; the median of N steps has a standard "
                        "error of about 1.25 x that / sqrt(N), so the spread between repeats needs more steps there")
    p.add_argument("--profile-batch", type=int, default=None, metavar="B",
                   help="after the sweep, profile the custom step at batch B with torch.profiler (bench.profile)")
    p.add_argument("--profile-steps", type=int, default=3, help="profiled steps (after --warmup unprofiled ones)")
    p.add_argument("--compare-progress", action="store_true",
                   help="harness section: let harness.compare print its progress (timestamped) instead of --quiet")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: a new reports/bench/bench-<UTC time>/); one holding a bench.json is "
                        "refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="allow --out to hold an earlier bench.json")
    return p


def default_out(now: float | None = None) -> Path:
    """reports/bench/bench-<UTC time>: a new folder per run (committed results are never written over)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return REPO_ROOT / "reports" / "bench" / f"bench-{stamp}"


# ------------------------------------------------------------------------------------ setup

def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {spec}: CUDA is not available here")
    return dev


def device_info(device: torch.device) -> dict[str, Any]:
    from bench.train import datasheet_peak

    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "python": platform.python_version()}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    sms=props.multi_processor_count, cuda=torch.version.cuda,
                    bf16_peak_datasheet_tflops=(datasheet_peak(props.name) or 0) / 1e12 or None)
    else:
        info.update(name=platform.processor() or platform.machine(), cpus=torch.get_num_threads())
    return info


def measured_matmul_peak(device: torch.device, n: int = 8192, reps: int = 10) -> float | None:
    """bf16 n^3 matmul rate on random data (FLOP/s), the achievable ceiling next to the datasheet."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    seconds = start.elapsed_time(end) / 1e3 / reps
    del a, b
    return 2 * n ** 3 / seconds


def build_full_assets(out: Path, device: torch.device) -> Path:
    """Full-size random checkpoint built on `device` (model in bf16, codec calibrated there)."""
    from higgs_common.assets.build import build_assets
    from higgs_common.assets.paths import AssetPaths, build_lock

    paths = AssetPaths.at(out)
    if paths.is_complete("full"):
        return out
    with build_lock(out):
        build_assets(out, size="full", seed=0, device=str(device))
    return out


def load_items(ctx: Any, records: Sequence[Any], work: Path, pipeline: str) -> list[Any]:
    from harness.engine.sides import stages_of

    mod = stages_of(pipeline)
    native = mod.write_native(records, work / "native" / pipeline)
    return mod.dataset(native, ctx)


def cycle(items: Sequence[Any], n: int) -> list[Any]:
    return [items[i % len(items)] for i in range(n)]


# ------------------------------------------------------------------------------------ sections

def train_configs(names: Sequence[str], device: torch.device) -> dict[str, dict[str, Any]]:
    """config name -> {pipeline: TrainConfig}."""
    from custom_impl.stages import DEFAULT_TRAIN as CUSTOM
    from harness.engine.common_config import common_train_config
    from reference_impl.stages import DEFAULT_TRAIN as REFERENCE

    common = common_train_config(device)
    table = {
        # The reference's own default is full fine-tuning (LoRA is opt-in): LoRA with its settings.
        "lora-defaults": {"reference": REFERENCE.replace(use_lora=True), "custom": CUSTOM},
        "lora-common": {"reference": common, "custom": common},
        "full-ft": {"reference": REFERENCE.replace(use_lora=False), "custom": CUSTOM.replace(use_lora=False)},
    }
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise SystemExit(f"unknown --configs {unknown}; known: {sorted(table)}")
    return {n: table[n] for n in names}


def section_train(ctx: Any, items: list[Any], config_names: Sequence[str], plan: Any, custom_speed: Any, *,
                  peak: float | None, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the sweep (`bench.sweep`), printing each row as it lands; `on_progress` gets
    the section so far after every row (the caller saves it, so a run cut short keeps its rows)."""
    from bench.sweep import SweepState, run_sweep

    state = SweepState()
    section: dict[str, Any] = {"rows": state.rows, "batch_shapes": state.shapes, "largest_batch": state.largest,
                               "custom_speed": custom_speed.to_json()}

    def landed(row: dict[str, Any]) -> None:
        print(_train_line(row), flush=True)
        if on_progress is not None:
            on_progress(section)

    run_sweep(ctx, items, train_configs(config_names, ctx.device), plan, custom_speed, peak=peak, on_row=landed,
              state=state)
    return section


def _train_line(r: dict) -> str:
    who = r["pipeline"] + ("" if r.get("variant", "default") == "default" else f" {r['variant']}") + (
        f" #{r['repeat']}" if (r.get("repeat") or 1) > 1 else "") + (
        "" if r.get("batching", "fixed") == "fixed" else f" [{r['batching']}]")
    if r["status"] != "ok":
        return f"  {r['config']:<14} b{r['batch_size']:<4} {who:<24} {r['status']}: {r['error']}"
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
    mem = f"{r['peak_memory_gib']:.1f} GiB" if r.get("peak_memory_gib") is not None else "-"
    return (f"  {r['config']:<14} b{r['batch_size']:<4} {who:<24} step {1e3 * r['step_s_median']:8.1f} ms  "
            f"{r['tokens_per_s']:10.0f} tok/s  peak {mem:>10}  MFU {mfu}  ({r.get('wall_s') or 0:.0f} s)")


@contextlib.contextmanager
def _timed_write_report(sink: list[float]) -> Iterator[None]:
    """Time `harness.report.render.write_report` while `harness.compare` runs (compare imports it lazily)."""
    import harness.report.render as report_mod

    original = report_mod.write_report

    def wrapped(*args: Any, **kwargs: Any):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - t0)

    report_mod.write_report = wrapped
    try:
        yield
    finally:
        report_mod.write_report = original


def section_harness(args: argparse.Namespace, ctx: Any, device: torch.device, out: Path, tiny: bool) -> dict[str, Any]:
    from harness import compare

    world = args.ddp_world_size if args.ddp_world_size is not None else (2 if tiny else 0)
    report_dir = out / "compare"
    argv = ["--stage", "all", "--device", str(device), "--samples", str(args.compare_samples),
            "--ddp-world-size", str(world), "--out", str(report_dir), "--data", str(args.data)]
    if not args.compare_progress:
        argv.append("--quiet")
    if args.model is not None:
        argv += ["--model", str(ctx.model_path), "--audio-tokenizer", str(ctx.audio_tokenizer_path)]
    report_seconds: list[float] = []
    t0 = time.perf_counter()
    with _timed_write_report(report_seconds):
        exit_code = compare.main(argv)
    total = time.perf_counter() - t0
    rep = json.loads((report_dir / "report.json").read_text())
    timing = rep["volatile"]["timing"]
    stages = {k: {"compute_s": float(v["compute_s"]), "diff_s": float(v["diff_s"])} for k, v in timing.items()}
    compute = sum(v["compute_s"] for v in stages.values())
    diff = sum(v["diff_s"] for v in stages.values())
    write = sum(report_seconds)
    return {"argv": argv, "exit_code": exit_code, "verdict": rep.get("verdict"), "ddp_world_size": world,
            "samples": args.compare_samples,
            "per_stage": stages, "compute_s": compute, "diff_s": diff, "report_write_s": write,
            "total_s": total, "other_s": total - compute - diff - write,
            "diff_plus_report_over_compute": (diff + write) / compute if compute else None,
            "stage_status": {s["stage"]: s["status"] for s in rep.get("stages", [])}}


def section_data(ctx: Any, records: Sequence[Any], batch_size: int, repeats: int) -> dict[str, Any]:
    """dataset + collator on the CPU with a warm code cache: samples/s per pipeline."""
    import dataclasses

    from harness.engine.sides import stages_of

    cpu_ctx = dataclasses.replace(ctx, device=torch.device("cpu"))
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="higgs-bench-data-") as tmp:
        for pipeline in ("reference", "custom"):
            mod = stages_of(pipeline)
            native = mod.write_native(records, Path(tmp) / pipeline)
            items = mod.dataset(native, cpu_ctx)              # warms the code cache
            ds_s, col_s = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                items = mod.dataset(native, cpu_ctx)
                t1 = time.perf_counter()
                for i in range(0, len(items) - batch_size + 1, batch_size):
                    mod.collate(items[i:i + batch_size], cpu_ctx)
                if len(items) < batch_size:
                    mod.collate(cycle(items, batch_size), cpu_ctx)
                col_s.append(time.perf_counter() - t1)
                ds_s.append(t1 - t0)
            n = len(items)
            n_col = max(batch_size, (n // batch_size) * batch_size)
            ds, col = statistics.median(ds_s), statistics.median(col_s)
            out[pipeline] = {"samples": n, "dataset_s": ds, "collate_s": col, "collated_samples": n_col,
                             "samples_per_s": 1.0 / (ds / n + col / n_col)}
    return out


def section_profile(ctx: Any, items: list[Any], args: argparse.Namespace, speed: Any, *, t0: float) -> dict[str, Any]:
    """torch.profiler summary of the custom step at --profile-batch (`bench.profile`), under the
    lora-common configuration; a failure (out of memory) or a spent --deadline-s is recorded, not raised."""
    from bench.profile import profile_custom
    from bench.sweep import fixed_batches

    if args.deadline_s is not None and time.perf_counter() - t0 > args.deadline_s:
        return {"status": "skipped", "error": "time budget (--deadline-s) spent before the profile"}
    train = train_configs(["lora-common"], ctx.device)["lora-common"]["custom"]
    print(f"  profiling the custom step at batch {args.profile_batch} ({args.profile_steps} steps)", flush=True)
    try:
        (batch,), _ = fixed_batches(ctx, items, args.profile_batch)
        out = profile_custom(ctx, train, batch, speed, warmup=args.warmup, steps=args.profile_steps)
    except Exception as exc:  # noqa: BLE001 - an OOM/crash is a result, reported in bench.md
        log.warning("profile at batch %d failed: %s", args.profile_batch, exc)
        return {"status": "error", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    print(f"  profile: {out['unprofiled_step_ms']:.1f} ms/step, idle GPU {100 * out['idle_share']:.1f}% of the "
          "profiled step", flush=True)
    return {"status": "ok", **out}


# ------------------------------------------------------------------------------------ report

def summarise(res: dict[str, Any]) -> dict[str, Any]:
    """The four target checks, from the sections' numbers."""
    s: dict[str, Any] = {}
    rows = res.get("train", {}).get("rows", [])
    # The main rows: each pipeline as configured (custom: its main speed options), fixed batches.
    ok = [r for r in rows if r["status"] == "ok" and r.get("variant", "default") == "default"
          and r.get("batching", "fixed") == "fixed"]

    def pick(cfg: str, pipe: str, bs: int) -> dict | None:
        """The row of (config, pipeline, batch); over repeats, the one with the median tokens/s."""
        cands = sorted((r for r in ok if r["config"] == cfg and r["pipeline"] == pipe and r["batch_size"] == bs),
                       key=lambda r: r["tokens_per_s"])
        return cands[(len(cands) - 1) // 2] if cands else None

    for bs in sorted({r["batch_size"] for r in ok if r["config"] == "lora-common"}):
        ref, cus, yard = (pick("lora-common", p, bs) for p in ("reference", "custom", "yardstick"))
        entry: dict[str, Any] = {}
        if ref and cus:
            entry.update({
                "speedup_custom_over_reference": cus["tokens_per_s"] / ref["tokens_per_s"],
                "peak_memory_ratio_custom_over_reference": (cus["peak_memory_gib"] / ref["peak_memory_gib"]
                                                            if cus.get("peak_memory_gib") and ref.get("peak_memory_gib") else None),
                "target_speedup_2.0_met": cus["tokens_per_s"] / ref["tokens_per_s"] >= 2.0,
            })
        if yard and cus:
            entry["speedup_custom_over_yardstick"] = cus["tokens_per_s"] / yard["tokens_per_s"]
        if entry:
            s[f"common_b{bs}"] = entry
        spread = repeat_spread([r for r in ok if r["config"] == "lora-common" and r["batch_size"] == bs])
        if spread:
            s[f"repeats_b{bs}"] = spread
    best = {pipe: max((r for r in ok if r["config"] == "lora-common" and r["pipeline"] == pipe),
                      key=lambda r: r["tokens_per_s"], default=None) for pipe in ("reference", "custom", "yardstick")}
    if best["reference"] and best["custom"]:
        ratio = best["custom"]["tokens_per_s"] / best["reference"]["tokens_per_s"]
        s["common_best"] = {
            "reference_batch": best["reference"]["batch_size"], "custom_batch": best["custom"]["batch_size"],
            "reference_tokens_per_s": best["reference"]["tokens_per_s"],
            "custom_tokens_per_s": best["custom"]["tokens_per_s"],
            "speedup_custom_over_reference": ratio, "target_speedup_2.0_met": ratio >= 2.0,
            "largest_batch": res.get("train", {}).get("largest_batch", {}),
        }
    if best["yardstick"] and best["custom"]:
        s["common_best"] = s.get("common_best", {}) | {
            "yardstick_batch": best["yardstick"]["batch_size"],
            "yardstick_tokens_per_s": best["yardstick"]["tokens_per_s"],
            "speedup_custom_over_yardstick": best["custom"]["tokens_per_s"] / best["yardstick"]["tokens_per_s"]}
    lora_mfu = [r["mfu"] for r in ok if r["config"].startswith("lora") and r.get("mfu") and r["pipeline"] != "yardstick"]
    if lora_mfu:
        s["best_lora_mfu"] = max(lora_mfu)
        s["target_mfu_0.25_met"] = max(lora_mfu) >= 0.25
    h = res.get("harness")
    if h and h.get("diff_plus_report_over_compute") is not None:
        s["harness_overhead"] = h["diff_plus_report_over_compute"]
        s["target_harness_0.10_met"] = h["diff_plus_report_over_compute"] <= 0.10
    if h and h.get("samples"):
        # the whole compare run against one training step of each pipeline on a batch of as many samples
        steps = {p: r["step_s_median"] for p in ("reference", "custom")
                 if (r := pick("lora-common", p, h["samples"])) and r.get("step_s_median")}
        if steps:
            s["harness_total_s"] = h["total_s"]
            s["harness_total_in_train_steps"] = {p: h["total_s"] / v for p, v in steps.items()}
    d = res.get("data")
    if d and ok:
        gpu_rate = max(r["samples_per_s"] for r in ok)
        slowest = min(v["samples_per_s"] for v in d.values())
        s["data_over_gpu_consumption"] = slowest / gpu_rate
        s["gpu_samples_per_s_fastest"] = gpu_rate
        s["target_data_5x_met"] = slowest / gpu_rate >= 5
    return s


def repeat_spread(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """For rows of one batch size measured several times (their `repeat` 1, 2, ...): per pipeline the
    tokens/s of each repeat, min / median / max and the spread (max - min) / median; and the
    custom / reference (and custom / yardstick) ratio of each repeat with its min, max and spread,
    and which of the two pipelines' own spread is the larger (`follows`).  None when no pipeline was
    measured more than once."""
    rows_of: dict[str, dict[int, dict[str, Any]]] = {}          # pipeline -> repeat -> row
    for r in rows:
        rows_of.setdefault(r["pipeline"], {})[int(r.get("repeat") or 1)] = r
    by_pipe = {pipe: {k: r["tokens_per_s"] for k, r in per.items()} for pipe, per in rows_of.items()}
    if not any(len(v) > 1 for v in by_pipe.values()):
        return None
    out: dict[str, Any] = {}
    for pipe, per in sorted(by_pipe.items()):
        vals = [per[k] for k in sorted(per)]
        med = statistics.median(vals)
        out[pipe] = {"tokens_per_s": vals, "min": min(vals), "median": med, "max": max(vals),
                     "spread": (max(vals) - min(vals)) / med if med else None} | host_context(
                         [rows_of[pipe][k] for k in sorted(per)])
    for other in ("reference", "yardstick"):
        if "custom" in by_pipe and other in by_pipe:
            both = sorted(set(by_pipe["custom"]) & set(by_pipe[other]))
            ratios = [by_pipe["custom"][k] / by_pipe[other][k] for k in both]
            if ratios:
                med = statistics.median(ratios)
                # The side whose own repeats moved more is what the ratio's range follows (a host-bound
                # step drifts with the machine's load; a GPU-bound one does not).
                follows = max(("custom", other), key=lambda p: out[p]["spread"] or 0.0)
                out[f"custom_over_{other}"] = {"per_repeat": ratios, "min": min(ratios), "max": max(ratios),
                                               "spread": (max(ratios) - min(ratios)) / med, "follows": follows}
    return out


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def render_markdown(res: dict[str, Any]) -> str:
    dev = res["device_info"]
    lines = [f"# Benchmark: {dev.get('name')} ({dev['device']})", "",
             f"torch {dev['torch']}, transformers {dev.get('transformers')}, python {dev['python']}; "
             f"checkpoint `{res['settings']['model']}` ({res['settings']['model_parameters']:,} parameters); "
             f"{res['settings']['steps']} timed steps after {res['settings']['warmup']} warm-up steps (median).", ""]
    if res.get("peaks"):
        p = res["peaks"]
        lines += [f"bf16 peak: datasheet {p.get('datasheet_tflops')} TFLOP/s, measured 8192^3 matmul "
                  f"{p.get('measured_matmul_tflops'):.0f} TFLOP/s. MFU is against the datasheet peak." if p.get(
                      "measured_matmul_tflops") else "", ""]
    if "train" in res:
        tr = res["train"]
        lines += ["## Training throughput (fixed batching: the same batch for both pipelines)", ""]
        for bs, sh in tr["batch_shapes"].items():
            line = (f"- batch {bs}: merged length {sh['padded_len']}, {sh['tokens']} real positions "
                    f"({sh['audio_out_positions']} audio-out), {sh['text_supervised']} supervised text tokens, "
                    f"{sh['audio_supervised']} supervised audio codes")
            if sh.get("timed_steps"):
                line += (f"; over its {sh['timed_steps']} timed batches {sh['timed_tokens']} real of "
                         f"{sh['timed_padded_tokens']} padded positions ({100 * sh['padding_efficiency']:.1f}%)")
            lines.append(line)
        if tr.get("custom_speed"):
            on = [k for k, v in tr["custom_speed"].items() if v is True]
            lines += ["", f"custom speed switches (main rows): {', '.join(on) or 'none'} (`custom_impl.speed`); "
                          "variant rows flip the switches named."]
        if tr.get("largest_batch"):
            lines += ["", "largest batch that ran (lora-common): " + ", ".join(
                f"{k} {v}" for k, v in tr["largest_batch"].items())]
        lines += ["", "| config | batch | pipeline | variant | batching | weights | trainable | step ms | tokens/s | "
                      "samples/s | peak GiB | model TFLOP/s | MFU | counted TFLOP/s | step-1 loss | status |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in tr["rows"]:
            f = lambda v, fmt: (fmt.format(v) if v is not None else "-")  # noqa: E731
            lines.append(
                f"| {r['config']} | {r['batch_size']} | {r['pipeline']} | {r.get('variant', 'default')}"
                f"{' #' + str(r['repeat']) if (r.get('repeat') or 1) > 1 else ''} | "
                f"{r.get('batching', 'fixed')} | {r['weights_dtype'] or '-'} | "
                f"{r['trainable_params']:,} | {f(r['step_s_median'] and 1e3 * r['step_s_median'], '{:.1f}')} | "
                f"{f(r.get('tokens_per_s'), '{:.0f}')} | {f(r.get('samples_per_s'), '{:.1f}')} | "
                f"{f(r.get('peak_memory_gib'), '{:.1f}')} | {f(r.get('analytic_tflops'), '{:.0f}')} | "
                f"{f(r.get('mfu') and 100 * r['mfu'], '{:.1f}%')} | {f(r.get('counted_tflops'), '{:.0f}')} | "
                f"{f(r['losses'][0] if r['pipeline'] == 'custom' and r.get('losses') else None, '{:.4f}')} | "
                f"{r['status']}{': ' + r['error'][:80] if r.get('error') else ''} |")
        lines += ["", "step-1 loss: the custom loss of the first (untimed) step; at one batch size and batching "
                      "every custom row starts from the same weights on the same batch, so the variants' values "
                      "must agree within bf16 noise (the speed switches change no result)."]
        formulas = [r["flop_formula"] for r in tr["rows"] if r.get("flop_formula")]
        if formulas:
            lines += ["", f"FLOP model (useful work, the same for both pipelines): `{formulas[0]}`", ""]
    spreads = {k: v for k, v in res.get("summary", {}).items() if k.startswith("repeats_b")}
    for key, sp in spreads.items():
        n_steps = res["settings"].get("repeat_steps") or res["settings"].get("steps")
        lines += [f"## Run-to-run spread at batch {key.removeprefix('repeats_b')} ({res['settings'].get('repeats')} "
                  f"repeats, each a fresh model, median of {n_steps} timed steps)", "",
                  "| pipeline | tokens/s per repeat | min | median | max | spread | host us/op per repeat | "
                  "CPU steal per repeat | r(step, host) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for pipe in ("reference", "custom", "yardstick"):
            if pipe in sp:
                v = sp[pipe]
                lines.append(f"| {pipe} | {', '.join(f'{x:.0f}' for x in v['tokens_per_s'])} | {v['min']:.0f} | "
                             f"{v['median']:.0f} | {v['max']:.0f} | {100 * (v['spread'] or 0):.1f}% | "
                             f"{', '.join(_num(x, '{:.2f}') for x in v.get('host_op_us') or []) or '-'} | "
                             f"{', '.join(_num(x and 100 * x, '{:.1f}%') for x in v.get('host_steal') or []) or '-'} | "
                             f"{_num(v.get('step_host_r'), '{:.2f}')} |")
        if any(sp[p].get("host_op_us") for p in ("reference", "custom", "yardstick") if p in sp):
            lines += ["", "host us/op: a fixed host-only workload (`bench.host.HostProbe`: in-place adds on "
                          "one-element CPU tensors) timed before each step, the host's eager dispatch speed at "
                          "that moment (larger = slower; the mean of a reading before and one after each step); CPU "
                          "steal: the machine's CPU time the hypervisor gave to others during the steps (a "
                          "neighbour on the same physical core slows a CPU without showing here); r: correlation "
                          "of step time with the probe over the timed steps, each repeat centred on its own "
                          "medians. A step that launches its kernels from Python follows the host within a "
                          "repeat (r well above 0); one replayed from CUDA graphs barely does."]
        for other in ("reference", "yardstick"):
            if f"custom_over_{other}" in sp:
                v = sp[f"custom_over_{other}"]
                line = (f"\ncustom / {other} per repeat: {', '.join(f'{x:.2f}x' for x in v['per_repeat'])} "
                        f"(min {v['min']:.2f}x, max {v['max']:.2f}x")
                if v.get("spread") is not None:
                    follows = v["follows"]
                    line += (f"; spread {100 * v['spread']:.1f}%, following the {follows}, whose own repeats "
                             f"spread {100 * (sp[follows]['spread'] or 0):.1f}%")
                lines.append(line + ")")
        lines.append("")
    prof = res.get("profile")
    if prof:
        if prof.get("status") == "ok":
            from bench.profile import render_profile

            lines += [render_profile(prof)]
        else:
            lines += [f"## Profile: {prof.get('status')}: {prof.get('error')}", ""]
    if "harness" in res:
        h = res["harness"]
        lines += ["## Harness cost (`harness.compare --stage all`)", "",
                  f"verdict {h['verdict']} (exit {h['exit_code']}), DDP check ranks: {h['ddp_world_size']}.", "",
                  "| stage | compute s | diff s |", "|---|---|---|"]
        for st, v in h["per_stage"].items():
            lines.append(f"| {st} | {v['compute_s']:.3f} | {v['diff_s']:.3f} |")
        lines += ["", f"compute {h['compute_s']:.2f} s, diff {h['diff_s']:.2f} s, report writing "
                      f"{h['report_write_s']:.2f} s, other (context, model loading, native files) "
                      f"{h['other_s']:.2f} s; (diff + report) / compute = "
                      f"{100 * (h['diff_plus_report_over_compute'] or 0):.1f}%", ""]
        in_steps = res.get("summary", {}).get("harness_total_in_train_steps")
        if in_steps:
            lines += [f"The whole `compare --stage all` run ({h['total_s']:.1f} s, {h.get('samples')} samples) costs as much "
                      "as " + " / ".join(f"{v:.0f} {p} training steps" for p, v in in_steps.items())
                      + f" at batch {h.get('samples')} (lora-common, the rows above).", ""]
    if "data" in res:
        lines += ["## Data path (CPU, warm code cache)", "", "| pipeline | samples | dataset s | collate s | samples/s |",
                  "|---|---|---|---|---|"]
        for pipe, v in res["data"].items():
            lines.append(f"| {pipe} | {v['samples']} | {v['dataset_s']:.3f} | {v['collate_s']:.3f} | "
                         f"{v['samples_per_s']:.0f} |")
        lines.append("")
    s = res.get("summary", {})
    if s:
        lines += ["## Targets", "", "```", json.dumps(s, indent=2), "```", ""]
    for note in res.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (int, float, str, bool)) or x is None:
        return x
    return str(x)


# ------------------------------------------------------------------------------------ main

def parse_batch_sizes(spec: str) -> tuple[list[int], bool]:
    """'8,32,max' -> ([8, 32], True): explicit sizes and whether to search for the largest."""
    items = [b.strip() for b in spec.split(",") if b.strip()]
    search = bool(items) and items[-1] == "max"
    sizes = [int(b) for b in (items[:-1] if search else items)]
    if not sizes:
        raise SystemExit(f"--batch-sizes {spec!r}: give at least one size before 'max'")
    return sizes, search



def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sections = [s for s in args.sections.split(",") if s]
    bad = sorted(set(sections) - set(SECTIONS))
    if bad:
        raise SystemExit(f"unknown --sections {bad}; known: {SECTIONS}")
    batch_sizes, search_max = parse_batch_sizes(args.batch_sizes)
    if args.repeats < 1 or args.profile_steps < 1 or (args.repeat_steps is not None and args.repeat_steps < 1):
        raise SystemExit(f"--repeats {args.repeats} / --profile-steps {args.profile_steps} / --repeat-steps "
                         f"{args.repeat_steps}: must be at least 1")
    out = Path(args.out) if args.out is not None else default_out()
    if (out / "bench.json").exists() and not args.overwrite:
        print(f"bench: {out} already holds a bench.json (earlier results); give a new --out, or --overwrite",
              file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    from custom_impl import speed as custom_speed

    try:
        main_speed = custom_speed.resolve(device, args.custom_speed)
        variants = [(spec.strip(), custom_speed.apply_spec(main_speed, spec, device))
                    for spec in args.variants.split(";") if spec.strip()]
    except custom_speed.SpeedSpecError as exc:
        raise SystemExit(f"--custom-speed/--variants: {exc}") from exc
    from bench.train import datasheet_peak
    from higgs_common.assets.model import count_parameters  # noqa: F401  (import check)
    from higgs_common.context import build_context
    from higgs_common.manifest import load_manifest

    if args.build_full is not None:
        t0 = time.perf_counter()
        build_full_assets(args.build_full, device)
        print(f"full assets ready in {time.perf_counter() - t0:.1f} s", flush=True)
        args.model, args.audio_tokenizer = args.build_full / "model", args.build_full / "audio_tokenizer"
    tiny = args.model is None
    torch.manual_seed(0)
    ctx = build_context(args.model, args.audio_tokenizer, device=str(device))
    records = load_manifest(args.data)
    out.mkdir(parents=True, exist_ok=True)
    info = device_info(device)
    peak = datasheet_peak(info.get("name", "")) if device.type == "cuda" else None
    from safetensors import safe_open
    n_params = 0
    for f in sorted(Path(ctx.model_path).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            n_params += sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    res: dict[str, Any] = {
        "device_info": info,
        "settings": {"model": str(ctx.model_path), "audio_tokenizer": str(ctx.audio_tokenizer_path),
                     "model_parameters": n_params, "steps": args.steps, "warmup": args.warmup,
                     "batch_sizes": batch_sizes + (["max"] if search_max else []), "max_batch": args.max_batch,
                     "custom_speed": main_speed.describe(), "variants": [label for label, _ in variants],
                     "variant_batch": args.variant_batch, "epoch_batch": args.epoch_batch,
                     "deadline_s": args.deadline_s, "yardstick": args.yardstick, "repeats": args.repeats,
                     "repeat_steps": args.repeat_steps,
                     "profile_batch": args.profile_batch, "profile_steps": args.profile_steps,
                     "configs": args.configs.split(","), "sections": sections,
                     "codes": f"{ctx.model_config.audio_num_codebooks} x {ctx.model_config.audio_codebook_size} "
                              "from the codec in the settings (code cache)"},
        "notes": [],
    }
    if device.type == "cuda":
        m = measured_matmul_peak(device)
        res["peaks"] = {"datasheet_tflops": (peak or 0) / 1e12, "measured_matmul_tflops": m / 1e12 if m else None}
    else:
        res["notes"].append("CPU smoke run: MFU is not computed and the numbers say nothing about a GPU.")

    t_ctx = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="higgs-bench-") as tmp:
        items = load_items(ctx, records, Path(tmp), "custom")   # fills the code cache (GPU codec on CUDA)
    res["settings"]["first_dataset_with_encoding_s"] = time.perf_counter() - t_ctx

    def save() -> None:
        res["summary"] = summarise(res)
        (out / "bench.json").write_text(json.dumps(_jsonable(res), indent=2) + "\n")
        (out / "bench.md").write_text(render_markdown(res))

    t_train = time.perf_counter()           # the sweep's deadline counts from here; the profile's too
    if "train" in sections:
        from bench.sweep import SweepPlan

        plan = SweepPlan(config_names=[c for c in args.configs.split(",") if c], batch_sizes=batch_sizes,
                         search_max=search_max, max_batch=args.max_batch, variants=variants,
                         variant_batch=args.variant_batch or (batch_sizes[1] if len(batch_sizes) > 1 else batch_sizes[0]),
                         epoch_batch=args.epoch_batch, steps=args.steps, warmup=args.warmup,
                         count=not args.no_flop_count, deadline_s=args.deadline_s, yardstick=args.yardstick,
                         repeats=args.repeats, repeat_steps=args.repeat_steps)

        def progress(section: dict[str, Any]) -> None:
            res["train"] = section
            save()
        res["train"] = section_train(ctx, items, plan.config_names, plan, main_speed, peak=peak, on_progress=progress)
        save()
    if args.profile_batch:
        res["profile"] = section_profile(ctx, items, args, main_speed, t0=t_train)
        save()
    if "harness" in sections:
        res["harness"] = section_harness(args, ctx, device, out, tiny)
        save()
    if "data" in sections:
        res["data"] = section_data(ctx, records, batch_sizes[0], args.data_repeats)
        save()
    save()
    print(render_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
