"""Training-throughput measurement of both pipelines on one device, and the FLOP model behind MFU.

Both pipelines train on batches collated by the custom collator (converted to the reference's
batch class for it), so tokens, sequence length and padding are the pipelines' inputs, not their
code:

* fixed batching (default): every step of both pipelines runs the SAME batch; any difference in
  step time is the pipelines' own.
* epoch batching (`--batching epoch`): each pipeline trains on its own batches of one pool of
  samples (warm-up steps from one part of it, timed steps from the rest): the reference cuts the
  shuffled pool in order (its Trainer's random sampler), the custom pipeline groups it by length
  when its `group-by-length` switch is on (`custom_impl.length_grouping`).  Timed steps of both
  cover exactly the same samples, so they do the same useful work and tokens/s compares them.

* reference: its real HF path, `reference_impl.trainer.HiggsAudioTrainer.train()` over a dataset
  whose collator returns the prepared batches in turn (Trainer + accelerate's bf16 autocast over
  bf16 weights, as the reference is configured; its AdamW, clip and schedule); a callback times
  `on_step_begin` -> `on_step_end` with CUDA syncs, so data loading is outside the timed region.
* custom: its manual loop's micro-step, `custom_impl.distributed.accumulate` (forward + loss +
  backward) + clip + AdamW + scheduler, as in `custom_impl.train` (its per-step logging,
  `step_record`, is left out), with the speed switches given (`custom_impl.speed`) applied to
  the model as the training CLI applies them.

FLOPs (stated in every report, `flop_model()`) count the USEFUL work of a step, the same for both
pipelines whatever each computes: per REAL token of the merged sequences (padding is waste, not
work), forward = 2 x (matmul parameters one token meets: per layer q,k,v,o + ONE 3-matrix MLP,
text or audio, which are the same size here) + 2 x hidden x codebooks x (codebook_size + 2) at
audio-out positions (both pipelines score nearly all of them) + 2 x hidden x vocab only at the
SUPERVISED text rows (the only rows of the 128k-vocabulary text head either pipeline's loss reads:
the reference computes the head at every position, the custom pipeline at those rows; the rest
is waste) + causal attention 2 x layers x heads x head_dim x sum over samples of length^2.
Training = 3 x forward for full fine-tuning (forward, input gradients, weight gradients) and
2 x forward + 6 x (LoRA adapter parameters) x tokens for LoRA (the frozen weights need no weight
gradient).  MFU = that / step time / the GPU's bf16 dense peak.  `torch.utils.flop_counter`
counts (everything each pipeline really computes) are reported beside it as a cross-check.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from bench.host import HostProbe, cpu_steal, cpu_times

log = logging.getLogger("bench")

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
    sum_sq_len: int = 0          # sum over samples of (real merged length)^2: causal attention work

    @property
    def padded_tokens(self) -> int:
        return self.batch_size * self.padded_len


@dataclass
class TrainMeasurement:
    pipeline: str
    config: str
    batch_size: int
    variant: str = "default"     # custom: the speed switches flipped from the run's main options
    speed: str = ""              # custom: the switches that were on (custom_impl.speed)
    batching: str = "fixed"
    status: str = "ok"           # ok | oom | error | skipped
    error: str | None = None
    precision: str = ""
    weights_dtype: str = ""
    trainable_params: int = 0
    step_seconds: list[float] = field(default_factory=list)
    step_shapes: list[BatchShape] = field(default_factory=list)   # the timed steps' batches, in order
    peak_memory_gib: float | None = None
    analytic_flops_per_step: float | None = None
    counted_flops_per_step: float | None = None
    losses: list[float] = field(default_factory=list)
    wall_s: float | None = None  # model build + every step: what the measurement cost
    host_op_us: list[float] = field(default_factory=list)          # per timed step: bench.host.HostProbe around it
    host_steal: list[float | None] = field(default_factory=list)   # per timed step: CPU steal share during it

    @property
    def step_s(self) -> float | None:
        return statistics.median(self.step_seconds) if self.step_seconds else None

    def _per_step_totals(self) -> tuple[float, float, int] | None:
        """(seconds, tokens, steps): median step x tokens for one fixed batch, sums otherwise."""
        if not self.step_seconds or not self.step_shapes:
            return None
        if len({(s.tokens, s.padded_len) for s in self.step_shapes}) == 1:
            return self.step_s, float(self.step_shapes[0].tokens), 1
        n = min(len(self.step_seconds), len(self.step_shapes))
        return sum(self.step_seconds[:n]), float(sum(s.tokens for s in self.step_shapes[:n])), n

    def to_json(self, peak: float | None) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("step_shapes")
        out["step_s_median"] = self.step_s
        totals = self._per_step_totals()
        seconds, tokens, n = totals if totals else (None, None, 0)
        shapes = self.step_shapes[:max(n, 1)]
        out["tokens_per_step"] = tokens / n if n else None
        out["padded_tokens_per_step"] = (sum(s.padded_tokens for s in shapes) / len(shapes)) if shapes else None
        out["tokens_per_s"] = tokens / seconds if seconds else None
        out["samples_per_s"] = n * self.batch_size / seconds if seconds else None
        flops = self.analytic_flops_per_step
        out["analytic_tflops"] = flops * n / seconds / 1e12 if seconds and flops else None
        out["counted_tflops"] = (self.counted_flops_per_step * n / seconds / 1e12
                                 if seconds and self.counted_flops_per_step else None)
        out["mfu"] = flops * n / seconds / peak if seconds and peak and flops else None
        steal = [x for x in self.host_steal if x is not None]
        out["host_op_us_median"] = statistics.median(self.host_op_us) if self.host_op_us else None
        out["host_steal_median"] = statistics.median(steal) if steal else None
        return out


# ------------------------------------------------------------------------------------ FLOPs

def flop_model(config: Any, shape: BatchShape, *, lora_params: int, full_ft: bool) -> dict[str, Any]:
    """Analytic useful training FLOPs of one step (see module docstring); returns the terms too."""
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
    sum_sq = shape.sum_sq_len or shape.padded_len * tokens   # older shapes: the padded-length bound
    fwd = (2 * per_token_params * tokens
           + 2 * text_head * shape.text_supervised
           + 2 * audio_head * shape.audio_out_positions
           + 2 * layers * heads * hd * sum_sq)              # causal QK^T + AV: 2 * len^2 * d per layer and head
    train = 3 * fwd if full_ft else 2 * fwd + 6 * lora_params * tokens
    return {"per_token_matmul_params": per_token_params, "text_head_params": text_head, "forward_flops": fwd,
            "train_flops": train,
            "formula": ("fwd = 2*T*layers*(attn+mlp) + 2*N_text*hidden*vocab + 2*A*hidden*C*(K+2) "
                        "+ 2*layers*heads*hd*sum(len^2)  [T real tokens, N_text supervised text rows, "
                        "A audio-out positions]; "
                        + ("train = 3*fwd (full fine-tuning)" if full_ft else
                           "train = 2*fwd + 6*T*N_lora (LoRA: no weight grads for frozen weights)"))}


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs torch.utils.flop_counter sees in `fn` (matmuls, attention, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ------------------------------------------------------------------------------------ batch

def batch_shape(batch: Any, ctx: Any) -> BatchShape:
    """The merged sequence's shape and supervised counts, read off the collated batch (no model).

    Lengths as upstream's merge builds them (`custom_impl.length_grouping.batch_merged_lengths`,
    padded to a multiple of 8); supervised counts as the custom loss counts them.
    """
    from custom_impl.length_grouping import batch_merged_lengths, padded_length
    from custom_impl.loss import batch_label_counts

    cfg = ctx.model_config
    lengths = batch_merged_lengths(batch, cfg.audio_in_token_idx, cfg.audio_out_token_idx)
    text, audio = batch_label_counts(batch, audio_in_token_id=cfg.audio_in_token_idx,
                                     audio_out_token_id=cfg.audio_out_token_idx)
    out = batch.audio_out_ids
    return BatchShape(batch_size=len(lengths), padded_len=padded_length(lengths), tokens=sum(lengths),
                      audio_out_positions=int(out.shape[-1]) if out is not None else 0,
                      text_supervised=int(text), audio_supervised=int(audio.sum()) if audio.numel() else 0,
                      sum_sq_len=sum(n * n for n in lengths))


def mean_flops(config: Any, shapes: Sequence[BatchShape], *, lora_params: int, full_ft: bool) -> tuple[float, str]:
    """Mean analytic train FLOPs over the steps' shapes, and the formula."""
    models = [flop_model(config, s, lora_params=lora_params, full_ft=full_ft) for s in shapes]
    return sum(m["train_flops"] for m in models) / len(models), models[0]["formula"]


