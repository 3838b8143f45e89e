"""Training-throughput measurement of both pipelines on one device, and the FLOP model behind MFU.

Both pipelines train on the SAME collated batch (the custom collator's, converted to the
reference's batch class), so tokens, sequence length and padding are identical and any
difference in step time is the pipelines' own:

* reference: its real HF path, `reference_impl.trainer.HiggsAudioTrainer.train()` over a dataset
  whose collator always returns that batch (Trainer + accelerate autocast + its AdamW, clip and
  schedule); a callback times `on_step_begin` -> `on_step_end` with CUDA syncs, so data loading
  is outside the timed region.
* custom: its manual loop's micro-step, `custom_impl.distributed.accumulate` (forward + loss +
  backward) + clip + AdamW + scheduler, as in `custom_impl.train` (its per-step logging,
  `step_record`, is left out).

FLOPs (stated in every report, `flop_model()`): per token of the merged sequence, forward =
2 x (matmul parameters one token meets: per layer q,k,v,o + ONE 3-matrix MLP, text or audio, which
are the same size here) + 2 x hidden x vocab (upstream applies the text head at every position)
+ 2 x hidden x codebooks x (codebook_size + 2) at audio-out positions + causal attention
2 x layers x seq x heads x head_dim.  Training = 3 x forward for full fine-tuning (forward,
input gradients, weight gradients) and 2 x forward + 6 x (LoRA adapter parameters) for LoRA (the
frozen weights need no weight gradient).  MFU = that / step time / the GPU's bf16 dense peak.
`torch.utils.flop_counter` counts are reported beside it as a cross-check.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

log = logging.getLogger("harness.bench")

# bf16 dense tensor-core peaks from the vendors' datasheets (no sparsity), in FLOP/s.
DATASHEET_BF16_PEAK = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L4": 121e12}


def datasheet_peak(device_name: str) -> float | None:
    for key, value in DATASHEET_BF16_PEAK.items():
        if key in device_name:
            return value
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class BatchShape:
    """What one training step processes (merged sequence = text + audio code positions)."""

    batch_size: int
    padded_len: int              # L_exp after merging audio, padded
    tokens: int                  # real (attention_mask) positions in the merged batch
    audio_out_positions: int
    text_supervised: int
    audio_supervised: int        # frames x codebooks

    @property
    def padded_tokens(self) -> int:
        return self.batch_size * self.padded_len


@dataclass
class TrainMeasurement:
    pipeline: str
    config: str
    batch_size: int
    status: str = "ok"           # ok | oom | error
    error: str | None = None
    precision: str = ""
    weights_dtype: str = ""
    trainable_params: int = 0
    step_seconds: list[float] = field(default_factory=list)
    peak_memory_gib: float | None = None
    analytic_flops_per_step: float | None = None
    counted_flops_per_step: float | None = None
    losses: list[float] = field(default_factory=list)

    @property
    def step_s(self) -> float | None:
        return statistics.median(self.step_seconds) if self.step_seconds else None

    def to_json(self, shape: BatchShape, peak: float | None) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        s = self.step_s
        out["step_s_median"] = s
        out["tokens_per_s"] = shape.tokens / s if s else None
        out["samples_per_s"] = shape.batch_size / s if s else None
        out["analytic_tflops"] = self.analytic_flops_per_step / s / 1e12 if s and self.analytic_flops_per_step else None
        out["counted_tflops"] = self.counted_flops_per_step / s / 1e12 if s and self.counted_flops_per_step else None
        out["mfu"] = (self.analytic_flops_per_step / s / peak) if s and peak and self.analytic_flops_per_step else None
        return out


# ------------------------------------------------------------------------------------ FLOPs

def flop_model(config: Any, shape: BatchShape, *, lora_params: int, full_ft: bool) -> dict[str, Any]:
    """Analytic training FLOPs of one step (see module docstring); returns the terms too."""
    t = config.text_config
    h, inter, layers = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    heads, kv = t.num_attention_heads, t.num_key_value_heads
    hd = getattr(t, "head_dim", None) or h // heads
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    mlp = 3 * h * inter
    per_token_params = layers * (attn + mlp)
    text_head = h * t.vocab_size
    audio_head = h * config.audio_num_codebooks * (config.audio_codebook_size + 2)
    tokens = shape.tokens
    fwd = (2 * per_token_params * tokens
           + 2 * text_head * tokens
           + 2 * audio_head * shape.audio_out_positions
           + 2 * layers * shape.padded_len * heads * hd * tokens)   # causal QK^T + AV: 4*S*d/2 per layer
    train = 3 * fwd if full_ft else 2 * fwd + 6 * lora_params * tokens
    return {"per_token_matmul_params": per_token_params + text_head, "forward_flops": fwd,
            "train_flops": train,
            "formula": ("fwd = 2*T*(layers*(attn+mlp) + hidden*vocab) + 2*A*hidden*C*(K+2) + 2*layers*S*heads*hd*T; "
                        + ("train = 3*fwd (full fine-tuning)" if full_ft else
                           "train = 2*fwd + 6*T*N_lora (LoRA: no weight grads for frozen weights)"))}


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs torch.utils.flop_counter sees in `fn` (matmuls, attention, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ------------------------------------------------------------------------------------ batch

def batch_shape(model: torch.nn.Module, batch: Any, ctx: Any) -> BatchShape:
    """Run one no-grad forward of the custom model to read the merged sequence's shape."""
    from custom_impl import loss as cl
    from custom_impl import model as cm

    with torch.no_grad():
        out = cm.forward(model, batch, ctx, precision="bf16" if ctx.device.type == "cuda" else "fp32")
        terms = cl.compute_terms(out, batch)
    mask = out.extra["attention_mask"]
    aom = out.extra["audio_out_mask"]
    return BatchShape(batch_size=int(out.expanded_input_ids.shape[0]), padded_len=int(out.expanded_input_ids.shape[1]),
                      tokens=int(mask.sum()), audio_out_positions=int(aom.sum()) if aom is not None else 0,
                      text_supervised=int(terms.text_count), audio_supervised=int(terms.audio_counts.sum()))


