"""The text tokenizer must fit the model's embedding table, and every special id the pipelines use must too.

Why: tokens added to a tokenizer without resizing the model's embeddings give token ids beyond the
table, and the first batch that holds one stops deep in PyTorch with ``IndexError: index out of
range in self`` (in the reference CLI only after training started), naming neither the tokenizer
nor the model.  Checked when the shared context is built (`higgs_common.context.build_context`),
so both training CLIs and the harness stop before any data is read, and by ``higgs-diff audit
--model``.

Embedding rows are the checkpoint config's ``text_config.vocab_size`` (upstream `HiggsAudioModel`
builds ``embed_tokens`` and the text head with that many rows; `from_pretrained` then loads weights
of that shape).  Special ids: the config's ``pad_token_id``, ``audio_in_token_idx``,
``audio_out_token_idx``, ``audio_out_bos_token_id``, ``audio_eos_token_id`` and the tokenizer's
pad/bos/eos ids and Higgs special tokens (`higgs_common.assets.text_tokenizer.HIGGS_SPECIAL_TOKENS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from higgs_common.stages import SampleError

CONFIG_SPECIAL_IDS = ("pad_token_id", "audio_in_token_idx", "audio_out_token_idx", "audio_out_bos_token_id",
                      "audio_eos_token_id")


class VocabularyMismatchError(SampleError):
    """The tokenizer (or a special id) does not fit the model's embedding table; names both sizes and paths."""


def embedding_rows(model_config: Any) -> int:
    """Rows of the text embedding table: ``text_config.vocab_size`` (or ``vocab_size`` of a plain config)."""
    text_config = getattr(model_config, "text_config", None)
    return int(getattr(text_config, "vocab_size", None) or model_config.vocab_size)


def special_ids(model_config: Any, tokenizer: Any) -> dict[str, int]:
    """Every special id the pipelines use, by name (config fields, then tokenizer ids and Higgs tokens)."""
    from higgs_common.assets.text_tokenizer import HIGGS_SPECIAL_TOKENS

    ids: dict[str, int] = {}
    for name in CONFIG_SPECIAL_IDS:
        value = getattr(model_config, name, None)
        if isinstance(value, int):
            ids[f"config.{name}"] = value
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            ids[f"tokenizer.{name}"] = value
    for token in HIGGS_SPECIAL_TOKENS:
        value = tokenizer.convert_tokens_to_ids(token)
        if isinstance(value, int):
            ids[f"tokenizer[{token!r}]"] = value
    return ids


def check_vocabulary_fits(tokenizer: Any, model_config: Any, *, tokenizer_path: str | Path,
                          model_path: str | Path) -> None:
    """Raise VocabularyMismatchError unless len(tokenizer) <= embedding rows and every special id < rows.

    The error names both sizes, the tokenizer and model paths (field ``vocab_size`` or the
    special id's name) and the fix.
    """
    rows = embedding_rows(model_config)
    size = len(tokenizer)
    if size > rows:
        raise VocabularyMismatchError(
            f"the text tokenizer at {str(tokenizer_path)!r} has {size} tokens but the model at {str(model_path)!r} "
            f"has {rows} embedding rows (text_config.vocab_size): ids {rows}..{size - 1} would index past the "
            f"embedding table; resize the model's embeddings (model.resize_token_embeddings({size})) and save it, "
            f"or use the checkpoint's own tokenizer", sample_id=None, field="vocab_size", path=tokenizer_path)
    bad = {name: i for name, i in special_ids(model_config, tokenizer).items() if not 0 <= i < rows}
    if bad:
        shown = ", ".join(f"{name}={i}" for name, i in bad.items())
        raise VocabularyMismatchError(
            f"special id(s) {shown} are outside the {rows} embedding rows of the model at {str(model_path)!r} "
            f"(tokenizer {str(tokenizer_path)!r}, {size} tokens)", sample_id=None, field=next(iter(bad)),
            path=model_path)
