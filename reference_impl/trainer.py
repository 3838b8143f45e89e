"""Training machinery of train-higgs-audio: defaults, LoRA, TrainingArguments, the Trainer subclass.

Which script is "the reference": `trainer/trainer_ddp.py` (the one `DDP_training.sh` launches with
torchrun) — its defaults are the ones documented for the project: lr 5e-5, warmup 100, batch 4,
logging every 10 steps, saves every 500, bf16 via `--bf16`, `ddp_find_unused_parameters=True`,
LoRA (opt-in `--use_lora`) on q/k/v/o *and* gate/up/down, which by PEFT's suffix matching also
hits the dual-FFN audio MLPs.  `trainer/trainer.py` (single process) differs: lr 4e-5, warmup
2000, batch 2, logging every step, LoRA on q/k/v/o only, an fp16 flag; `SINGLE_SCRIPT_DEFAULTS`
records those values.

Kept from the reference:
- LoRA is opt-in: without `use_lora` all parameters train (full fine-tuning).
- LoRA config: `task_type=CAUSAL_LM`, r 16, alpha 32, dropout 0.1 — CAUSAL_LM is why the model
  must accept `labels=`/`inputs_embeds=` (reference_impl.model).
- QUIRK pure bf16: the reference loads the checkpoint with `torch_dtype=torch.bfloat16` and the
  DDP script casts the model to bf16 again, so weights, gradients and AdamW states are bf16 (no
  fp32 master copy); here bf16 applies on GPU only, CPU runs fp32.
- Optimizer and schedule are whatever `transformers.Trainer` creates from TrainingArguments
  (AdamW torch, decay on all but bias/LayerNorm weights, linear schedule with warmup, clip 1.0);
  `make_optimizer_and_scheduler` builds them through the Trainer's own helpers.

Reliability additions (project issue 9; the loss math is untouched):
- shuffling: `EpochSeededRandomSampler` (permutation = f(seed, epoch)) replaces the Trainer's
  `RandomSampler`, whose permutation comes from the global RNG at the moment an epoch starts, so a
  run resumed mid-epoch (>= 2nd epoch) would see another order.  Same distribution, new order.
- crash-safe checkpoints: the Trainer writes `checkpoint-<step>/` in place; after it finishes (and
  after every rank wrote its RNG state) we write `checkpoint_complete.json` into it, atomically.
  `last_complete_checkpoint` only considers folders with that marker, and
  `remove_incomplete_checkpoints` deletes the half-written ones before a resume, so a SIGKILL
  during a save leaves the previous checkpoint valid and used.  The Trainer rotates old
  checkpoints only after the new one is fully written, so at least one marked one survives.
- guards (`higgs_common.guards`): in training, a non-finite loss term, an audio loss of exactly
  0.0 on a batch with target audio, a codebook whose loss is exactly 0.0 or that has no supervised
  frame while the batch has target audio frames, or a non-finite gradient stops the run naming
  the step, the sample ids and the loss breakdown; a trainable parameter without a gradient (None)
  or with an exactly-zero one where it cannot be zero stops it naming the parameters (unless
  `allow_frozen_trainables`).  Sample ids travel through `SampleIdTrackingCollator`.  The guards
  run here, in the loop; the loss function (`reference_impl.loss`) is unchanged.
- test hook: `HIGGS_DIFF_KILL_AT` (`higgs_common.crashpoints`) SIGKILLs after a step or mid-save.

Deviation: the DDP script saves adapters with `trainer.model.save_pretrained`, where
`trainer.model` is its plain `nn.Module` wrapper (AttributeError at the very end of a LoRA
run); we save the PEFT model's adapters to `<output_dir>/lora_adapters` as `trainer.py` intends.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.optimization import get_scheduler
from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
from transformers.trainer_pt_utils import get_parameter_names

from higgs_common.checkpoints import apply_learning_rate, save_errors, write_config, write_integrity
from higgs_common.crashpoints import maybe_kill
from higgs_common.guards import (check_audio_loss_nonzero, check_codebook_losses_nonzero, check_grads_finite,
                                 check_grads_flow, check_losses_finite, supervised_frames_per_codebook)
from higgs_common.stages import TrainConfig
from reference_impl.collator import ExtendedHiggsAudioBatchInput

logger = logging.getLogger(__name__)

# trainer_ddp.py's LoRA targets (its setup_lora_config default); trainer.py passes only q/v/k/o.
LORA_TARGET_MODULES: tuple[str, ...] = ("q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SINGLE_SCRIPT_LORA_TARGET_MODULES: tuple[str, ...] = ("q_proj", "v_proj", "k_proj", "o_proj")


@dataclass(frozen=True)
class ReferenceCLIDefaults:
    """Defaults of trainer_ddp.py's argparse / TrainingArguments (values not in TrainConfig)."""

    task_type: str = "single_speaker_smart_voice"
    per_device_train_batch_size: int = 4
    num_train_epochs: int = 3
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int = 3
    seed: int = 42
    report_to: str = "tensorboard"
    use_lora: bool = False
    bf16: bool = False                  # flag; DDP_training.sh passes --bf16
    ddp_find_unused_parameters: bool = True
    dataloader_pin_memory: bool = False
    remove_unused_columns: bool = False


