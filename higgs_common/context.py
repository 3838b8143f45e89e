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

from higgs_common.stages import HiggsDiffError, StageContext
from higgs_common.vocab import check_vocabulary_fits


class CodecMismatchError(HiggsDiffError, ValueError):
    """The checkpoint's audio head does not fit the audio tokenizer (codebook count or size).

    Without this check a mismatch shows up much later as an index error inside the embedding, or
    not at all (codes < codebook_size of a bigger head train silently against the wrong codec).
    """


def codec_codebooks(audio_tokenizer_path: Path) -> tuple[int, int]:
    """(num_codebooks, codebook_size) from the codec folder's config.json (`n_q`, `bins`).

    `bins` is an int for the RVQ codec; a list of FSQ levels means prod(levels) codes.  (Upstream's
    `HiggsAudioTokenizer.codebook_size` property returns the quantizer *dimension*, so it is not used.)
    """
    import json
    import math

    cfg_path = Path(audio_tokenizer_path) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        n_q, bins = int(cfg["n_q"]), cfg["bins"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CodecMismatchError(f"cannot read n_q/bins from codec config {str(cfg_path)!r}: {exc}") from exc
    size = int(bins) if isinstance(bins, (int, float)) else int(math.prod(int(b) for b in bins))
    return n_q, size


def check_codec_matches(model_config: Any, model_path: Path, audio_tokenizer_path: Path) -> None:
    """Raise `CodecMismatchError` unless the checkpoint's codebook count and size equal the codec's."""
    n_q, size = codec_codebooks(audio_tokenizer_path)
    pairs = (("audio_num_codebooks", int(model_config.audio_num_codebooks), n_q, "n_q"),
             ("audio_codebook_size", int(model_config.audio_codebook_size), size, "bins"))
    for field, model_value, codec_value, codec_field in pairs:
        if model_value != codec_value:
            raise CodecMismatchError(
                f"checkpoint {str(model_path)!r} config field {field!r} = {model_value} but audio tokenizer "
                f"{str(audio_tokenizer_path)!r} config field {codec_field!r} gives {codec_value}: "
                f"the checkpoint was not trained with this codec")


@functools.lru_cache(maxsize=8)
def _load_text_tokenizer(model_path: Path):
    from transformers import AutoTokenizer

    from higgs_common.assets.text_tokenizer import check_special_tokens

    tok = AutoTokenizer.from_pretrained(str(model_path))
    check_special_tokens(tok, model_path)
    return tok


def load_text_tokenizer(model_path: Path | None = None):
    """The text tokenizer of checkpoint `model_path` (None: the default tiny assets, built if missing),
    memoised and checked for the Higgs special tokens, without loading the codec."""
    if model_path is None:
        from higgs_common.assets.paths import ensure_default_assets

        model_path = ensure_default_assets().model
    return _load_text_tokenizer(Path(model_path).resolve())


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

    Raises `CodecMismatchError` when the codec does not fit the checkpoint and
    `higgs_common.vocab.VocabularyMismatchError` when the tokenizer does not fit its embedding table.
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
    model_config = _load_model_config(model_path)
    check_codec_matches(model_config, model_path, audio_tokenizer_path)
    text_tokenizer = _load_text_tokenizer(model_path)
    check_vocabulary_fits(text_tokenizer, model_config, tokenizer_path=model_path, model_path=model_path)
    return StageContext(
        model_path=model_path,
        audio_tokenizer_path=audio_tokenizer_path,
        text_tokenizer=text_tokenizer,
        code_cache=_code_cache(cache_dir, audio_tokenizer_path, str(device), fingerprint),
        model_config=model_config,
        device=device,
        faults=frozenset(faults),
        seed=seed,
        options=dict(options or {}),
    )


def clear_context_caches() -> None:
    """Forget every memoised tokenizer/config/codec (tests that rebuild assets in place)."""
    for fn in (_load_text_tokenizer, _load_model_config, _load_codec, _code_cache):
        fn.cache_clear()
