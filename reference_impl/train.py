"""`python -m reference_impl.train`: the train-higgs-audio training run (HF Trainer, optional LoRA).

With no arguments it trains on the embedded default: the tiny offline checkpoint and codec
(`higgs_common.context.build_context()`) and the shipped `data/manifest.jsonl`, converted into a
reference metadata folder under `<output-dir>/data`.  Real paths: `--model-path`,
`--audio-tokenizer-path`, and either `--data-dir` (a reference metadata folder) or `--data` (a
canonical manifest, or a folder holding `manifest.jsonl`, converted like the default).  Multi-process: `torchrun --nproc_per_node N -m
reference_impl.train ...` (HF Trainer handles DDP, `ddp_find_unused_parameters=True`).

Defaults are the reference's (`reference_impl.trainer`), with ONE documented deviation, applied
only when training the embedded tiny model (no --model-path): learning rate 1e-3 and warmup 0
(`TINY_DEFAULTS`).  Why: the reference's 5e-5 with 100 warmup steps reaches only 1e-5 by step 20,
which leaves the random-init tiny model's loss indistinguishable from batch-to-batch noise, so a
20-step smoke run could not show learning.  Pass --learning-rate/--warmup-steps to override.
On CPU training runs in fp32 (bf16 is GPU-only).  On CUDA it runs as the reference is configured,
bf16 weights under the Trainer's bf16 autocast: `HiggsAudioModelWithLoss` carries the reference's
dtype fix of the audio-out embedding merge (`reference_impl.audio_merge`); `--no-autocast` still
turns autocast off.

Reliability: `--resume [DIR]` continues from the last *complete* checkpoint of
`--output-dir` (or of DIR; DIR may also be a checkpoint folder) through the Trainer's
`resume_from_checkpoint` (weights, optimizer, scheduler, RNG, data position); half-written
checkpoints left by a killed save are removed first (see `reference_impl.trainer`).  Bad samples
raise a SampleError naming the file, sample and field, and every sample is built once before
training starts (`ReferenceDataset(validate=True)`), so the run stops with one line and exit
status 2 before the first step; `--skip-bad-samples` leaves them out instead, logging each and the
count.  Every checkpoint also stores the run's configuration (`run_config`) and an integrity record
(`higgs_common.checkpoints`): a resume with other settings stops naming each key unless
`--resume-override-config`, a corrupt newest checkpoint is skipped by path, and a failed save (disk
full) names the folder and the step.  Before the data is converted the data audit
(`higgs_common.audit`) runs on it: warnings printed once, errors exit 2 (docs/data-and-resume.md).
`--allow-default-ref-transcript` /
`--allow-missing-ref-audio` re-enable the reference's silent zero-shot fallbacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from transformers import TrainerCallback

from reference_impl import trainer as tr
from reference_impl.collator import ExtendedHiggsAudioSampleCollator
from higgs_common import DEFAULT_MANIFEST
from higgs_common.audit import audit_before_training
from higgs_common.checkpoints import check_resume_config, save_errors
from higgs_common.checkpoints import resolve_resume as resolve_checkpoint
from higgs_common.manifest import MANIFEST_NAME
from higgs_common.train_cli import (RESUME_LATEST, add_reliability_args, add_shared_train_args,
                                   check_shared_train_args, run_cli)
from reference_impl.dataset import TASK_TYPES, ReferenceDataset

logger = logging.getLogger("reference_impl.train")

DEFAULT_OUTPUT_DIR = Path("runs") / "reference" / "default"
TINY_DEFAULTS = {"learning_rate": 1e-3, "warmup_steps": 0}


class StepLogCallback(TrainerCallback):
    """Writes each logged step (loss, text loss, audio loss, lr) to the log and `metrics.jsonl`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._step_started = 0.0
        self._step_seconds: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        # Optimizer step included; the loss logging that follows syncs the GPU anyway.
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._step_seconds = time.perf_counter() - self._step_started

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        if self._step_seconds is not None:
            logs = {**logs, "step_seconds": self._step_seconds}
        logger.info("step %d/%d  loss %.4f  text %.4f  audio %.4f  lr %.3g", state.global_step, state.max_steps,
                    logs["loss"], logs.get("llm_loss", float("nan")), logs.get("audio_loss", float("nan")),
                    logs.get("learning_rate", float("nan")))
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from reference_impl.stages import HARNESS_TASK_TYPE

    d = tr.DEFAULT_TRAIN
    c = tr.CLI_DEFAULTS
    p = argparse.ArgumentParser(
        prog="python -m reference_impl.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"what the defaults train: the reference's own default task, --task-type {c.task_type} (one "
               f"speaker,\nno voice prompt), with full fine-tuning (train-higgs-audio's LoRA is opt-in: --use-lora), "
               f"on the\nembedded tiny checkpoint and data/manifest.jsonl. The harness (python -m harness.compare) "
               f"compares\nthe zero-shot voice-cloning task: add --task-type {HARNESS_TASK_TYPE} --use-lora to train "
               f"what it\ncompares. Option names match python -m custom_impl.train (docs/training.md).")
    add_shared_train_args(
        p, learning_rate_help=f"peak learning rate (default: {d.learning_rate}, the reference's; embedded tiny model: "
                              f"{TINY_DEFAULTS['learning_rate']})",
        warmup_help=f"linear warmup steps (default: {d.warmup_steps}; embedded tiny model: "
                    f"{TINY_DEFAULTS['warmup_steps']})",
        batch_size=c.per_device_train_batch_size, max_steps=None,
        max_steps_help="optimizer steps; overrides --num-train-epochs (default: epochs decide)",
        seed=c.seed, output_dir=DEFAULT_OUTPUT_DIR, output_dir_help=f"run folder (default: {DEFAULT_OUTPUT_DIR})",
        data_help="canonical manifest (*.jsonl) or a folder holding manifest.jsonl, converted into <output-dir>/data "
                  "(default: data/manifest.jsonl)",
        use_lora=c.use_lora, lora_help=f"r {d.lora_r}, alpha {d.lora_alpha}, on the reference's target modules",
        lora_dropout=d.lora_dropout)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="a reference metadata folder (metadata.json) used as is, instead of --data")
    p.add_argument("--task-type", choices=TASK_TYPES, default=c.task_type,
                   help=f"the reference's task (default: {c.task_type}; the harness compares {HARNESS_TASK_TYPE})")
    p.add_argument("--num-train-epochs", type=float, default=c.num_train_epochs)
    p.add_argument("--logging-steps", type=int, default=1, help="reference DDP script: 10; 1 shows every step")
    p.add_argument("--save-steps", type=int, default=c.save_steps)
    p.add_argument("--lora-rank", type=int, default=d.lora_r)
    p.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    p.add_argument("--report-to", default=c.report_to, help="tensorboard | none")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--no-autocast", action="store_true",
                   help="keep the bf16 weights but turn the Trainer's bf16 autocast off (not needed since the "
                        "reference's audio-out merge dtype fix is applied; docs/training.md)")
    add_reliability_args(p)
    p.add_argument("--allow-default-ref-transcript", action="store_true",
                   help="QUIRK: a zero-shot sample without ref_transcript gets the reference's default sentence")
    p.add_argument("--allow-missing-ref-audio", action="store_true",
                   help="QUIRK: a zero-shot sample without ref_audio_file silently trains as single-speaker")
    args = p.parse_args(argv)
    check_shared_train_args(p, args)
    if args.data_dir is not None and args.data is not None:
        p.error("--data-dir and --data are alternatives: give one")
    return args