CLI_DEFAULTS = ReferenceCLIDefaults()
SINGLE_SCRIPT_DEFAULTS: dict[str, Any] = dict(learning_rate=4e-5, warmup_steps=2000, per_device_train_batch_size=2,
                                               logging_steps=1, save_steps=5000, lora_target_modules=SINGLE_SCRIPT_LORA_TARGET_MODULES)

# TrainingArguments' own defaults, which the reference never overrides (weight decay, betas, eps,
# clip, schedule) are read from a real TrainingArguments so they cannot drift from transformers.
_TA = TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=True)
DEFAULT_TRAIN = TrainConfig(
    use_lora=CLI_DEFAULTS.use_lora,
    lora_r=16,
    lora_alpha=32,
    lora_dropout=0.1,
    lora_target_modules=LORA_TARGET_MODULES,
    learning_rate=5e-5,
    weight_decay=_TA.weight_decay,
    adam_betas=(_TA.adam_beta1, _TA.adam_beta2),
    adam_eps=_TA.adam_epsilon,
    warmup_steps=100,
    max_steps=20,
    max_grad_norm=_TA.max_grad_norm,
    schedule=str(getattr(_TA.lr_scheduler_type, "value", _TA.lr_scheduler_type)),
    precision="bf16",
    seed=CLI_DEFAULTS.seed,
)
del _TA


def effective_precision(train: TrainConfig, device: torch.device | str) -> str:
    """bf16 only on CUDA (the reference is GPU-only); CPU always trains in fp32."""
    return "bf16" if train.precision == "bf16" and torch.device(device).type == "cuda" else "fp32"


def torch_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]


# --------------------------------------------------------------------------- LoRA

def build_lora_config(train: TrainConfig) -> LoraConfig:
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        inference_mode=False,
        r=train.lora_r,
        lora_alpha=train.lora_alpha,
        lora_dropout=train.lora_dropout,
        target_modules=list(train.lora_target_modules),
    )


def apply_lora(model: torch.nn.Module, train: TrainConfig) -> PeftModel:
    """Wrap the model with PEFT LoRA adapters (only the adapters stay trainable)."""
    return get_peft_model(model, build_lora_config(train))


# --------------------------------------------------------------------------- arguments / optimizer

