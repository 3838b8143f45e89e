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
    from harness.engine import model_ops

    for name, state in side.items():
        info = model_ops.summary(state.model)
        names = info["names"]
        out["trainable"][name] = info["trainable"]
        out["frozen_dtypes"][name] = info["frozen_dtypes"]
        base = [base_name(n) for n in names if "lora_" not in n]
        out["absent_from_checkpoint"][name] = sorted(n for n in base if ckpt_keys and n not in ckpt_keys)
    return out


def base_name(name: str) -> str:
    """peft's 'base_model.model.x.base_layer.weight' -> checkpoint's 'x.weight'."""
    for prefix in ("base_model.model.", "module."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.replace(".base_layer.", ".")
