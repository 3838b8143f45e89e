"""The stage interface every pipeline adapter implements, and the neutral types that cross it.

Why this lives in `higgs_common` and not in `harness`: pipelines must never import the harness, yet
the harness must be able to call *the same function* on either side and feed any stage the other
side's output (isolated mode).  So the contract sits in the neutral package and each pipeline
exposes one adapter module (`reference_impl.stages`, `custom_impl.stages`, or a user's own
`mypkg/higgs_stages.py`, given to the harness by `--reference SPEC --custom SPEC`) with these
module-level names (`REQUIRED_CONTRACT`):

    NAME: str                                        # short name for reports
    CONVENTIONS: higgs_common.conventions.Conventions  # what the pipeline declares about itself
    DEFAULT_TRAIN: TrainConfig                       # its own training recipe (LoRA, optimizer, schedule)
    write_native(records, out_dir) -> Path           # canonical records -> the pipeline's own format
    dataset(native_path, ctx) -> list[DatasetItem]   # its own loader; one item per record, in order
    collate(items, ctx) -> batch                     # list[DatasetItem] -> HiggsAudioBatchInput-like object
    build_model(ctx, train) -> torch.nn.Module        # from ctx.model_path, LoRA as `train` says, train() mode
    forward(model, batch, ctx) -> ForwardOutputs
    loss(outputs, batch, ctx) -> LossBreakdown
    backward(loss, model) -> dict[str, Tensor | None]  # grads of trainable params by name; None = no grad reached
    make_optimizer(model, train) -> (optimizer, scheduler)   # a torch optimizer and LR scheduler
    step(model, optimizer, ctx, train) -> dict[str, Tensor]  # clip to train.max_grad_norm, optimizer.step(),
                                                             # zero_grad; returns trainable params (the
                                                             # caller steps the scheduler, as HF Trainer does,
                                                             # unless step takes a `scheduler=` keyword: then
                                                             # the harness hands it over and the adapter's own
                                                             # update order runs)
    effective_config(ctx, train) -> dict[str, Any]   # settings for the configuration stage

`make_optimizer` always gets a model the adapter's own `build_model` built.  `forward_and_loss(model,
batch, ctx) -> (ForwardOutputs | None, LossBreakdown)` may replace `forward` + `loss` (fused training
code; `harness.engine.fused` derives the two, `higgs_common.capture` records its cross-entropy
calls), and `train_step(model, batch, optimizer, ctx, train)` may replace `backward` + `step` (an
inline loop body: forward, loss, backward(), clipping, optimizer.step(), zero_grad on one batch;
`harness.engine.fused` derives the two from it).  Outputs listed in `OPTIONAL_OUTPUTS` may be None: "not compared", never a divergence.

Optional names: `VERSION` (str, shown in reports), `FAULTS` (name -> object with `stage` and
`symptom`: faults the adapter can switch on by name through `ctx.faults`), and `ddp_run(ctx, train,
items, *, world_size, grad_accum, steps, init_state=None, grad_noise=0.0)` (the pipeline's own
gradient-accumulation/DDP micro-step, run in-process for world_size 1; see custom_impl.stages).

`effective_config` returns the sections of `EFFECTIVE_CONFIG_SECTIONS`, each a flat dict of
settings (machine-readable values, not prose), so the harness can diff them key by key.

`ctx.faults` carries named faults; a pipeline must reject a fault name it does not know with
`UnknownFaultError`.  `python -m harness.check_adapter SPEC` checks an adapter against all of this.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence, runtime_checkable

import torch

from higgs_common.errors import HiggsDiffError, SampleError, UnknownFaultError  # noqa: F401  (re-exported)

if TYPE_CHECKING:   # annotations only: manifest.py imports SampleError from here
    from higgs_common.manifest import CanonicalRecord


# Sections of `effective_config(ctx, train)`, each a flat dict of settings:
#   message_layout: messages, reference_audio_placement, target_audio_placement, start_index, trained_turns
#   collator:       class, the upstream HiggsAudioSampleCollator parameters, label_audio_ids (source),
#                   deep_copy_samples
#   loss:           text, audio, total (how each is reduced), audio_labels, audio_shift,
#                   delay_pattern_in_training, ddp_normalisation
#   lora:           enabled, r, alpha, dropout, target_modules, bias, task_type
#   optimizer:      class, lr, betas, eps, weight_decay, no_decay, max_grad_norm
#   schedule:       type, warmup_steps, max_steps
#   precision:      mode (on this device), autocast, weights_dtype
#   distributed:    launcher, wrapper, backend, no_sync, sampler, find_unused_parameters
#   faults:         list of the faults switched on (custom pipeline only)
EFFECTIVE_CONFIG_SECTIONS: tuple[str, ...] = (
    "message_layout", "collator", "loss", "lora", "optimizer", "schedule", "precision", "distributed", "faults",
)

REQUIRED_CONTRACT: tuple[str, ...] = (
    "NAME", "CONVENTIONS", "DEFAULT_TRAIN", "write_native", "dataset", "collate", "build_model", "forward", "loss",
    "backward", "make_optimizer", "step", "effective_config",
)


@dataclass
class StageContext:
    """Everything a stage needs besides its direct input; identical for both pipelines.

    The harness builds ONE context and hands it to both sides, which is how it guarantees
    "same tokenizer, same codec, same weights".
    """

    model_path: Path                 # checkpoint folder (HiggsAudioModel + text tokenizer)
    audio_tokenizer_path: Path       # codec folder (config.json + model.pth)
    text_tokenizer: Any              # transformers.PreTrainedTokenizerFast
    code_cache: Any                  # higgs_common.code_cache.CodeCache (encodes each wav once)
    model_config: Any                # HiggsAudioConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    faults: frozenset[str] = frozenset()
    seed: int = 0
    # Pipeline-specific knobs (e.g. reference task type); the harness fills both from its config.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; each pipeline has its own defaults, the harness declares a common one."""

    use_lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    max_steps: int = 20
    max_grad_norm: float = 1.0
    schedule: str = "linear"          # "linear" | "cosine" | "constant"
    precision: str = "fp32"           # "fp32" | "bf16"
    seed: int = 0

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


