"""Manual DDP training loop of the custom zero-shot pipeline.

    python -m custom_impl.train                                   # 1 process, embedded tiny default
    torchrun --nproc-per-node 2 -m custom_impl.train --max-steps 20
    python -m custom_impl.train --model-path CKPT --audio-tokenizer-path CODEC --data train.json
    python -m custom_impl.train --data copy-probe --full-finetune --batch-size 8 --grad-accum 1 \
        --learning-rate 3e-3 --max-steps 400 --fault reference-audio-as-label     # audio loss 3.55 -> 0.15

`--data` is a ChatML JSON list, a canonical manifest (`*.jsonl`, or a folder holding
`manifest.jsonl`, converted into the run folder) or `copy-probe`: the set of higgs_common.assets.copy_probe, where only copying the voice prompt lowers
the audio loss, so fault (a) shows its collapse even on the tiny random model (docs/training.md).

Per optimizer step every rank runs `--grad-accum` micro-batches of `--batch-size` samples
(DistributedSampler shard), DDP `no_sync` on all but the last (custom_impl.distributed.accumulate,
the same code the harness's `ddp_backward` runs), clips to 1.0, steps AdamW and the cosine
schedule.  Rank 0 writes `metrics.jsonl` (one JSON object per step: total/text/audio/per-codebook
loss, supervised-token counts, lr, sample ids), TensorBoard events under `tb/`, and atomic
checkpoints (`checkpoint-<step>/`: trainable weights + peft adapter, optimizer, scheduler,
sampler position, every rank's RNG state); `--resume` continues from the last complete checkpoint
of `--output-dir` (or `--resume DIR`: that run folder's last one, or that checkpoint folder).

Trust (`higgs_common.checkpoints`): every checkpoint stores the run's configuration (`run_config`)
and an integrity record; a resume with other settings stops naming each key unless
`--resume-override-config` (recorded in resume_overrides.jsonl), a corrupt newest checkpoint is
skipped by path, and a failed save (disk full) names the folder and the step.  Before training the
data audit (`higgs_common.audit`) runs on `--data`: warnings printed once, errors exit 2.
docs/data-and-resume.md describes both.

Crash safety: a checkpoint is written into `.checkpoint-<step>.tmp/` and renamed into place, so a
SIGKILL during a save leaves the previous checkpoints valid and the half-written folder ignored
(it is removed by the next save of that step).  Resuming restores the weights, AdamW and schedule
state, the sampler position and every RNG, so on CPU a killed-and-resumed run ends with weights
bit-identical to an uninterrupted one (tests/custom_impl/test_reliability_resume.py).

Guards (`higgs_common.guards`, called here in the loop, never in the loss math): a non-finite
loss or gradient, an audio loss of exactly 0.0 on a batch with target audio, or one codebook's loss
of exactly 0.0 (or no supervised frame) while the batch has target audio frames stops the run with
the step, the sample ids and the loss breakdown; a trainable parameter left without a gradient
(None) or with an exactly-zero one where it cannot be zero stops it naming the parameters, unless
`--allow-frozen-trainables`.  Bad samples raise a SampleError naming file, sample and field;
`--skip-bad-samples` leaves them out instead, logging each one and the count.  Without it the CLI
prints that one line and exits with status 2.

Speed switches (`custom_impl.speed`: gathered text head, length-grouped batches, index-based
dual FFN, per-layer torch.compile, ...) change how the step runs, not what it computes: on by
default on CUDA, `--speed SPEC` (or `$HIGGS_CUSTOM_SPEED`) sets them, e.g. `--speed none` for the
plain pipeline or `--speed default,-compile`; the run's choice is in run_config.json.

Warmup defaults to min(100, max_steps // 10): upstream's 100 warmup steps would leave a 20-step
smoke run at a tiny fraction of the learning rate, so it could not show learning.  The learning
rate defaults to upstream's 2e-4 for a real checkpoint and to 5e-3 for the embedded tiny random
model (LoRA on a 160k-parameter random model needs a larger step to move in 20 CPU steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

from custom_impl import collator as _collator
from custom_impl import dataset as _dataset
from custom_impl import model as _model
from custom_impl import speed as _speed
from custom_impl import speedups as _speedups
from custom_impl import stages as S
from custom_impl.length_grouping import grouped_batches, item_merged_length
from custom_impl.distributed import DistInfo, accumulate, setup, teardown, wrap
from custom_impl.faults import check_faults, help_text
from higgs_common import DEFAULT_MANIFEST
from higgs_common.audit import audit_before_training
from higgs_common.train_cli import (RESUME_LATEST, add_reliability_args, add_shared_train_args,
                                   check_shared_train_args, run_cli, speech_options)
from higgs_common.checkpoints import (NoUsableCheckpointError, apply_learning_rate, check_resume_config, save_errors,
                                      write_config, write_integrity)
from higgs_common.checkpoints import resolve_resume as resolve_checkpoint
from higgs_common.crashpoints import maybe_kill
from higgs_common.guards import (check_audio_loss_nonzero, check_codebook_losses_nonzero, check_grads_finite,
                                 check_grads_flow, supervised_frames_per_codebook)
from higgs_common.skipping import SkipLog
from higgs_common.stages import HiggsDiffError, LossBreakdown, TrainConfig

TINY_DEFAULT_LR = 5e-3
COPY_PROBE = "copy-probe"
CHECKPOINT_FILES = ("trainable.pt", "optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_rank0.pt")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m custom_impl.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="what the defaults train: the zero-shot voice-cloning task the harness compares (a voice prompt,\n"
               "its transcript, the target text -> the target audio), LoRA adapters, on the embedded tiny\n"
               "checkpoint and data/manifest.jsonl. Option names match python -m reference_impl.train\n"
               "(docs/training.md).\n\nfaults (off by default; --fault NAME, repeatable):\n" + help_text())
    add_shared_train_args(
        p, learning_rate_help=f"peak learning rate (default: {S.DEFAULT_TRAIN.learning_rate}, upstream's; embedded "
                              f"tiny model: {TINY_DEFAULT_LR})",
        warmup_help="linear warmup steps (default: min(100, max_steps // 10))",
        batch_size=2, grad_accum=2, max_steps=S.DEFAULT_TRAIN.max_steps,
        max_steps_help=f"optimizer steps (default: {S.DEFAULT_TRAIN.max_steps})", seed=0,
        output_dir=None, output_dir_help="run folder (default: runs/custom/<timestamp>)",
        data_help="ChatML JSON list, or a canonical manifest (*.jsonl, or a folder holding manifest.jsonl; "
                  f"converted into the run folder), or {COPY_PROBE!r} (the built-in copy-probe set, see "
                  "higgs_common.assets.copy_probe) (default: data/manifest.jsonl)",
        use_lora=True, lora_help="r, alpha and targets of custom_impl.stages.DEFAULT_TRAIN. --full-finetune: the "
                                 "tiny random model needs it to learn to copy its prompt, e.g. to reproduce "
                                 "reference-audio-as-label's collapse",
        lora_dropout=S.DEFAULT_TRAIN.lora_dropout)
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    add_reliability_args(p)
    p.add_argument("--fault", action="append", default=[], metavar="NAME", help="enable a named fault")
    p.add_argument("--cpu", action="store_true", help="stay on CPU even when CUDA is present")
    p.add_argument("--ddp-bucket-cap-mb", type=float, default=None,
                   help="DDP gradient bucket size in MB (default: torch's 25); see distributed.wrap")
    p.add_argument("--speed", default=None, metavar="SPEC",
                   help="speed switches, applied after the device defaults and $HIGGS_CUSTOM_SPEED: comma list of "
                        "default | none | all | [+-]NAME with NAME in " + ", ".join(_speed.SWITCHES)
                        + " (see custom_impl/speed.py)")
    p.add_argument("--allow-zero-audio-loss", action="store_true",
                   help="turn off the guard that stops on an audio loss of exactly 0.0 with target audio; only "
                        "to reproduce the historical loop (with --fault silent-zero-audio-loss the log then "
                        "shows audio 0.0 every step, as the original pipeline's logs did)")
    args = p.parse_args(argv)
    args.fault = sorted(check_faults(args.fault))
    check_shared_train_args(p, args)
    try:
        _speed.resolve("cpu", args.speed)
    except _speed.SpeedSpecError as exc:
        p.error(str(exc))
    return args


def train_config(args: argparse.Namespace, tiny: bool) -> TrainConfig:
    lr = args.learning_rate if args.learning_rate is not None else (TINY_DEFAULT_LR if tiny else S.DEFAULT_TRAIN.learning_rate)
    warmup = args.warmup_steps if args.warmup_steps is not None else min(100, args.max_steps // 10)
    return S.DEFAULT_TRAIN.replace(learning_rate=lr, warmup_steps=warmup, max_steps=args.max_steps,
                                   seed=args.seed, use_lora=args.use_lora, lora_dropout=args.lora_dropout)


def resolve_data(data: Path | None, out_dir: Path, write: bool) -> Path:
    """`--data` -> the ChatML JSON file to load.

    None, a canonical manifest (``*.jsonl``, or a folder holding ``manifest.jsonl``) or the name
    ``copy-probe`` are converted into `<out_dir>/train_chatml.json` (written by the caller with
    `write`, i.e. rank 0); any other path is a ChatML JSON list used as it is.  A folder without
    ``manifest.jsonl`` is a ManifestError naming the folder.
    """
    from higgs_common.converters import write_chatml_json
    from higgs_common.manifest import load_manifest, resolve_manifest

    if _is_copy_probe(data):
        from higgs_common.assets.copy_probe import ensure_copy_probe
        manifest = ensure_copy_probe() if write else None
    elif data is not None and data.is_dir():
        manifest = resolve_manifest(data)
    elif data is None or data.suffix == ".jsonl":
        manifest = data or DEFAULT_MANIFEST
    else:
        return data
    native = out_dir / S.NATIVE_FILE
    if write:
        write_chatml_json(load_manifest(manifest), native)
    return native


def _is_copy_probe(data: Path | None) -> bool:
    return data is not None and str(data) == COPY_PROBE and not data.exists()


def _audit_target(data: Path | None) -> Path:
    """What the data audit reads for `--data`: the copy-probe's manifest (built on first use), the
    default manifest, or the path as given (manifest, folder or ChatML JSON)."""
    if _is_copy_probe(data):
        from higgs_common.assets.copy_probe import ensure_copy_probe

        return ensure_copy_probe()
    return data if data is not None else DEFAULT_MANIFEST


# ------------------------------------------------------------------------------ data stream
def batch_stream(n_items: int, info: DistInfo, batch_size: int, seed: int, start_epoch: int,
                 start_batch: int, lengths: Sequence[int] | None = None) -> Iterator[tuple[int, int, list[int]]]:
    """(epoch, batch index in epoch, item indices) forever; each epoch reshuffled by the sampler.

    With `lengths` (merged length per item) the batches are length-grouped
    (`length_grouping.grouped_batches`), else DistributedSampler's shard cut in order.
    """
    sampler = DistributedSampler(range(n_items), num_replicas=info.world_size, rank=info.rank,
                                 shuffle=True, seed=seed, drop_last=True)
    epoch = start_epoch
    skip = start_batch
    while True:
        if lengths is not None:
            batches = grouped_batches(lengths, batch_size, world_size=info.world_size, rank=info.rank, seed=seed,
                                      epoch=epoch)
        else:
            sampler.set_epoch(epoch)
            idx = list(sampler)
            batches = [idx[i:i + batch_size] for i in range(0, len(idx) - batch_size + 1, batch_size)]
        if not batches:
            raise ValueError(f"{n_items} samples over {info.world_size} ranks cannot fill a batch of {batch_size}")
        for b in range(skip, len(batches)):
            yield epoch, b, batches[b]
        skip = 0
        epoch += 1


# ------------------------------------------------------------------------------ checkpoints
def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def save_checkpoint(out_dir: Path, step: int, model, optimizer, scheduler, position: dict[str, int],
                    info: DistInfo, train: TrainConfig, config: dict[str, Any] | None = None) -> Path:
    """Write checkpoint-<step>/ atomically: everything goes into a temp dir renamed at the end.

    `config` (the run's effective configuration, `run_config`) is stored as
    `higgs_common.checkpoints.CONFIG_FILE`; the integrity record (size + SHA-256 of every file) is
    written last.  A write failure (disk full, permissions) raises CheckpointSaveError naming the
    folder and the step; the temp dir is removed and the previous checkpoints are untouched.
    """
    final = out_dir / f"checkpoint-{step}"
    tmp = out_dir / f".checkpoint-{step}.tmp"
    previous = last_complete_checkpoint(out_dir)
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        with save_errors(final, step, previous=previous, cleanup=tmp):
            tmp.mkdir(parents=True)
    barrier(info)
    with save_errors(final, step, previous=previous, cleanup=tmp):
        torch.save(rng_state(), tmp / f"rng_rank{info.rank}.pt")
    barrier(info)
    if info.is_main:
        with save_errors(final, step, previous=previous, cleanup=tmp):
            _write_checkpoint_files(tmp, step, model, optimizer, scheduler, position, info, train, config)
        maybe_kill("in_save", step)     # test hook: SIGKILL with the checkpoint half written
        old = out_dir / f".checkpoint-{step}.old"
        if final.exists():              # re-saving a step (after resuming from an earlier one)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    barrier(info)
    return final


def _write_checkpoint_files(tmp: Path, step: int, model, optimizer, scheduler, position: dict[str, int],
                            info: DistInfo, train: TrainConfig, config: dict[str, Any] | None) -> None:
    inner = _model.unwrap(model)
    torch.save({n: p.detach().cpu() for n, p in _model.trainable_named_parameters(model)}, tmp / "trainable.pt")
    if hasattr(inner, "save_pretrained") and train.use_lora:
        inner.save_pretrained(tmp / "adapter")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(
        {"step": step, "world_size": info.world_size, **position, "train": dataclasses.asdict(train)},
        indent=2))
    if config is not None:
        write_config(tmp, config)
    write_integrity(tmp)


def is_complete_checkpoint(path: Path) -> bool:
    """A `checkpoint-<step>` folder holding every file a resume needs (temp folders never match)."""
    return path.is_dir() and path.name.startswith("checkpoint-") and path.name[11:].isdigit() and all(
        (path / f).is_file() for f in CHECKPOINT_FILES)


def last_complete_checkpoint(run_dir: Path) -> Path | None:
    """The highest-step complete checkpoint in `run_dir`, or None."""
    done = [p for p in Path(run_dir).glob("checkpoint-*") if is_complete_checkpoint(p)]
    return max(done, key=lambda p: int(p.name[11:])) if done else None


def resolve_resume(resume: Path, out_dir: Path) -> Path:
    """`--resume` value -> checkpoint folder: the newest complete one that verifies
    (`higgs_common.checkpoints.resolve_resume`; NoUsableCheckpointError when there is none)."""
    return resolve_checkpoint(out_dir if resume == RESUME_LATEST else Path(resume), is_complete=is_complete_checkpoint)


# Options that steer where and how often the run writes, not what it computes: not compared on resume.
RUN_CONTROL_ARGS = frozenset({"resume", "resume_override_config", "output_dir", "save_every"})
# Options whose effect is in TrainConfig (compared there, after defaults are resolved).
TRAIN_ARGS = frozenset({"learning_rate", "warmup_steps", "max_steps", "seed", "use_lora", "lora_dropout"})


def run_config(args: argparse.Namespace, train: TrainConfig, info: DistInfo) -> dict[str, Any]:
    """The effective configuration stored in every checkpoint and compared on resume: the resolved
    TrainConfig, every other option except RUN_CONTROL_ARGS, and the world size."""
    options = {k: v for k, v in vars(args).items() if k not in RUN_CONTROL_ARGS | TRAIN_ARGS}
    return {"train": dataclasses.asdict(train), "args": options, "world_size": info.world_size}


def load_checkpoint(path: Path, model, optimizer, scheduler, info: DistInfo) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG from checkpoint `path`; returns its
    trainer_state.json.  A file that does not load (a checkpoint older than the integrity record)
    is a NoUsableCheckpointError naming it, not a torch traceback."""
    try:
        return _load_checkpoint(path, model, optimizer, scheduler, info)
    except (OSError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError, json.JSONDecodeError) as exc:
        raise NoUsableCheckpointError(f"--resume: checkpoint {str(path)!r} does not load: {type(exc).__name__}: "
                                      f"{exc}") from exc


def _load_checkpoint(path: Path, model, optimizer, scheduler, info: DistInfo) -> dict[str, Any]:
    state = json.loads((path / "trainer_state.json").read_text())
    if state["world_size"] != info.world_size:
        raise ValueError(f"{path} was written by {state['world_size']} processes, this run has {info.world_size}")
    weights = torch.load(path / "trainable.pt")
    params = dict(_model.trainable_named_parameters(model))
    if set(weights) != set(params):
        raise ValueError(f"{path}: trainable parameter names differ from this model's")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n].to(p.device))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt"))
    set_rng_state(torch.load(path / f"rng_rank{info.rank}.pt", weights_only=False))
    return state


