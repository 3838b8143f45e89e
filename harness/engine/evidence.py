"""Facts about the models the stages gather for explanations (harness.explain.causes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def parameter_evidence(side: dict[str, Any], model_path: Path) -> dict:
    """Parameter names absent from the checkpoint (randomly initialised layers) and trainable sets."""
    from safetensors import safe_open

    ckpt_keys: set[str] = set()
    for f in sorted(Path(model_path).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            ckpt_keys.update(fh.keys())
    out: dict[str, Any] = {"trainable": {}, "absent_from_checkpoint": {}, "frozen_dtypes": {}}
    for name, state in side.items():
        names = [n for n, _ in state.model.named_parameters()]
        out["trainable"][name] = [n for n, p in state.model.named_parameters() if p.requires_grad]
        out["frozen_dtypes"][name] = sorted({str(p.dtype) for p in state.model.parameters() if not p.requires_grad})
        base = [base_name(n) for n in names if "lora_" not in n]
        out["absent_from_checkpoint"][name] = sorted(n for n in base if ckpt_keys and n not in ckpt_keys)
    return out


def base_name(name: str) -> str:
    """peft's 'base_model.model.x.base_layer.weight' -> checkpoint's 'x.weight'."""
    for prefix in ("base_model.model.", "module."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.replace(".base_layer.", ".")