@dataclass
class DatasetItem:
    """One dataset-stage output: the upstream sample plus the bookkeeping the harness diffs.

    `target_audio_index` / `reference_audio_index` index into the sample's audio list
    (`audio_ids_start`), so projections can pull "the codes this side trains on" and "the
    reference clip this side shows the model" without knowing the message layout.
    """

    sample_id: str
    sample: Any                                  # boson ChatMLDatasetSample
    target_audio_index: Optional[int]            # which audio is the training target
    reference_audio_index: Optional[int]         # which audio is the voice prompt (None: none)
    label_audio_indices: tuple[int, ...] = ()    # every audio the pipeline treats as a label
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ForwardOutputs:
    """The model outputs both pipelines agree on (upstream `HiggsAudioModel` field names)."""

    logits: torch.Tensor                          # (B, L_exp, vocab)
    # optional (None): see OPTIONAL_OUTPUTS for what each costs
    audio_logits: Optional[torch.Tensor]          # (N_audio_out_frames, num_codebooks, codebook_size + 2)
    expanded_labels: Optional[torch.Tensor]       # (B, L_exp), -100 at every audio position
    expanded_input_ids: Optional[torch.Tensor]    # (B, L_exp)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossBreakdown:
    """A loss split into the terms people look at when "audio loss is 0.0".

    `total` keeps the autograd graph; the other tensors are detached summaries.
    `audio_supervised_tokens == 0` together with `has_target_audio` is exactly the seed report's
    failure, so both are recorded rather than inferred.
    """

    total: torch.Tensor                           # scalar, differentiable
    # The fields below marked optional may be None (`OPTIONAL_OUTPUTS` says what that costs).
    text: Optional[torch.Tensor]                  # scalar; optional
    audio: Optional[torch.Tensor]                 # scalar; optional
    per_codebook: Optional[torch.Tensor]          # (num_codebooks,); optional
    text_supervised_tokens: Optional[int]         # optional
    audio_supervised_tokens: Optional[int]        # frames x codebooks with a label != -100; optional
    has_target_audio: bool
    reduction: str = ""                           # human-readable description of the reduction
    notes: tuple[str, ...] = ()
    # Per-position cross-entropy, indexed by the position of the TARGET (label) token, NaN where
    # this side supervises nothing.  These let the harness compare two differently-reduced losses
    # on the positions both supervise ("per-codebook CE on common positions").
    audio_token_ce: Optional[torch.Tensor] = None  # (N_audio_out_frames, num_codebooks), detached
    text_token_ce: Optional[torch.Tensor] = None   # (B, L_exp), detached