def to_reference_batch(batch: Any) -> Any:
    """The custom collator's batch as the reference's batch class (same tensors)."""
    from reference_impl.collator import BATCH_FIELDS, ExtendedHiggsAudioBatchInput

    return ExtendedHiggsAudioBatchInput(**{k: getattr(batch, k, None) for k in BATCH_FIELDS})


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Python's collector leaves the heap that exists now alone while the timed steps run.

    The bench measures every pipeline in one process, one after another: the objects an earlier
    run left (torch.compile's graphs and caches above all) would make each full collection during a
    later run slower than in that pipeline's own process.  `gc.freeze` moves them to the permanent
    generation, as a fresh process would have them; `gc.unfreeze` gives them back afterwards.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class StepClock:
    """Times each step between device syncs and takes the host's readings beside it (`bench.host`).

    `begin()` probes the host's dispatch speed (outside the timed region), syncs and starts the
    clock; `end()` syncs, stops it, probes again and, past the first `warmup` steps, appends the
    step's seconds, the mean of the two probes and the CPU steal share during the step.
    """

    def __init__(self, device: torch.device, m: "TrainMeasurement", warmup: int) -> None:
        self.device, self.m, self.warmup = device, m, warmup
        self.probe = HostProbe()
        self._n = 0
        self._t0 = 0.0
        self._op_us = 0.0
        self._cpu: tuple[int, int] | None = None

    def begin(self) -> None:
        self._op_us = self.probe.op_us()
        sync(self.device)
        self._cpu = cpu_times()
        self._t0 = time.perf_counter()

    def end(self) -> None:
        sync(self.device)
        seconds = time.perf_counter() - self._t0
        cpu = cpu_times()
        if self._n >= self.warmup:
            self.m.step_seconds.append(seconds)
            self.m.host_op_us.append((self._op_us + self.probe.op_us()) / 2)
            self.m.host_steal.append(cpu_steal(self._cpu, cpu))
        self._n += 1


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


def _timed_shapes(shapes: Sequence[BatchShape], warmup: int, steps: int) -> list[BatchShape]:
    """The shapes of steps warmup .. warmup+steps-1 when the steps cycle through `shapes`."""
    return [shapes[i % len(shapes)] for i in range(warmup, warmup + steps)]


# ------------------------------------------------------------------------------------ runners

def run_custom(ctx: Any, train: Any, batches: Sequence[Any], shapes: Sequence[BatchShape], *, config_name: str,
               steps: int, warmup: int, speed: Any, variant: str = "default", batching: str = "fixed",
               count: bool = True) -> TrainMeasurement:
    """The custom loop's micro-step (accumulate + clip + AdamW + schedule), timed per step.

    Step i trains on batches[i % len(batches)]; `speed` (custom_impl.speed.SpeedOptions) is
    applied to the model and the process as the training CLI applies it.
    """
    from custom_impl import model as cm
    from custom_impl import speedups
    from custom_impl import stages as cs
    from custom_impl.distributed import accumulate

    m = TrainMeasurement("custom", config_name, shapes[0].batch_size, variant=variant, speed=speed.describe(),
                         batching=batching, precision=train.precision,
                         step_shapes=_timed_shapes(shapes, warmup, steps))
    device = ctx.device
    model = opt = None
    t_start = time.perf_counter()
    restore = speedups.enter_process_settings(speed)
    try:
        _reset_peak(device)
        model = cs.build_model(ctx, train)
        speedups.apply(model, speed)
        model.train()
        m.trainable_params, m.weights_dtype = _trainable(model), _weights_dtype(model)
        opt, sched = cs.make_optimizer(model, train)      # fused when the switch says so (CUDA)
        params = [p for _, p in cm.trainable_named_parameters(model)]

        def one_step(batch: Any) -> float:
            lbs = accumulate(model, [batch], ctx, precision=train.precision)
            torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            return float(lbs[0].total.detach())

        clock = StepClock(device, m, warmup)
        with frozen_heap():
            for i in range(warmup + steps):
                clock.begin()
                loss = one_step(batches[i % len(batches)])
                clock.end()
                m.losses.append(loss)
        m.peak_memory_gib = _peak(device)
        if count and not speed.compile_layers:   # the flop counter's dispatch mode and compiled graphs do not mix
            m.counted_flops_per_step = count_flops(
                lambda: accumulate(model, [batches[0]], ctx, precision=train.precision))
            opt.zero_grad(set_to_none=True)
    except Exception as exc:  # noqa: BLE001 - an OOM/crash is a measurement result, reported in the table
        _record_failure(m, exc, device, "custom", config_name)
    finally:
        restore()
        if model is not None:
            speedups.release(model)   # the CUDA graphs' memory (cuda-graphs): the next row builds its own
        del model, opt
        _free()
    m.wall_s = time.perf_counter() - t_start
    return m


def _record_failure(m: "TrainMeasurement", exc: Exception, device: Any, pipeline: str, config_name: str) -> None:
    """An OOM or crash becomes the measurement's status and message (the table reports it)."""
    m.status = "oom" if _is_oom(exc) else "error"
    m.error = f"{type(exc).__name__}: {str(exc)[:300]}"
    m.peak_memory_gib = _peak(device)
    m.step_seconds, m.host_op_us, m.host_steal = [], [], []
    log.warning("%s %s batch %d failed: %s", pipeline, config_name, m.batch_size, m.error)


def _step_timer(clock: StepClock) -> Any:
    """A TrainerCallback running `clock` from on_step_begin to on_step_end."""
    from transformers import TrainerCallback

    class _StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            clock.begin()

        def on_step_end(self, args, state, control, **kw):
            clock.end()

    return _StepTimer()


class _RepeatDataset(torch.utils.data.Dataset):
    """n indices; the collator ignores them and returns the prepared batches in turn."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _BatchCycle:
    """Collator returning the prepared batches in turn (step i gets batch i % n: the Trainer's
    dataloader calls the collator once per step, in order, with one batch of prefetch at most)."""

    def __init__(self, batches: Sequence[Any]) -> None:
        self.batches, self.i = list(batches), 0

    def __call__(self, _features: Any) -> Any:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        return batch


def _training_args(tr: Any, train: Any, tmp: str, device: torch.device, batch_size: int, steps: int) -> Any:
    """The reference's TrainingArguments (bf16 autocast on CUDA, as the reference is configured).

    transformers keeps the mixed-precision choice in ACCELERATE_MIXED_PRECISION and accelerate in
    a process-wide AcceleratorState, so both are reset before building the arguments.
    """
    import os

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
    return tr.build_training_args(train, tmp, device=device, per_device_train_batch_size=batch_size,
                                  max_steps=steps, logging_steps=10**6, save_steps=10**6,
                                  report_to=[], disable_tqdm=True)


def run_reference(ctx: Any, train: Any, batches: Sequence[Any], shapes: Sequence[BatchShape], *, config_name: str,
                  steps: int, warmup: int, batching: str = "fixed", count: bool = True) -> TrainMeasurement:
    """The reference's HF Trainer loop over the prepared batches in turn (its own bf16 autocast over
    bf16 weights on CUDA, optimizer, clip): since issue 15 `reference_impl` carries the reference's
    dtype cast in the audio merge, so it runs as configured."""
    from reference_impl import stages as rs
    from reference_impl import trainer as tr

    m = TrainMeasurement("reference", config_name, shapes[0].batch_size, batching=batching,
                         precision=tr.effective_precision(train, ctx.device),
                         step_shapes=_timed_shapes(shapes, warmup, steps))
    device = ctx.device
    model = trainer = None
    ref_batches = [to_reference_batch(b) for b in batches]
    t_start = time.perf_counter()
    try:
        _reset_peak(device)
        model = rs.build_model(ctx, train)
        m.trainable_params, m.weights_dtype = _trainable(model), _weights_dtype(model)
        clock = StepClock(device, m, warmup)
        with tempfile.TemporaryDirectory(prefix="higgs-bench-ref-") as tmp:
            args = _training_args(tr, train, tmp, device, m.batch_size, warmup + steps)
            trainer = tr.HiggsAudioTrainer(model=model, args=args,
                                           train_dataset=_RepeatDataset(m.batch_size * (warmup + steps)),
                                           data_collator=_BatchCycle(ref_batches),
                                           callbacks=[_step_timer(clock)])
            with frozen_heap():
                result = trainer.train()
        m.losses = [float(result.training_loss)]
        m.peak_memory_gib = _peak(device)
        if count:
            def fwd_bwd() -> None:
                with trainer.compute_loss_context_manager():
                    loss = trainer.compute_loss(trainer.model_wrapped, ref_batches[0])
                loss.backward()
            m.counted_flops_per_step = count_flops(fwd_bwd)
    except Exception as exc:  # noqa: BLE001 - an OOM/crash is a measurement result, reported in the table
        _record_failure(m, exc, device, "reference", config_name)
    finally:
        del model, trainer
        _free()
    m.wall_s = time.perf_counter() - t_start
    return m


def lora_parameter_count(measurement: TrainMeasurement, use_lora: bool) -> int:
    return measurement.trainable_params if use_lora else 0