# ------------------------------------------------------------------------------ logging
def reduce_mean(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    if info.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t.cpu().tolist()


def weight_checksum(model: torch.nn.Module) -> float:
    """Sum of |w| * (1 + index) over trainable tensors: cheap, order-sensitive fingerprint."""
    total = 0.0
    for k, (_, p) in enumerate(_model.trainable_named_parameters(model)):
        total += float(p.detach().double().abs().sum()) * (1 + k)
    return total


def step_record(model: torch.nn.Module, step: int, lbs: list[LossBreakdown], lr: float, grad_norm: float, ids: list[str],
                info: DistInfo, device: torch.device, wall: float) -> dict[str, Any]:
    n = len(lbs)
    n_cb = max(lb.per_codebook.numel() for lb in lbs)
    local = [sum(float(lb.total.detach()) for lb in lbs) / n, sum(float(lb.text) for lb in lbs) / n,
             sum(float(lb.audio) for lb in lbs) / n]
    cb = [sum(float(lb.per_codebook[c]) for lb in lbs if lb.per_codebook.numel() > c) / n for c in range(n_cb)]
    counts = [float(sum(lb.text_supervised_tokens for lb in lbs)), float(sum(lb.audio_supervised_tokens for lb in lbs))]
    vals = reduce_mean(local + cb, info, device)
    tot = reduce_mean(counts, info, device)
    notes = sorted({note for lb in lbs for note in lb.notes})
    # Every rank's weight checksum: DDP must keep them identical; a fault that skips the
    # all-reduce (ddp-unwrapped-forward, inverted-no-sync) shows up here as different numbers.
    wsum = torch.tensor([weight_checksum(model)], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    if info.world_size > 1:
        gathered = [torch.zeros_like(wsum) for _ in range(info.world_size)]
        dist.all_gather(gathered, wsum)
        rank_sums = [float(g) for g in gathered]
    else:
        rank_sums = [float(wsum)]
    return {"step": step, "loss": vals[0], "text_loss": vals[1], "audio_loss": vals[2],
            "per_codebook": vals[3:], "text_tokens": int(round(tot[0] * info.world_size)),
            "audio_tokens": int(round(tot[1] * info.world_size)),
            "has_target_audio": all(lb.has_target_audio for lb in lbs), "lr": lr, "grad_norm": grad_norm,
            "rank0_sample_ids": ids, "world_size": info.world_size, "notes": notes, "wall_s": wall,
            "rank_weight_checksums": rank_sums}


# ------------------------------------------------------------------------------ main
def run(args: argparse.Namespace) -> Path:
    info = setup(prefer_cuda=not args.cpu)
    try:
        return _run(args, info)
    finally:
        teardown(info)


def _run(args: argparse.Namespace, info: DistInfo) -> Path:
    from higgs_common.context import build_context  # lazy: heavy (builds the tiny default once)

    tiny = args.model_path is None
    out_dir = args.output_dir or Path("runs/custom") / time.strftime("%Y%m%d-%H%M%S")
    if info.world_size > 1:  # every rank must agree on a default output dir
        holder = [str(out_dir)]
        dist.broadcast_object_list(holder, src=0)
        out_dir = Path(holder[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    train = train_config(args, tiny)
    torch.manual_seed(args.seed + info.rank)
    random.seed(args.seed + info.rank)
    np.random.seed(args.seed + info.rank)

    # Rank 0 first: it builds the tiny default assets and fills the code cache; others reuse them.
    ctx = None
    for turn in (0, 1):
        if (turn == 0) == info.is_main:
            ctx = build_context(args.model_path, args.audio_tokenizer_path, device=str(info.device),
                                faults=tuple(args.fault), seed=args.seed,
                                options={"max_audio_seconds": args.max_audio_seconds, **speech_options(args)})
            audit_before_training(_audit_target(args.data), prog="custom_impl.train", options=ctx.options,
                                  tokenizer=ctx.text_tokenizer, min_samples=ctx.code_cache.min_samples,
                                  quiet=not info.is_main)
            data = resolve_data(args.data, out_dir, write=info.is_main)
            skip_log = SkipLog(where=f"custom dataset {data}")
            items = _dataset.load_dataset(data, ctx, skip_bad_samples=args.skip_bad_samples, skip_log=skip_log)
        barrier(info)
    if info.is_main and args.skip_bad_samples:
        print(skip_log.summary(), file=sys.stderr, flush=True)
        (out_dir / "skipped_samples.json").write_text(json.dumps(skip_log.to_json(), indent=2) + "\n")

    speed = _speed.resolve(info.device, args.speed)
    model = S.build_model(ctx, train)
    speed_report = _speedups.apply(model, speed)
    model = wrap(model, info, bucket_cap_mb=args.ddp_bucket_cap_mb)
    optimizer, scheduler = S.make_optimizer(model, train)
    start_step, position = 0, {"epoch": 0, "batch": 0}
    config = run_config(args, train, info)
    overrides: list = []
    if args.resume is not None:
        ckpt = resolve_resume(args.resume, out_dir)
        overrides = check_resume_config(ckpt, config, override=args.resume_override_config, run_dir=out_dir,
                                        record=info.is_main)
        state = load_checkpoint(ckpt, model, optimizer, scheduler, info)
        apply_learning_rate(optimizer, scheduler, train.learning_rate)   # this run's rate, not the stored one
        start_step, position = state["step"], {"epoch": state["epoch"], "batch": state["batch"]}
        if info.is_main:
            print(f"resuming from {ckpt} (step {start_step})", file=sys.stderr, flush=True)
            _truncate_metrics(out_dir / "metrics.jsonl", start_step)

    writer = None
    metrics_fh = None
    bar = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm
        writer = SummaryWriter(str(out_dir / "tb"))
        metrics_fh = (out_dir / "metrics.jsonl").open("a", encoding="utf-8")
        bar = tqdm(total=train.max_steps, initial=start_step, desc="custom train", file=sys.stderr)
        (out_dir / "run_config.json").write_text(json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "world_size": info.world_size,
             "effective_config": S.effective_config(ctx, train), "run_config": config,
             "resume_overrides": [{"key": k, "old": a, "new": b} for k, a, b in overrides],
             "speed": {"switches": speed.to_json(), "applied": speed_report}}, indent=2, default=str))

    lengths = [item_merged_length(it.sample, ctx.model_config) for it in items] if speed.group_by_length else None
    stream = batch_stream(len(items), info, args.batch_size, args.seed, position["epoch"], position["batch"], lengths)
    model.train()
    restore_settings = _speedups.enter_process_settings(speed)   # undone in the finally below
    try:
        for step in range(start_step + 1, train.max_steps + 1):
            t0 = time.perf_counter()
            micro_idx = []
            for _ in range(args.grad_accum):
                epoch, b, idx = next(stream)
                micro_idx.append(idx)
            position = {"epoch": epoch, "batch": b + 1}
            micro_items = [[items[i] for i in idx] for idx in micro_idx]
            batches = [_collator.batch_to_device(S.collate(m, ctx), info.device) for m in micro_items]
            ids = [[it.sample_id for it in m] for m in micro_items]
            lbs = accumulate(model, batches, ctx, precision=train.precision, step=step, sample_ids=ids)
            flat_ids = [i for g in ids for i in g]
            for lb, mids, batch in zip(lbs, ids, batches):
                if args.allow_zero_audio_loss:
                    break
                check_audio_loss_nonzero(float(lb.audio), has_target_audio=lb.has_target_audio, step=step,
                                         sample_ids=mids, losses=_loss_terms(lb))
                check_codebook_losses_nonzero(
                    lb.per_codebook.tolist(), supervised_frames_per_codebook(getattr(batch, "label_audio_ids", None)),
                    has_target_audio=lb.has_target_audio, step=step, sample_ids=mids, losses=_loss_terms(lb))
            check_grads_finite(_model.trainable_named_parameters(model), step=step, sample_ids=flat_ids,
                               losses=_loss_terms(lbs[-1]))
            if not args.allow_frozen_trainables:
                check_grads_flow(_model.trainable_named_parameters(model), step=step, sample_ids=flat_ids,
                                 losses=_loss_terms(lbs[-1]))
            params = [p for _, p in _model.trainable_named_parameters(model)]
            lr = optimizer.param_groups[0]["lr"]
            grad_norm = S.optimizer_update(params, optimizer, scheduler, train)
            rec = step_record(model, step, lbs, lr, grad_norm, [i for g in ids for i in g], info, info.device,
                              time.perf_counter() - t0)
            if info.is_main:
                metrics_fh.write(json.dumps(rec) + "\n")
                metrics_fh.flush()
                writer.add_scalar("loss/total", rec["loss"], step)
                writer.add_scalar("loss/text", rec["text_loss"], step)
                writer.add_scalar("loss/audio", rec["audio_loss"], step)
                for c, v in enumerate(rec["per_codebook"]):
                    writer.add_scalar(f"loss/audio_cb{c}", v, step)
                writer.add_scalar("lr", lr, step)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", text=f"{rec['text_loss']:.3f}",
                                audio=f"{rec['audio_loss']:.3f}")
                bar.update(1)
                cbs = " ".join(f"{v:.3f}" for v in rec["per_codebook"])
                print(f"step {step}: loss {rec['loss']:.4f} text {rec['text_loss']:.4f} "
                      f"audio {rec['audio_loss']:.4f} [cb {cbs}] audio_tokens {rec['audio_tokens']} lr {lr:.2e}",
                      file=sys.stderr, flush=True)
            maybe_kill("after_step", step)   # test hook: SIGKILL between a step and its save
            if (args.save_every and step % args.save_every == 0) or step == train.max_steps:
                save_checkpoint(out_dir, step, model, optimizer, scheduler, position, info, train, config)
    except HiggsDiffError as exc:
        if info.is_main and metrics_fh is not None:
            metrics_fh.write(json.dumps({"event": "error", "step": step, "error": type(exc).__name__,
                                         "message": str(exc)}) + "\n")
            metrics_fh.flush()
        raise
    finally:
        restore_settings()
        if info.is_main:
            bar.close()
            writer.close()
            metrics_fh.close()
    if info.is_main and args.skip_bad_samples:
        print(skip_log.summary(), file=sys.stderr, flush=True)   # the count again, at the very end
    return out_dir


def _loss_terms(lb: LossBreakdown) -> dict[str, float]:
    """The breakdown a guard error prints: total, text, audio, per codebook, supervised counts."""
    terms = {"total": float(lb.total.detach()), "text": float(lb.text), "audio": float(lb.audio)}
    terms.update({f"cb{i}": float(v) for i, v in enumerate(lb.per_codebook.tolist())})
    terms.update(text_tokens=float(lb.text_supervised_tokens), audio_tokens=float(lb.audio_supervised_tokens))
    return terms


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines past the resumed checkpoint (steps the killed run did after its last save)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step and "event" not in json.loads(line)]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI: 0 when training finished, 2 for bad input (one line naming sample, field and file)."""
    args = parse_args(argv)

    def body() -> None:
        out = run(args)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"run folder: {out}", file=sys.stderr)
    return run_cli("custom_impl.train", body)


if __name__ == "__main__":
    sys.exit(main())