def to_reference_batch(batch: Any) -> Any:
    """The custom collator's batch as the reference's batch class (same tensors)."""
    from reference_impl.collator import BATCH_FIELDS, ExtendedHiggsAudioBatchInput

    return ExtendedHiggsAudioBatchInput(**{k: getattr(batch, k, None) for k in BATCH_FIELDS})


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        _free()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _weights_dtype(model: torch.nn.Module) -> str:
    frozen = [p.dtype for p in model.parameters() if not p.requires_grad]
    train = [p.dtype for p in model.parameters() if p.requires_grad]
    f = str(frozen[0]).removeprefix("torch.") if frozen else "-"
    t = str(train[0]).removeprefix("torch.") if train else "-"
    return f"frozen {f} / trainable {t}"


# ------------------------------------------------------------------------------------ runners

def run_custom(ctx: Any, train: Any, batch: Any, *, config_name: str, steps: int, warmup: int,
               shape: BatchShape, count: bool = True) -> TrainMeasurement:
    """The custom loop's micro-step (accumulate + clip + AdamW + schedule), timed per step."""
    from custom_impl import model as cm
    from custom_impl import stages as cs
    from custom_impl.distributed import accumulate

    m = TrainMeasurement("custom", config_name, shape.batch_size, precision=train.precision)
    device = ctx.device
    model = opt = None
    try:
        _reset_peak(device)
        model = cs.build_model(ctx, train)
        model.train()
        m.trainable_params, m.weights_dtype = _trainable(model), _weights_dtype(model)
        opt, sched = cs.make_optimizer(model, train)
        params = [p for _, p in cm.trainable_named_parameters(model)]

        def one_step() -> float:
            lbs = accumulate(model, [batch], ctx, precision=train.precision)
            torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            return float(lbs[0].total.detach())

        for i in range(warmup + steps):
            sync(device)
            t0 = time.perf_counter()
            loss = one_step()
            sync(device)
            if i >= warmup:
                m.step_seconds.append(time.perf_counter() - t0)
            m.losses.append(loss)
        m.peak_memory_gib = _peak(device)
        if count:
            m.counted_flops_per_step = count_flops(
                lambda: accumulate(model, [batch], ctx, precision=train.precision))
            opt.zero_grad(set_to_none=True)
    except Exception as exc:  # noqa: BLE001 - an OOM/crash is a measurement result, reported in the table
        _record_failure(m, exc, device, "custom", config_name)
    finally:
        del model, opt
        _free()
    return m


