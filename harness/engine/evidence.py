"""Facts about the models the stages gather for explanations (harness.explain.causes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from higgs_common.param_names import canonical_name, common_prefix_alignment


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
        base = [canonical_name(n) for n in names if "lora_" not in n]
        drop, _ = common_prefix_alignment(base, ckpt_keys) if ckpt_keys else ("", "")
        base = [n[len(drop):] if n.startswith(drop) else n for n in base]
        out["absent_from_checkpoint"][name] = sorted(n for n in base if ckpt_keys and n not in ckpt_keys)
    return out


def base_name(name: str) -> str:
    """peft's 'base_model.model.x.base_layer.weight' -> checkpoint's 'x.weight' (`canonical_name`)."""
    return canonical_name(name)
