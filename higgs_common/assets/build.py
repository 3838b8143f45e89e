"""Build the offline random-init checkpoint: ``python -m higgs_common.assets.build --help``.

There is no model hub here, so the harness runs on a checkpoint built locally and laid out like the
released one (`HiggsAudioModel.save_pretrained` + the text tokenizer in one folder, the codec's
``config.json`` + ``model.pth`` in another).  Everything is seeded: the same `--seed` gives
bit-identical weights and codes.

* ``--size tiny`` (default): 2-layer hidden-64 backbone, 8 x 1024 codec (the released discrete sizes);
  under a minute on a CPU.
* ``--size probe``: the tiny backbone with a 4 x 32 codec, only for the copy-probe demonstration
  of `reference-audio-as-label` (docs/training.md, "Watching reference-audio-as-label collapse").
* ``--size full``: the released architecture (5.77 B parameters).  By default it is only
  instantiated on the meta device and its parameter count printed; ``--materialize`` writes real
  bf16 weights (needs ~11 GiB; meant for the GPU machine).
* ``--meta``: the meta-device look for any size; ``--info``: print a folder's build_info.json.

The folder is built in a temporary sibling and renamed into place, so an interrupted build never
leaves a half checkpoint where loaders look.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Sequence

import torch

from higgs_common import DATA_DIR
from higgs_common.assets.paths import (
    BUILD_INFO,
    BUILD_VERSION,
    AssetPaths,
    build_lock,
    default_assets_dir,
    default_code_cache_dir,
)

SIZES = ("tiny", "probe", "full")


def parameter_count(size: str = "full", seed: int = 0) -> int:
    """Parameters of the `size` model, counted on the meta device (no memory used, nothing written)."""
    from higgs_common.assets.codec import CODEC_SIZES
    from higgs_common.assets.model import build_model, count_parameters, full_config, tiny_config
    from higgs_common.assets.text_tokenizer import build_text_tokenizer

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    text_tok = build_text_tokenizer(seed=seed)
    if size == "full":
        config = full_config(text_tok)
    else:
        codec_cfg = CODEC_SIZES[size][0]
        config = tiny_config(text_tok, num_codebooks=codec_cfg["n_q"], codebook_size=codec_cfg["bins"])
    return count_parameters(build_model(config, seed, device="meta"))


def full_parameter_count(seed: int = 0) -> int:
    """Parameters of the released architecture (5.77 B), counted on the meta device."""
    return parameter_count("full", seed)


def _versions() -> dict[str, str]:
    import boson_multimodal  # noqa: F401  (imported for its version)
    import transformers
    from importlib.metadata import version

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "boson_multimodal": version("boson-multimodal")}


def _build_into(tmp: Path, *, size: str, seed: int, device: str) -> dict:
    """Write model/, audio_tokenizer/ and build_info.json into `tmp`; returns the build info."""
    from higgs_common.assets.codec import build_audio_tokenizer, codec_fingerprint, save_audio_tokenizer
    from higgs_common.assets.model import build_model, count_parameters, full_config, tiny_config
    from higgs_common.assets.text_tokenizer import build_text_tokenizer

    t0 = time.perf_counter()
    paths = AssetPaths.at(tmp)
    text_tok = build_text_tokenizer(seed=seed)
    codec = build_audio_tokenizer(size, seed, device=device if size == "full" else "cpu")
    num_codebooks, codebook_size = int(codec.n_q), int(codec.quantizer.bins)
    if size in ("tiny", "probe"):
        config = tiny_config(text_tok, num_codebooks=num_codebooks, codebook_size=codebook_size)
        dtype = torch.float32
    else:
        config = full_config(text_tok)
        dtype = torch.bfloat16
        if (config.audio_num_codebooks, config.audio_codebook_size) != (num_codebooks, codebook_size):
            raise RuntimeError("full model and full codec disagree on codebooks")
    model = build_model(config, seed, device=device, dtype=dtype)
    model.save_pretrained(paths.model, safe_serialization=True)
    text_tok.save_pretrained(paths.model)
    save_audio_tokenizer(codec, paths.audio_tokenizer)
    info = dict(
        build_version=BUILD_VERSION, size=size, seed=seed,
        text_vocab=len(text_tok), num_codebooks=num_codebooks, codebook_size=codebook_size,
        model_parameters=count_parameters(model),
        codec_parameters=sum(p.numel() for p in codec.parameters()),
        codec_fingerprint=codec_fingerprint(paths.audio_tokenizer),
        dtype=str(dtype).removeprefix("torch."), versions=_versions(),
        build_seconds=round(time.perf_counter() - t0, 2),
    )
    (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")  # written last
    return info


def build_assets(out: Path, *, size: str = "tiny", seed: int = 0, device: str | None = None) -> AssetPaths:
    """Build real weights into `out` atomically (temp sibling + rename); replaces an existing folder.

    Callers that may race should hold :func:`higgs_common.assets.paths.build_lock` (as
    `ensure_default_assets` does).  For a look at the full model without weights, use
    :func:`parameter_count` (meta device).
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if device is None:
        device = "cuda" if (size == "full" and torch.cuda.is_available()) else "cpu"
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _build_into(tmp, size=size, seed=seed, device=device)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return AssetPaths.at(out)