def _record_failure(m: "TrainMeasurement", exc: Exception, device: Any, pipeline: str, config_name: str) -> None:
    """An OOM or crash becomes the measurement's status and message (the table reports it)."""
    m.status = "oom" if _is_oom(exc) else "error"
    m.error = f"{type(exc).__name__}: {str(exc)[:300]}"
    m.peak_memory_gib = _peak(device)
    log.warning("%s %s failed: %s", pipeline, config_name, m.error)


class _StepTimer:
    """TrainerCallback timing on_step_begin -> on_step_end with device syncs."""

    def __init__(self, device: torch.device, warmup: int) -> None:
        from transformers import TrainerCallback

        self.device, self.warmup = device, warmup
        self.seconds: list[float] = []
        self._t0 = 0.0
        self._n = 0
        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                sync(timer.device)
                timer._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                sync(timer.device)
                if timer._n >= timer.warmup:
                    timer.seconds.append(time.perf_counter() - timer._t0)
                timer._n += 1

        self.callback = _CB()


class _RepeatDataset(torch.utils.data.Dataset):
    """n indices; the collator ignores them and returns the fixed batch."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


AUTOCAST_CRASH = "Index put requires the source and destination dtypes match"


def _training_args(tr: Any, train: Any, tmp: str, device: torch.device, shape: BatchShape, steps: int,
                   autocast: bool) -> Any:
    """The reference's TrainingArguments; `autocast=False` turns off the Trainer's bf16 autocast.

    transformers keeps the mixed-precision choice in ACCELERATE_MIXED_PRECISION and accelerate in
    a process-wide AcceleratorState, so both are reset around building the arguments.
    """
    import os

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
    args = tr.build_training_args(train, tmp, device=device, per_device_train_batch_size=shape.batch_size,
                                  max_steps=steps, logging_steps=10**6, save_steps=10**6,
                                  report_to=[], disable_tqdm=True)
    if not autocast and args.bf16:
        os.environ["ACCELERATE_MIXED_PRECISION"] = "no"
        args = dataclasses.replace(args, bf16=False)
    return args


def run_reference(ctx: Any, train: Any, batch: Any, *, config_name: str, steps: int, warmup: int,
                  shape: BatchShape, count: bool = True, autocast: bool = True) -> TrainMeasurement:
    """The reference's HF Trainer loop on the fixed batch (its own autocast, optimizer, clip).

    `autocast=False`: the same loop with TrainingArguments.bf16 off (the weights are bf16 already).
    Needed because upstream HiggsAudioModel cannot run with bf16 weights under bf16 autocast: its
    audio-code embedding sum is autocast to fp32 and the index_put into the bf16 sequence raises.
    """
    from reference_impl import stages as rs
    from reference_impl import trainer as tr

    m = TrainMeasurement("reference", config_name, shape.batch_size,
                         precision=tr.effective_precision(train, ctx.device) + ("" if autocast else " (no autocast)"))
    device = ctx.device
    model = trainer = None
    ref_batch = to_reference_batch(batch)
    try:
        _reset_peak(device)
        model = rs.build_model(ctx, train)
        m.trainable_params, m.weights_dtype = _trainable(model), _weights_dtype(model)
        timer = _StepTimer(device, warmup)
        with tempfile.TemporaryDirectory(prefix="higgs-bench-ref-") as tmp:
            args = _training_args(tr, train, tmp, device, shape, warmup + steps, autocast)
            trainer = tr.HiggsAudioTrainer(model=model, args=args,
                                           train_dataset=_RepeatDataset(shape.batch_size * (warmup + steps)),
                                           data_collator=lambda _features: ref_batch,
                                           callbacks=[timer.callback])
            result = trainer.train()
        m.step_seconds = timer.seconds
        m.losses = [float(result.training_loss)]
        m.peak_memory_gib = _peak(device)
        if count:
            def fwd_bwd() -> None:
                with trainer.compute_loss_context_manager():
                    loss = trainer.compute_loss(trainer.model_wrapped, ref_batch)
                loss.backward()
            m.counted_flops_per_step = count_flops(fwd_bwd)
    except Exception as exc:  # noqa: BLE001 - an OOM/crash is a measurement result, reported in the table
        _record_failure(m, exc, device, "reference", config_name)
    finally:
        del model, trainer
        _free()
    return m


def lora_parameter_count(measurement: TrainMeasurement, use_lora: bool) -> int:
    return measurement.trainable_params if use_lora else 0
