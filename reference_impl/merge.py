"""`python -m reference_impl.merge --adapter DIR --out DIR`: fold LoRA adapters into the base model.

The reference's `trainer/merger.py` does the same: load `HiggsAudioModel` from the base
checkpoint, `PeftModel.from_pretrained(base, adapter)`, `merge_and_unload()`, `save_pretrained`,
save the tokenizer, write `merge_info.json`.  The result loads with
`HiggsAudioModel.from_pretrained(out)`.  The base path defaults to the adapter's
`base_model_name_or_path` (written by PEFT at training time).

Deviation: the reference loads the base in bf16 with `device_map="auto"`; we load in the dtype
given by `--dtype` (default fp32) on CPU, so merging never needs a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
from boson_multimodal.model.higgs_audio import HiggsAudioModel
from peft import PeftConfig, PeftModel
from transformers import AutoTokenizer

logger = logging.getLogger("reference_impl.merge")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class MergeError(ValueError):
    """The adapter folder or base model cannot be used for merging."""


def merge_lora(adapter_dir: Path, out_dir: Path, base_model_path: Optional[Path] = None, *,
               dtype: torch.dtype = torch.float32, save_tokenizer: bool = True) -> Path:
    """Merge the LoRA adapters in `adapter_dir` into their base model; save to `out_dir`."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise MergeError(f"{adapter_dir} has no adapter_config.json (not a PEFT adapter folder)")
    peft_config = PeftConfig.from_pretrained(str(adapter_dir))
    base = Path(base_model_path) if base_model_path is not None else Path(peft_config.base_model_name_or_path or "")
    if not (base / "config.json").is_file():
        raise MergeError(f"base model {str(base)!r} (from {'--base-model' if base_model_path else 'adapter_config.json'})"
                         " has no config.json; pass --base-model")
    logger.info("merging %s into %s", adapter_dir, base)
    model = HiggsAudioModel.from_pretrained(str(base), torch_dtype=dtype)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir))
    if save_tokenizer:
        AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out_dir))
    info = {"base_model": str(base), "lora_adapter": str(adapter_dir),
            "merged_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "model_type": "higgs-audio-v2-lora-merged"}
    (out_dir / "merge_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out_dir


def main(argv: Optional[Sequence[str]] = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m reference_impl.merge", description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", type=Path, required=True, help="LoRA adapter folder (e.g. <run>/lora_adapters)")
    p.add_argument("--out", type=Path, required=True, help="where to save the merged model")
    p.add_argument("--base-model", type=Path, default=None, help="default: the adapter's base_model_name_or_path")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--no-save-tokenizer", dest="save_tokenizer", action="store_false")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = merge_lora(args.adapter, args.out, args.base_model, dtype=DTYPES[args.dtype],
                     save_tokenizer=args.save_tokenizer)
    logger.info("merged model saved to %s", out)
    return out


if __name__ == "__main__":
    main()