def build_training_args(train: TrainConfig, output_dir: Path | str, *, device: torch.device | str = "cpu",
                        per_device_train_batch_size: int = CLI_DEFAULTS.per_device_train_batch_size,
                        num_train_epochs: float = CLI_DEFAULTS.num_train_epochs,
                        max_steps: Optional[int] = None,
                        logging_steps: int = CLI_DEFAULTS.logging_steps,
                        save_steps: int = CLI_DEFAULTS.save_steps,
                        report_to: str | list[str] = CLI_DEFAULTS.report_to,
                        logging_dir: Optional[Path | str] = None,
                        disable_tqdm: Optional[bool] = None) -> TrainingArguments:
    """The reference's TrainingArguments, with the numbers from `train` (one GPU outside torchrun:
    `one_gpu_outside_torchrun`)."""
    on_cuda = torch.device(device).type == "cuda"
    return one_gpu_outside_torchrun(TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=num_train_epochs,
        max_steps=max_steps if max_steps is not None else -1,
        per_device_train_batch_size=per_device_train_batch_size,
        learning_rate=train.learning_rate,
        weight_decay=train.weight_decay,
        adam_beta1=train.adam_betas[0],
        adam_beta2=train.adam_betas[1],
        adam_epsilon=train.adam_eps,
        max_grad_norm=train.max_grad_norm,
        lr_scheduler_type=train.schedule,
        warmup_steps=train.warmup_steps,
        logging_steps=logging_steps,
        save_steps=save_steps,
        save_total_limit=CLI_DEFAULTS.save_total_limit,
        bf16=effective_precision(train, device) == "bf16",
        fp16=False,
        dataloader_pin_memory=CLI_DEFAULTS.dataloader_pin_memory,
        remove_unused_columns=CLI_DEFAULTS.remove_unused_columns,
        ddp_find_unused_parameters=CLI_DEFAULTS.ddp_find_unused_parameters,
        report_to=report_to,
        logging_dir=str(logging_dir) if logging_dir is not None else None,
        seed=train.seed,
        use_cpu=not on_cuda,
        disable_tqdm=disable_tqdm,
    ))


def one_gpu_outside_torchrun(args: TrainingArguments) -> TrainingArguments:
    """Train on the first GPU when several are visible and no process group was launched.

    Outside torchrun the HF Trainer wraps the model in `nn.DataParallel` over every visible GPU
    (``args.n_gpu > 1``), which scatters the collator's (num_codebooks, T) audio tensors along the
    codebook axis and crashes in upstream `HiggsAudioModel._embed_audio_ids` (train-higgs-audio
    does the same under ``python train.py``).  Sets ``args._n_gpu = 1`` (a warning says so);
    torchrun runs (one GPU per process) are untouched.
    """
    if args.n_gpu > 1:
        logger.warning("%d GPUs visible outside torchrun: training on %s only (nn.DataParallel would split the "
                       "(num_codebooks, T) audio tensors along codebooks); launch with torchrun to use all of them",
                       args.n_gpu, args.device)
        args._n_gpu = 1
    return args


def decay_parameter_names(model: torch.nn.Module) -> list[str]:
    """Trainer.get_decay_parameter_names: everything except biases and LayerNorm weights."""
    names = get_parameter_names(model, ALL_LAYERNORM_LAYERS)
    return [n for n in names if "bias" not in n]


def make_optimizer_and_scheduler(model: torch.nn.Module, args: TrainingArguments, num_training_steps: int
                                 ) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer and LR schedule `Trainer.create_optimizer_and_scheduler` would build."""
    decay = set(decay_parameter_names(model))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n in decay], "weight_decay": args.weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    optimizer = optimizer_cls(groups, **optimizer_kwargs)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer=optimizer,
                              num_warmup_steps=args.get_warmup_steps(num_training_steps),
                              num_training_steps=num_training_steps)
    return optimizer, scheduler


# --------------------------------------------------------------------------- Trainer

def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the first parameter (DDP wrappers have no `.device`)."""
    return next(model.parameters()).device


COMPLETE_MARKER = "checkpoint_complete.json"


def _checkpoint_step(path: Path) -> Optional[int]:
    name = path.name
    return int(name[11:]) if name.startswith("checkpoint-") and name[11:].isdigit() else None


def is_complete_checkpoint(path: Path | str) -> bool:
    """A Trainer checkpoint folder whose save finished (our marker plus the Trainer's state file)."""
    path = Path(path)
    return (path.is_dir() and _checkpoint_step(path) is not None and (path / COMPLETE_MARKER).is_file()
            and (path / "trainer_state.json").is_file())


def last_complete_checkpoint(output_dir: Path | str) -> Optional[Path]:
    """Highest-step complete `checkpoint-<step>` in `output_dir` (half-written ones are ignored)."""
    done = [p for p in Path(output_dir).glob("checkpoint-*") if is_complete_checkpoint(p)]
    return max(done, key=lambda p: _checkpoint_step(p)) if done else None


