"""Command-line options both training CLIs share, declared once so they stay identical.

(`reference_impl.train` and `custom_impl.train` differ in everything that is a recipe; resuming,
input safety and bad-sample handling are the project's own behaviour and must read the same.
`harness.compare` takes the speech-floor options from here too.)

Exit status of the training CLIs (`run_cli`): 0 done, 2 bad input (a `SampleError`: one line
naming the error, the sample, the field and the file, no traceback) or a resume that cannot go on
(settings differ from the checkpoint's, no loadable checkpoint: `higgs_common.checkpoints`), 1 a
checkpoint that could not be written (disk full, permissions: one line naming the folder and the
step).  Anything else (a training guard stopping the run, a bug) propagates as before.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from higgs_common.checkpoints import (OVERRIDE_FLAG, OVERRIDES_FILE, CheckpointError, CheckpointSaveError,
                                      NoUsableCheckpointError, ResumeConfigError)
from higgs_common.errors import SampleError
from higgs_common.input_limits import DEFAULT_MAX_AUDIO_SECONDS, DEFAULT_SPEECH_FLOOR_DBFS

# `--resume` with no value: the last complete checkpoint of --output-dir.
RESUME_LATEST = Path("<latest>")
EXIT_OK, EXIT_SAVE_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def add_shared_train_args(p: argparse.ArgumentParser, *, learning_rate_help: str, warmup_help: str,
                          batch_size: int, max_steps: int | None, max_steps_help: str, seed: int,
                          output_dir: Path | None, output_dir_help: str, data_help: str, use_lora: bool,
                          lora_help: str, lora_dropout: float, grad_accum: int | None = None) -> None:
    """The options both training CLIs share, under one name each (the other spelling is an alias).

    Destinations: model_path, audio_tokenizer_path, data, learning_rate, batch_size, grad_accum (only
    when `grad_accum` is given: the reference recipe has no gradient accumulation), warmup_steps,
    max_steps, seed, output_dir, use_lora, lora_dropout.  Defaults and their meaning are each CLI's own,
    hence the keyword arguments; `--use-lora` and `--full-finetune` set `use_lora` either way, the
    default being `use_lora`.  `check_shared_train_args` refuses values out of range.
    """
    g = p.add_argument_group("training settings shared by both training CLIs")
    g.add_argument("--model-path", type=Path, default=None,
                   help="checkpoint folder (HiggsAudioModel + text tokenizer; default: the embedded tiny one)")
    g.add_argument("--audio-tokenizer-path", type=Path, default=None,
                   help="audio tokenizer folder (config.json + model.pth; default: the embedded tiny one)")
    g.add_argument("--data", type=Path, default=None, help=data_help)
    g.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float, default=None, metavar="LR",
                   help=learning_rate_help)
    g.add_argument("--batch-size", "--per-device-train-batch-size", dest="batch_size", type=int,
                   default=batch_size, metavar="N",
                   help=f"samples per micro-batch per process (default: {batch_size})")
    if grad_accum is not None:
        g.add_argument("--grad-accum", "--gradient-accumulation-steps", dest="grad_accum", type=int,
                       default=grad_accum, metavar="N", help=f"micro-batches per optimizer step (default: {grad_accum})")
    g.add_argument("--warmup-steps", type=int, default=None, metavar="N", help=warmup_help)
    g.add_argument("--max-steps", type=int, default=max_steps, metavar="N", help=max_steps_help)
    g.add_argument("--seed", type=int, default=seed, help=f"seed of the weights' init, data order and dropout "
                                                          f"(default: {seed})")
    g.add_argument("--output-dir", type=Path, default=output_dir, metavar="DIR", help=output_dir_help)
    lora = g.add_mutually_exclusive_group()
    lora.add_argument("--use-lora", dest="use_lora", action="store_true", default=use_lora,
                      help="train LoRA adapters only" + (" (default)" if use_lora else "") + "; " + lora_help)
    lora.add_argument("--full-finetune", dest="use_lora", action="store_false",
                      help="train every weight" + ("" if use_lora else " (default)"))
    g.add_argument("--lora-dropout", type=float, default=lora_dropout, metavar="P",
                   help=f"dropout on the LoRA adapters' input (default: {lora_dropout}); 0 draws no random numbers, "
                        "so two runs whose speed paths draw them differently compare (docs/tracing.md)")


def check_shared_train_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`p.error` (exit 2, the option named) for a shared option out of its range."""
    if not 0.0 <= args.lora_dropout < 1.0:
        p.error(f"--lora-dropout {args.lora_dropout}: a dropout probability is in [0, 1)")


def add_speech_args(p: argparse.ArgumentParser) -> None:
    """--speech-floor-dbfs, --allow-no-speech (see `higgs_common.audio_io`)."""
    p.add_argument("--speech-floor-dbfs", type=float, default=DEFAULT_SPEECH_FLOOR_DBFS, metavar="DBFS",
                   help="clips whose level after removing DC is below this many dBFS RMS (AES17: a full-scale "
                        "sine is 0 dBFS) hold no speech and are bad input (default: %(default)s)")
    p.add_argument("--allow-no-speech", action="store_true",
                   help="only warn (naming the file, sample and field) about clips below the speech floor")


def speech_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `StageContext.options` entries of `add_speech_args`' options."""
    return {"speech_floor_dbfs": args.speech_floor_dbfs, "allow_no_speech": args.allow_no_speech}


def add_reliability_args(p: argparse.ArgumentParser) -> None:
    """--resume [DIR], --resume-override-config, --max-audio-seconds, --speech-floor-dbfs, --allow-no-speech,
    --skip-bad-samples, --allow-frozen-trainables."""
    p.add_argument("--resume", type=Path, nargs="?", const=RESUME_LATEST, default=None, metavar="DIR",
                   help="continue from the last complete checkpoint of --output-dir (or of run folder DIR, "
                        "or from checkpoint folder DIR)")
    p.add_argument(OVERRIDE_FLAG, dest="resume_override_config", action="store_true",
                   help="with --resume: continue even though settings differ from the checkpoint's stored "
                        "configuration (without it such a resume stops, naming each differing key); the "
                        f"differences are recorded in the run folder's {OVERRIDES_FILE}")
    p.add_argument("--max-audio-seconds", type=float, default=DEFAULT_MAX_AUDIO_SECONDS,
                   help="longer clips are bad input (default: %(default)s)")
    add_speech_args(p)
    p.add_argument("--skip-bad-samples", action="store_true",
                   help="leave out samples that raise a SampleError (each is logged, with the count at the end)")
    p.add_argument("--allow-frozen-trainables", action="store_true",
                   help="do not stop when a trainable parameter gets no gradient (None) or an exactly-zero one "
                        "where the model cannot produce zero (higgs_common.guards.check_grads_flow)")


def bad_input_line(prog: str, exc: SampleError | CheckpointError) -> str:
    """The one line a CLI prints for bad input: error type and message (which names sample, field, file)."""
    return f"{prog}: bad input: {type(exc).__name__}: {exc}"


def run_cli(prog: str, body: Callable[[], Any]) -> int:
    """Run a CLI's `body`; bad input or an impossible resume -> one line on stderr and EXIT_BAD_INPUT,
    a failed checkpoint save -> one line and EXIT_SAVE_FAILED, else EXIT_OK."""
    try:
        body()
    except (SampleError, ResumeConfigError, NoUsableCheckpointError) as exc:
        print(bad_input_line(prog, exc), file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except CheckpointSaveError as exc:
        print(f"{prog}: checkpoint not saved: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_SAVE_FAILED
    return EXIT_OK
