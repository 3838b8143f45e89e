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


def common_train_config(device: torch.device | str) -> TrainConfig:
    """COMMON_TRAIN, with bf16 where the device is a GPU (what people train with there)."""
    if torch.device(device).type == "cuda":
        return COMMON_TRAIN.replace(precision="bf16")
    return COMMON_TRAIN
