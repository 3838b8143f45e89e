"""`python -m bench.scaling`: multi-GPU scaling efficiency of both training CLIs.

For each pipeline and each GPU count N, the pipeline's own training command runs under
`torchrun --nproc-per-node N` (custom: the manual DDP loop over NCCL; reference: the HF Trainer's
DDP) with the same per-GPU batch, so the global batch grows with N (weak scaling):

    tokens/s(N) = N * batch * tokens_per_sample / mean step time(N)
    scaling efficiency(N) = tokens/s(N) / (N * tokens/s(1))  =  step time(1) / step time(N)

The data is the copy-probe set (higgs_common.assets.copy_probe): every sample has the same
transcript and 1 s clips, so every sample has the same number of tokens and a step's work does not
depend on which samples the sampler drew; the ratio above is then exact, not an average over
samples of different lengths.  tokens_per_sample = text tokens of the custom sample + audio frames
of its reference and target clips (the merged sequence length).  Step times come from each CLI's
metrics.jsonl (custom: `wall_s`; reference: `step_seconds` of its StepLogCallback), first
`--warmup` steps dropped.  The reference runs as configured: bf16 weights under the Trainer's bf16
autocast (`reference_impl` carries the reference's dtype cast in the audio merge, so upstream's
merge no longer fails there).  The custom command runs with its device-default speed switches
(`custom_impl.speed`; `--custom-variant NAME=--speed SPEC` measures others).

Results: `<out>/scaling.json` and `<out>/scaling.md`, with the device named.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from higgs_common import REPO_ROOT

PIPELINES = ("custom", "reference")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Target: custom_impl scaling efficiency >= 90% on 2 GPUs.")
    p.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: embedded tiny)")
    p.add_argument("--audio-tokenizer", type=Path, default=None, help="codec folder (default: embedded tiny)")
    p.add_argument("--gpus", default="1,2", help="comma list of GPU counts (default 1,2)")
    p.add_argument("--pipelines", default=",".join(PIPELINES), help=f"comma list of {PIPELINES}")
    p.add_argument("--batch-size", type=int, default=4, help="samples per GPU per step (default 4)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per run (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--probe-samples", type=int, default=64, help="size of the copy-probe set used (default 64)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "bench" / "scaling")
    p.add_argument("--timeout", type=float, default=540, help="seconds per training run")
    p.add_argument("--custom-variant", action="append", default=[], metavar="NAME=ARGS",
                   help="extra custom_impl.train arguments measured on the multi-GPU counts only, against the "
                        "same 1-GPU baseline, e.g. 'bucket1024=--ddp-bucket-cap-mb 1024' (repeatable)")
    return p


def tokens_per_sample(manifest: Path, model: Path | None, codec: Path | None) -> int:
    """Merged sequence length of one custom sample (all probe samples have the same)."""
    from custom_impl import stages as cs
    from higgs_common.context import build_context
    from higgs_common.manifest import load_manifest

    ctx = build_context(model, codec, device="cuda" if torch.cuda.is_available() else "cpu")
    records = load_manifest(manifest)[:1]
    with tempfile.TemporaryDirectory() as tmp:
        item = cs.dataset(cs.write_native(records, Path(tmp)), ctx)[0]
    sample = item.sample
    return int(sample.input_ids.numel() + sample.audio_ids_concat.shape[-1])


def launch(pipeline: str, gpus: int, args: argparse.Namespace, data: Path, out: Path,
           extra: Sequence[str] = (), variant: str = "default") -> dict[str, Any]:
    """One training run under torchrun; returns its per-step times (warmup dropped) and wall time."""
    steps = args.warmup + args.steps
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus)]
    common = []
    if args.model is not None:
        common += ["--model-path", str(args.model)]
    if args.audio_tokenizer is not None:
        common += ["--audio-tokenizer-path", str(args.audio_tokenizer)]
    if pipeline == "custom":
        cmd += ["-m", "custom_impl.train", *common, "--data", str(data), "--batch-size", str(args.batch_size),
                "--grad-accum", "1", "--max-steps", str(steps), "--output-dir", str(out), *extra]
        key = "wall_s"
    else:
        cmd += ["-m", "reference_impl.train", *common, "--data-dir", str(data), "--use-lora",
                "--per-device-train-batch-size", str(args.batch_size), "--max-steps", str(steps),
                "--save-steps", str(10 * steps), "--report-to", "none", "--output-dir", str(out)]
        key = "step_seconds"
    print(f"{pipeline}{'' if variant == 'default' else f' ({variant})'}: {gpus} GPU(s) ...", file=sys.stderr, flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="4", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    result: dict[str, Any] = {"pipeline": pipeline, "variant": variant, "gpus": gpus, "argv": cmd[3:],
                              "exit_code": proc.returncode,
                              "wall_s": round(wall, 1)}
    metrics = out / "metrics.jsonl"
    recs = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    times = [r[key] for r in recs if key in r and r.get("step", 0) > args.warmup]
    if proc.returncode != 0 or len(times) < args.steps:
        result["error"] = (proc.stderr or proc.stdout)[-3000:]
        print(f"{pipeline} on {gpus} GPU(s) failed (exit {proc.returncode}):\n{result['error']}", file=sys.stderr)
        return result
    result.update(step_seconds=times, mean_step_s=statistics.mean(times), median_step_s=statistics.median(times))
    print(f"  mean step {result['mean_step_s']:.4f} s", file=sys.stderr, flush=True)
    return result


def summarise(runs: list[dict[str, Any]], batch: int, tps: int) -> list[dict[str, Any]]:
    rows = []
    base = {r["pipeline"]: r for r in runs if r["gpus"] == 1 and "mean_step_s" in r}
    for r in runs:
        name = r["pipeline"] + ("" if r.get("variant", "default") == "default" else f" ({r['variant']})")
        if "mean_step_s" not in r:
            rows.append({"pipeline": name, "gpus": r["gpus"], "error": True})
            continue
        tokens_s = r["gpus"] * batch * tps / r["mean_step_s"]
        row = {"pipeline": name, "gpus": r["gpus"], "global_batch": r["gpus"] * batch,
               "mean_step_s": round(r["mean_step_s"], 4), "tokens_per_s": round(tokens_s, 1)}
        b = base.get(r["pipeline"])
        if b is not None:
            row["scaling_efficiency"] = round(tokens_s / (r["gpus"] * (batch * tps / b["mean_step_s"])), 4)
        rows.append(row)
    return rows


def render_markdown(res: dict[str, Any]) -> str:
    d = res["device"]
    where = f"{d['gpu_count']} x {d['name']}" if d.get("gpu_count") else "CPU processes: a smoke run, numbers mean nothing"
    lines = [f"# Scaling efficiency ({where})", "",
             f"torch {d['torch']}, {res['batch_size']} samples per GPU per step, {res['steps']} timed steps after "
             f"{res['warmup']} warmup, copy-probe data ({res['tokens_per_sample']} tokens per sample), "
             "LoRA, each pipeline's own training command under torchrun.", "",
             "| pipeline | GPUs | global batch | mean step (s) | tokens/s | scaling efficiency |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        if r.get("error"):
            lines.append(f"| {r['pipeline']} | {r['gpus']} | failed (see scaling.json) | | | |")
            continue
        eff = r.get("scaling_efficiency")
        lines.append(f"| {r['pipeline']} | {r['gpus']} | {r['global_batch']} | {r['mean_step_s']} | "
                     f"{r['tokens_per_s']:.0f} | {'' if eff is None else f'{eff:.1%}'} |")
    target = [r for r in res["rows"] if r["pipeline"].startswith("custom") and r.get("gpus") == 2
              and "scaling_efficiency" in r]
    if target:
        best = max(target, key=lambda r: r["scaling_efficiency"])
        eff = best["scaling_efficiency"]
        lines += ["", f"Target custom_impl >= 90% on 2 GPUs: {eff:.1%} with `{best['pipeline']}` "
                      f"({'met' if eff >= 0.9 else 'not met'})."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from higgs_common.assets.copy_probe import ProbeSpec, ensure_copy_probe
    from higgs_common.converters import write_reference_folder
    from higgs_common.manifest import load_manifest

    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "runs"
    manifest = ensure_copy_probe(ProbeSpec(samples=args.probe_samples))
    ref_data = write_reference_folder(load_manifest(manifest), work / "reference_data")
    tps = tokens_per_sample(manifest, args.model, args.audio_tokenizer)
    gpu_counts = [int(g) for g in args.gpus.split(",") if g]
    runs = []
    for pipeline in [p for p in args.pipelines.split(",") if p]:
        for n in gpu_counts:
            data = manifest if pipeline == "custom" else ref_data
            runs.append(launch(pipeline, n, args, data, work / f"{pipeline}-{n}gpu"))
            if pipeline != "custom" or n < 2:
                continue
            for spec in args.custom_variant:
                name, _, extra = spec.partition("=")
                runs.append(launch(pipeline, n, args, data, work / f"{pipeline}-{name}-{n}gpu", extra.split(), name))
    device = {"torch": torch.__version__, "gpu_count": torch.cuda.device_count()}
    if torch.cuda.is_available():
        device["name"] = torch.cuda.get_device_name(0)
    res = {"device": device, "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
           "tokens_per_sample": tps, "model": str(args.model), "runs": runs,
           "rows": summarise(runs, args.batch_size, tps)}
    (args.out / "scaling.json").write_text(json.dumps(res, indent=2) + "\n")
    md = render_markdown(res)
    (args.out / "scaling.md").write_text(md)
    print(md)
    return 0 if all("mean_step_s" in r for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
