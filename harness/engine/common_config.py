"""The declared common configuration under which the harness compares backward and step.

The two pipelines' own defaults differ (LoRA rank, dropout, target modules, optimizer betas,
schedule, precision: see the configuration diff in every report).  Diffing gradients and updated
parameters only makes sense when both sides train the *same* trainable parameters with the *same*
optimizer settings, so the harness runs both under this one configuration, and says so.
"""

from __future__ import annotations

import torch

from higgs_common.stages import TrainConfig

# LoRA on attention + text MLP, dropout 0 (dropout would make two identical sides differ), a
# constant learning rate (one step: the schedule would only scale it), AdamW defaults.
COMMON_TRAIN = TrainConfig(
    use_lora=True,
    lora_r=16,
    lora_alpha=32,
    lora_dropout=0.0,
    lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    learning_rate=1e-3,
    weight_decay=0.0,
    adam_betas=(0.9, 0.999),
    adam_eps=1e-8,
    warmup_steps=0,
    max_steps=1,
    max_grad_norm=1.0,
    schedule="constant",
    precision="fp32",
    seed=0,
)


def common_train_config(device: torch.device | str, precision: str | None = None) -> TrainConfig:
    """COMMON_TRAIN at the given precision.

    `precision=None` means "what people train with there": bf16 on a GPU (benchmarks), fp32 on the
    CPU.  The harness compares in fp32 by default on every device (`COMPARE_PRECISION`): under bf16
    the two pipelines' precision policies differ by design (the reference casts everything,
    LoRA weights included, to bf16; the custom pipeline keeps LoRA weights in fp32 over a bf16
    base), which changes gradients far beyond any meaningful tolerance.
    """
    if precision is None:
        precision = "bf16" if torch.device(device).type == "cuda" else "fp32"
    return COMMON_TRAIN.replace(precision=precision)


COMPARE_PRECISION = "fp32"

# Default tolerances (rtol, atol) for fields the two sides compute with DIFFERENT code (two
# cross-entropy implementations over up to 128k classes, a DDP all-reduce vs one process), where
# fp32 summation order alone moves the last digits.  A trailing '*' matches a prefix.  Everything
# else uses torch.testing's per-dtype defaults; `--tolerance FIELD=RTOL,ATOL` overrides both.
FIELD_TOLERANCES: dict[str, tuple[float, float]] = {
    "text_ce_common": (2e-5, 1e-5),
    "audio_ce_common": (2e-5, 1e-5),
    "text": (2e-5, 1e-5),
    "audio": (2e-5, 1e-5),
    "per_codebook": (2e-5, 1e-5),
    "total": (2e-5, 1e-5),
    "ddp_rank*": (1e-4, 1e-6),
    "ddp_equal*": (0.0, 0.0),      # rank r vs rank 0 after a step: synchronised ranks are bit-identical
}

# On CUDA some backward kernels accumulate with atomics (e.g. the embedding gradient), so two
# identical sides differ in the last bits of gradients and, after one AdamW step, of parameters.
CUDA_FIELD_TOLERANCES: dict[str, tuple[float, float]] = {
    "grad/*": (1e-3, 1e-6),
    "param/*": (1e-4, 1e-6),
    "logits": (1e-4, 1e-5),
    "audio_logits": (1e-4, 1e-5),
    # DDP check (issue 8): N GPUs over NCCL vs one GPU on the same global batch must agree within
    # bf16 tolerance (torch.testing's bf16 defaults); computed in fp32, the honest differences
    # (reduction order, atomics) stay orders of magnitude below it, a missed all-reduce does not.
    "ddp_rank*": (1.6e-2, 1e-5),
}


def tolerance_for(name: str, overrides: dict[str, tuple[float, float]], device: torch.device | str
                  ) -> tuple[float | None, float | None]:
    """User override, else the field's declared default, else (None, None) = torch.testing defaults."""
    tables = [overrides]
    if torch.device(device).type == "cuda":
        tables.append(CUDA_FIELD_TOLERANCES)
    tables.append(FIELD_TOLERANCES)
    for table in tables:
        if name in table:
            return table[name]
        for key, tol in table.items():
            if key.endswith("*") and name.startswith(key[:-1]):
                return tol
    return None, None