def resolve_resume(resume: Path, output_dir: Path) -> Path:
    """`--resume` value -> the newest complete checkpoint folder that verifies
    (`higgs_common.checkpoints.resolve_resume`; NoUsableCheckpointError when there is none)."""
    target = output_dir if resume == RESUME_LATEST else Path(resume).resolve()
    return resolve_checkpoint(target, is_complete=tr.is_complete_checkpoint)


# Options that steer where and how often the run writes or logs, not what it computes: not compared on resume.
RUN_CONTROL_ARGS = frozenset({"resume", "resume_override_config", "output_dir", "save_steps", "logging_steps",
                              "report_to"})
# Options whose effect is in TrainConfig (compared there, after defaults are resolved).
TRAIN_ARGS = frozenset({"learning_rate", "warmup_steps", "max_steps", "seed", "use_lora", "lora_rank", "lora_alpha",
                        "lora_dropout"})


def run_config(args: argparse.Namespace, train: Any, precision: str) -> dict[str, Any]:
    """The effective configuration stored in every checkpoint and compared on resume: the resolved
    TrainConfig, the precision, every other option except RUN_CONTROL_ARGS, and the world size."""
    options = {k: v for k, v in vars(args).items() if k not in RUN_CONTROL_ARGS | TRAIN_ARGS}
    return {"train": dataclasses.asdict(train), "precision": precision, "args": options,
            "world_size": int(os.environ.get("WORLD_SIZE", "1"))}