def encode_data(paths: AssetPaths, data_dir: Path, cache_dir: Path, console) -> list[tuple[str, int, str]]:
    """Encode every wav under `data_dir` into the code cache; returns (file, frames, hit|miss) rows."""
    from rich.progress import track

    from higgs_common.assets.codec import codec_fingerprint, load_audio_tokenizer
    from higgs_common.code_cache import CodeCache

    codec = load_audio_tokenizer(paths.audio_tokenizer, device="cpu")
    cache = CodeCache(cache_dir, codec, codec_fingerprint(paths.audio_tokenizer))
    rows = []
    wavs = sorted(Path(data_dir).rglob("*.wav"))
    for wav in track(wavs, description="encoding data/", console=console):
        misses = cache.stats.misses
        codes = cache.codes(wav, sample_id=wav.stem, field="audio")   # (num_codebooks, T)
        rows.append((str(wav.relative_to(data_dir)), int(codes.shape[1]),
                     "miss" if cache.stats.misses > misses else "hit"))
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m higgs_common.assets.build",
        description="Build the offline random-init Higgs Audio v2 checkpoint (model + text tokenizer + codec).")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: $HIGGS_DIFF_ASSETS or <repo>/.cache/assets/<size>-seed<seed>)")
    p.add_argument("--size", choices=SIZES, default="tiny", help="tiny (CPU tests), probe (tiny with 4 x 32 codes: the copy-probe demonstration) "
                        "or full (released architecture)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random init (default 0)")
    p.add_argument("--materialize", action="store_true",
                   help="with --size full: write real bf16 weights instead of only counting on the meta device")
    p.add_argument("--device", default=None, help="device to build the model on (default: cuda for full if present)")
    p.add_argument("--encode-data", dest="encode_data", action=argparse.BooleanOptionalAction, default=None,
                   help="encode every wav under data/ into the code cache (default: on for tiny)")
    p.add_argument("--cache-dir", type=Path, default=None, help="code cache folder (default <repo>/.cache/codes)")
    p.add_argument("--meta", action="store_true",
                   help="only instantiate the model on the meta device and print its parameter count "
                        "(the default for --size full unless --materialize)")
    p.add_argument("--info", action="store_true", help="print the build_info.json of the folder and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    args = _parser().parse_args(argv)
    console = Console(stderr=False)
    out = args.out if args.out is not None else default_assets_dir(args.size, args.seed)
    paths = AssetPaths.at(out)

    if args.info:
        info = paths.build_info()
        if info is None:
            console.print(f"[red]no build in {out}[/red]")
            return 1
        console.print_json(json.dumps(info))
        return 0

    if args.meta or (args.size == "full" and not args.materialize):
        if args.meta and args.materialize:
            console.print("[red]--meta and --materialize exclude each other[/red]")
            return 2
        t0 = time.perf_counter()
        n = parameter_count(args.size, args.seed)
        console.print(f"{args.size} model on the meta device: [bold]{n:,}[/bold] parameters "
                      f"({n / 1e9:.2f} B, {n * 2 / 2**30:.1f} GiB in bf16) in {time.perf_counter() - t0:.1f} s; "
                      "nothing written (use --materialize to write weights)")
        return 0

    with console.status(f"building {args.size} assets (seed {args.seed}) into {out}"):
        with build_lock(out):
            build_assets(out, size=args.size, seed=args.seed, device=args.device)
    info = paths.build_info()
    table = Table(title=f"built {out}")
    table.add_column("field")
    table.add_column("value")
    for key in ("size", "seed", "text_vocab", "num_codebooks", "codebook_size", "model_parameters",
                "codec_parameters", "codec_fingerprint", "dtype", "build_seconds"):
        table.add_row(key, f"{info[key]:,}" if isinstance(info[key], int) else str(info[key]))
    console.print(table)

    encode = args.encode_data if args.encode_data is not None else args.size == "tiny"
    if encode:
        if not DATA_DIR.is_dir():
            console.print(f"[yellow]no {DATA_DIR}; skipping --encode-data[/yellow]")
        else:
            rows = encode_data(paths, DATA_DIR, args.cache_dir or default_code_cache_dir(), console)
            t = Table(title=f"codes of {len(rows)} wavs under {DATA_DIR}")
            for col in ("file", "frames", "cache"):
                t.add_column(col)
            for r in rows:
                t.add_row(r[0], str(r[1]), r[2])
            console.print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
