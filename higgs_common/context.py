"""Build the one `StageContext` both pipelines share: same tokenizer, codec, code cache and config.

Loading goes through the public loaders a real checkpoint would use (`AutoTokenizer`,
`HiggsAudioConfig.from_pretrained`, upstream `load_higgs_audio_tokenizer` via
`higgs_common.assets.codec.load_audio_tokenizer`), so the tiny offline checkpoint exercises the
same code paths as the released one.  The heavy objects are memoised per (path, device): tests
build many contexts and must not reload the codec each time.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from higgs_common.stages import StageContext


@functools.lru_cache(maxsize=8)
def _load_text_tokenizer(model_path: Path):
    from transformers import AutoTokenizer

    from higgs_common.assets.text_tokenizer import check_special_tokens

    tok = AutoTokenizer.from_pretrained(str(model_path))
    check_special_tokens(tok, model_path)
    return tok


@functools.lru_cache(maxsize=8)
def _load_model_config(model_path: Path):
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig

    return HiggsAudioConfig.from_pretrained(str(model_path))


@functools.lru_cache(maxsize=4)
def _load_codec(audio_tokenizer_path: Path, device: str, fingerprint: str):
    """Keyed by fingerprint too, so a rebuilt codec folder is reloaded."""
    from higgs_common.assets.codec import load_audio_tokenizer

    del fingerprint
    return load_audio_tokenizer(audio_tokenizer_path, device=device)


@functools.lru_cache(maxsize=8)
def _code_cache(cache_dir: Path, audio_tokenizer_path: Path, device: str, fingerprint: str):
    from higgs_common.code_cache import CodeCache

    return CodeCache(cache_dir, _load_codec(audio_tokenizer_path, device, fingerprint), fingerprint)


def build_context(model_path: Path | None = None, audio_tokenizer_path: Path | None = None, *,
                  device: str | torch.device = "cpu", faults: Iterable[str] = (), seed: int = 0,
                  cache_dir: Path | None = None, options: Mapping[str, Any] | None = None) -> StageContext:
    """A `StageContext` over the given checkpoint (None: the default tiny assets, built if missing).

    The codec is loaded onto `device`.  The tokenizer, config, codec and code cache are shared
    between contexts of the same paths (memoised); `faults`, `seed` and `options` are per context.
    Codes do not depend on the device the codec ran on only up to float rounding, which is why
    the harness hands both pipelines one context.
    """
    from higgs_common.assets.codec import codec_fingerprint
    from higgs_common.assets.paths import default_code_cache_dir, ensure_default_assets

    if model_path is None or audio_tokenizer_path is None:
        assets = ensure_default_assets()
        model_path = model_path if model_path is not None else assets.model
        audio_tokenizer_path = audio_tokenizer_path if audio_tokenizer_path is not None else assets.audio_tokenizer
    model_path = Path(model_path).resolve()
    audio_tokenizer_path = Path(audio_tokenizer_path).resolve()
    cache_dir = Path(cache_dir).resolve() if cache_dir is not None else default_code_cache_dir()
    device = torch.device(device)
    fingerprint = codec_fingerprint(audio_tokenizer_path)
    return StageContext(
        model_path=model_path,
        audio_tokenizer_path=audio_tokenizer_path,
        text_tokenizer=_load_text_tokenizer(model_path),
        code_cache=_code_cache(cache_dir, audio_tokenizer_path, str(device), fingerprint),
        model_config=_load_model_config(model_path),
        device=device,
        faults=frozenset(faults),
        seed=seed,
        options=dict(options or {}),
    )


def clear_context_caches() -> None:
    """Forget every memoised tokenizer/config/codec (tests that rebuild assets in place)."""
    for fn in (_load_text_tokenizer, _load_model_config, _load_codec, _code_cache):
        fn.cache_clear()