def _setup_logging(output_dir: Path, append: bool = False) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(output_dir / "train.log", mode="a" if append else "w")):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def _local_device(requested: Optional[str]) -> torch.device:
    import os

    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Train; returns a summary (first/final loss, wall time, paths), also written to summary.json."""
    from higgs_common.context import build_context
    from reference_impl.model import HiggsAudioModelWithLoss

    started = time.perf_counter()
    args = parse_args(argv)
    output_dir = args.output_dir.resolve()
    _setup_logging(output_dir, append=args.resume is not None)
    device = _local_device(args.device)
    ctx = build_context(args.model_path, args.audio_tokenizer_path, device=device, seed=args.seed)
    tiny = args.model_path is None
    lr = args.learning_rate if args.learning_rate is not None else (
        TINY_DEFAULTS["learning_rate"] if tiny else tr.DEFAULT_TRAIN.learning_rate)
    warmup = args.warmup_steps if args.warmup_steps is not None else (
        TINY_DEFAULTS["warmup_steps"] if tiny else tr.DEFAULT_TRAIN.warmup_steps)
    train = tr.DEFAULT_TRAIN.replace(learning_rate=lr, warmup_steps=warmup, seed=args.seed, use_lora=args.use_lora,
                                     lora_r=args.lora_rank, lora_alpha=args.lora_alpha,
                                     lora_dropout=args.lora_dropout,
                                     max_steps=args.max_steps if args.max_steps is not None else -1)
    precision = tr.effective_precision(train, device)
    logger.info("model %s | codec %s | device %s | precision %s | lr %g | warmup %d | lora %s | task %s",
                ctx.model_path, ctx.audio_tokenizer_path, device, precision, lr, warmup, args.use_lora,
                args.task_type)

    # The data audit's own checks (higgs_common.audit): warnings printed once, errors stop here (exit 2).
    audit_before_training(args.data_dir or args.data or DEFAULT_MANIFEST, prog="reference_impl.train",
                          tokenizer=ctx.text_tokenizer,
                          options={"max_audio_seconds": args.max_audio_seconds,
                                   "speech_floor_dbfs": args.speech_floor_dbfs,
                                   "allow_no_speech": args.allow_no_speech},
                          min_samples=ctx.code_cache.min_samples, quiet=int(os.environ.get("RANK", "0")) != 0)
    data_dir, manifest = args.data_dir, args.data
    if data_dir is not None and not (data_dir / "metadata.json").is_file() and (data_dir / MANIFEST_NAME).is_file():
        logger.info("%s has no metadata.json but a %s: converting that manifest", data_dir, MANIFEST_NAME)
        data_dir, manifest = None, data_dir
    if data_dir is None:
        from higgs_common.converters import write_reference_folder
        from higgs_common.manifest import load_manifest

        data_dir = write_reference_folder(load_manifest(manifest or DEFAULT_MANIFEST), output_dir / "data")
    # validate=True: every sample is built now, so bad input stops the run before training starts.
    train_dataset = ReferenceDataset(data_dir, ctx.text_tokenizer, ctx.code_cache, task_type=args.task_type,
                                     max_audio_seconds=args.max_audio_seconds,
                                     speech_floor_dbfs=args.speech_floor_dbfs, allow_no_speech=args.allow_no_speech,
                                     allow_default_ref_transcript=args.allow_default_ref_transcript,
                                     allow_missing_ref_audio=args.allow_missing_ref_audio,
                                     skip_bad_samples=args.skip_bad_samples, validate=True)

    torch.manual_seed(args.seed)
    model = HiggsAudioModelWithLoss.from_pretrained(str(ctx.model_path), torch_dtype=tr.torch_dtype(precision))
    model.to(device)
    if args.use_lora:
        model = tr.apply_lora(model, train)
        model.print_trainable_parameters()

    config = run_config(args, train, precision)
    training_args = tr.build_training_args(
        train, output_dir, device=device, per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.num_train_epochs, max_steps=args.max_steps, logging_steps=args.logging_steps,
        save_steps=args.save_steps, report_to=[] if args.report_to == "none" else args.report_to,
        logging_dir=output_dir / "tensorboard")
    if args.no_autocast and training_args.bf16:
        # TrainingArguments already told accelerate "bf16" through the environment: undo both.
        os.environ["ACCELERATE_MIXED_PRECISION"] = "no"
        training_args = dataclasses.replace(training_args, bf16=False)
    training_args = tr.one_gpu_outside_torchrun(training_args)   # a replace() above rebuilds the devices
    trainer = tr.HiggsAudioTrainer(
        model=model, args=training_args, train_dataset=train_dataset, processing_class=ctx.text_tokenizer,
        data_collator=ExtendedHiggsAudioSampleCollator.from_config(ctx.model_config, ctx.text_tokenizer),
        callbacks=[StepLogCallback(output_dir / "metrics.jsonl")], allow_frozen_trainables=args.allow_frozen_trainables,
        run_config=config)
    resume_from = None
    overrides: list = []
    if args.resume is not None:
        if trainer.is_world_process_zero():   # half-written folders would count in the Trainer's rotation
            tr.remove_incomplete_checkpoints(output_dir)
        trainer.accelerator.wait_for_everyone()
        resume_from = resolve_resume(args.resume, output_dir)
        overrides = check_resume_config(resume_from, config, override=args.resume_override_config,
                                        run_dir=output_dir, record=trainer.is_world_process_zero())
        logger.info("resuming from %s", resume_from)
        _truncate_metrics(output_dir / "metrics.jsonl", int(resume_from.name.split("-")[-1]))
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)

    summary: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        # the final model beside the checkpoints: a full disk here names the folder, the checkpoints stay
        with save_errors(output_dir, trainer.state.global_step, previous=tr.last_complete_checkpoint(output_dir)):
            trainer.save_model(str(output_dir))
            adapters = tr.save_lora_adapters(trainer.model, output_dir)
        steps = [h for h in trainer.state.log_history if "loss" in h]
        summary = {
            "output_dir": str(output_dir), "data_dir": str(data_dir), "model_path": str(ctx.model_path),
            "steps": trainer.state.global_step, "learning_rate": lr, "warmup_steps": warmup,
            "precision": precision, "use_lora": args.use_lora, "task_type": args.task_type,
            "first_loss": steps[0]["loss"] if steps else math.nan,
            "final_loss": steps[-1]["loss"] if steps else math.nan,
            "lora_adapters": str(adapters) if adapters else None,
            "wall_time_s": round(time.perf_counter() - started, 2),
            "resumed_from": str(resume_from) if resume_from is not None else None,
            "resume_overrides": [{"key": k, "old": a, "new": b} for k, a, b in overrides],
            "skipped_samples": train_dataset.skip_log.to_json(),
        }
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        logger.info("done in %.1f s: loss %.4f -> %.4f; saved to %s", summary["wall_time_s"],
                    summary["first_loss"], summary["final_loss"], output_dir)
    if args.skip_bad_samples:
        logger.warning("%s", train_dataset.skip_log.summary())   # the count again, at the very end
    return summary


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines past the resumed checkpoint (steps the killed run did after its last save)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: 0 when training finished, 2 for bad input (one line naming sample, field, file)."""
    return run_cli("reference_impl.train", lambda: main(argv))


if __name__ == "__main__":
    sys.exit(cli())