def remove_incomplete_checkpoints(output_dir: Path | str) -> list[Path]:
    """Delete `checkpoint-<step>` folders without the completion marker (left by a killed save)."""
    removed = []
    for p in Path(output_dir).glob("checkpoint-*"):
        if p.is_dir() and _checkpoint_step(p) is not None and not is_complete_checkpoint(p):
            logger.warning("removing incomplete checkpoint %s (its save was interrupted)", p)
            shutil.rmtree(p)
            removed.append(p)
    return removed


def _numpy_rng_globals() -> list:
    """What unpickling `np.random.get_state()` needs (numpy 1.x and 2.x spellings)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class EpochSeededRandomSampler(torch.utils.data.Sampler[int]):
    """Random order that is a pure function of (seed, epoch): resumable mid-epoch, bit for bit."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class SampleIdTrackingCollator:
    """Wraps a collator and queues each batch's sample ids (read back, in order, by compute_loss).

    A queue, not "the last batch": the Trainer prefetches all micro-batches of an accumulation
    window (and accelerate one more) before running them.
    """

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.pending: collections.deque[list[str]] = collections.deque()

    def __call__(self, samples: Sequence[Any]) -> Any:
        self.pending.append([str(getattr(s, "sample_id", "?")) for s in samples])
        return self.collator(samples)

    def __getattr__(self, name: str) -> Any:   # params, base_collator, ... of the wrapped collator
        return getattr(self.__dict__["collator"], name)


class CrashPointCallback(TrainerCallback):
    """Test hook: `HIGGS_DIFF_KILL_AT=after_step:N` SIGKILLs right after optimizer step N."""

    def on_step_end(self, args, state, control, **kwargs):
        maybe_kill("after_step", state.global_step)