# Outputs an adapter may leave as None, and what the comparison loses without them (shown by
# `python -m harness.check_adapter` and, per run, as "not compared" in the stage notes; never a
# divergence).  `higgs_common.capture` recovers most of them from a fused forward-and-loss call.
OPTIONAL_OUTPUTS: dict[str, dict[str, str]] = {
    "forward": {
        "audio_logits": "forward/audio_logits across sides; the loss stage's audio oracle for this side",
        "expanded_labels": "forward/expanded_labels; the declared text loss and the text no-shift cause",
        "expanded_input_ids": "forward/expanded_input_ids and the decoded text context of forward divergences",
    },
    "loss": {
        "text": "loss/text across sides and against the declared reduction",
        "audio": "loss/audio across sides and against the declared reduction",
        "per_codebook": "loss/per_codebook across sides and per_codebook@<side> (which codebook diverges)",
        "text_supervised_tokens": "text_supervised_tokens across sides and @<side> (the supervised-count causes)",
        "audio_supervised_tokens": "audio_supervised_tokens across sides and @<side> (the 'audio loss is 0.0' "
                                   "count)",
        "audio_token_ce": "audio_ce_common (per-codebook CE on common positions), audio_token_ce@<side> and the "
                          "audio shift cause",
        "text_token_ce": "text_ce_common, text_token_ce@<side> and the text no-shift cause",
    },
}


def omitted_outputs(stage: str, output: Any) -> dict[str, str]:
    """{field: what its absence costs} of the optional outputs (`OPTIONAL_OUTPUTS`) that `output`
    (a ForwardOutputs or LossBreakdown) leaves as None (or lacks)."""
    return {name: cost for name, cost in OPTIONAL_OUTPUTS.get(stage, {}).items()
            if getattr(output, name, None) is None}


@runtime_checkable
class PipelineStages(Protocol):
    """Static description of `<pipeline>.stages` (modules satisfy it structurally)."""

    NAME: str

    def write_native(self, records: Sequence[CanonicalRecord], out_dir: Path) -> Path: ...
    def dataset(self, native_path: Path, ctx: StageContext) -> list[DatasetItem]: ...
    def collate(self, items: Sequence[DatasetItem], ctx: StageContext) -> Any: ...
    def build_model(self, ctx: StageContext, train: TrainConfig) -> torch.nn.Module: ...
    def forward(self, model: torch.nn.Module, batch: Any, ctx: StageContext) -> ForwardOutputs: ...
    def loss(self, outputs: ForwardOutputs, batch: Any, ctx: StageContext) -> LossBreakdown: ...
    def backward(self, loss: LossBreakdown, model: torch.nn.Module) -> dict[str, Optional[torch.Tensor]]: ...
    def step(self, model: torch.nn.Module, optimizer: Any, ctx: StageContext,
             train: TrainConfig) -> dict[str, torch.Tensor]: ...
    def make_optimizer(self, model: torch.nn.Module, train: TrainConfig) -> tuple[Any, Any]: ...
    def effective_config(self, ctx: StageContext, train: TrainConfig) -> dict[str, Any]: ...