class HiggsAudioTrainer(Trainer):
    """HF Trainer whose loss is the model's (reference) loss; logs text and audio loss too.

    `compute_loss` moves the batch to the model's device, calls `model(**batch)` and returns
    `outputs.loss`; the text (`llm_loss`) and audio (`audio_loss`) terms are averaged over each
    logging window and added to the Trainer's log line (and so to TensorBoard and
    `trainer_state.json`).  A term dropped from the total (reference QUIRK zero terms dropped) is
    logged as a warning, never silently.
    """

    def __init__(self, *args: Any, allow_frozen_trainables: bool = False, run_config: Optional[dict] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allow_frozen_trainables = allow_frozen_trainables
        self.run_config = run_config     # stored in every checkpoint (higgs_common.checkpoints.CONFIG_FILE)
        self._term_sums: dict[str, float] = {"llm_loss": 0.0, "audio_loss": 0.0}
        self._term_count = 0
        if self.data_collator is not None and not isinstance(self.data_collator, SampleIdTrackingCollator):
            self.data_collator = SampleIdTrackingCollator(self.data_collator)
        self._last_ids: list[str] = []
        self._last_losses: dict[str, float] = {}
        self.add_callback(CrashPointCallback())

    # -------------------------------------------------------------- resumable order, safe saves
    def _get_train_sampler(self):
        if self.train_dataset is None or self.args.group_by_length or not hasattr(self.train_dataset, "__len__"):
            return super()._get_train_sampler()
        return EpochSeededRandomSampler(len(self.train_dataset), self.args.seed)

    def _load_rng_state(self, checkpoint):
        # transformers 4.46 saves numpy's RNG state (an ndarray) in rng_state.pth, then reads it with
        # torch.load's weights_only=True default of torch >= 2.6, which rejects it: without this,
        # every resume of the reference crashes.  Allow exactly numpy's array-reconstruction globals.
        with torch.serialization.safe_globals(_numpy_rng_globals()):
            super()._load_rng_state(checkpoint)

    def _save_optimizer_and_scheduler(self, output_dir):
        maybe_kill("in_save", self.state.global_step)   # test hook: weights written, the rest not
        super()._save_optimizer_and_scheduler(output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self.lr_scheduler is not None:
            # the loaded state carries the checkpoint's learning rate; this run's (possibly overridden) one wins
            apply_learning_rate(getattr(self.optimizer, "optimizer", self.optimizer),
                                getattr(self.lr_scheduler, "scheduler", self.lr_scheduler), self.args.learning_rate)

    def _save_checkpoint(self, model, trial, metrics=None):
        """The Trainer's save, then (main process) the run configuration, the integrity record and the
        completion marker.  A write failure (disk full, permissions) is a CheckpointSaveError naming the
        folder and the step; the half-written folder is removed, earlier checkpoints are untouched."""
        step = self.state.global_step
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{step}"
        previous = last_complete_checkpoint(folder.parent)
        with save_errors(folder, step, previous=previous, cleanup=folder if self.args.should_save else None):
            super()._save_checkpoint(model, trial, metrics)
            self.accelerator.wait_for_everyone()   # every rank's rng_state_<rank>.pth is on disk
            if self.args.should_save:
                if self.run_config is not None:
                    write_config(folder, self.run_config)
                write_integrity(folder)
                tmp = folder / (COMPLETE_MARKER + ".tmp")
                tmp.write_text(json.dumps({"step": step}) + "\n", encoding="utf-8")
                os.replace(tmp, folder / COMPLETE_MARKER)

    # -------------------------------------------------------------- guards
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        check_grads_finite(model.named_parameters(), step=self.state.global_step + 1, sample_ids=self._last_ids,
                           losses=self._last_losses)
        if not self.allow_frozen_trainables:
            check_grads_flow(model.named_parameters(), step=self.state.global_step + 1, sample_ids=self._last_ids,
                             losses=self._last_losses)
        return loss

    def _guard(self, outputs: Any, inputs: Any) -> None:
        """Stop on a non-finite loss term or a silent zero audio loss (training only)."""
        collator = self.data_collator
        self._last_ids = collator.pending.popleft() if isinstance(collator, SampleIdTrackingCollator) \
            and collator.pending else []
        audio_out = inputs["audio_out_ids"] if "audio_out_ids" in inputs else None
        has_target = audio_out is not None and audio_out.ndim == 2 and audio_out.shape[-1] > 0
        self._last_losses = {"total": float(outputs.loss.detach()), "text": float(outputs.llm_loss.detach()),
                             "audio": float(outputs.audio_loss.detach())}
        step = self.state.global_step + 1
        check_losses_finite(self._last_losses, step=step, sample_ids=self._last_ids)
        check_audio_loss_nonzero(self._last_losses["audio"], has_target_audio=has_target, step=step,
                                 sample_ids=self._last_ids, losses=self._last_losses)
        per_cb = getattr(outputs, "codebook_losses", None)
        labels = inputs["label_audio_ids"] if "label_audio_ids" in inputs else None
        check_codebook_losses_nonzero([] if per_cb is None else per_cb.detach().float().tolist(),
                                      supervised_frames_per_codebook(labels), has_target_audio=has_target,
                                      step=step, sample_ids=self._last_ids, losses=self._last_losses)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not isinstance(inputs, ExtendedHiggsAudioBatchInput):
            inputs = ExtendedHiggsAudioBatchInput(**dict(inputs))
        device = model_device(model)
        model_inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                        for k, v in inputs.items() if v is not None}
        outputs = model(**model_inputs)
        if model.training:
            self._guard(outputs, inputs)
            self._term_sums["llm_loss"] += float(outputs.llm_loss.detach())
            self._term_sums["audio_loss"] += float(outputs.audio_loss.detach())
            self._term_count += 1
            dropped = getattr(outputs, "loss_info", {}).get("dropped", ())
            if dropped:
                logger.warning("step %d: loss term(s) %s are 0 or NaN and were left out of the total "
                               "(reference QUIRK zero terms dropped)", self.state.global_step, list(dropped))
        loss = outputs.loss
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._term_count:
            for key, total in self._term_sums.items():
                logs[key] = round(total / self._term_count, 6)
            self._term_sums = {k: 0.0 for k in self._term_sums}
            self._term_count = 0
        super().log(logs, *args, **kwargs)


def save_lora_adapters(model: torch.nn.Module, output_dir: Path | str) -> Optional[Path]:
    """Save PEFT adapters to `<output_dir>/lora_adapters` (the reference's layout); None without LoRA."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, PeftModel):
        return None
    out = Path(output_dir) / "lora_adapters"
    inner.save_pretrained(str(out))
    return out
