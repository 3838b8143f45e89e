"""build_context: one shared, memoised StageContext over the offline checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from higgs_common.assets.text_tokenizer import MissingSpecialTokenError
from higgs_common.code_cache import CodeCache
from higgs_common.context import build_context
from higgs_common.stages import StageContext


def test_default_context(ctx, assets):
    assert isinstance(ctx, StageContext)
    assert ctx.model_path == assets.model.resolve()
    assert ctx.audio_tokenizer_path == assets.audio_tokenizer.resolve()
    assert ctx.device == torch.device("cpu") and ctx.faults == frozenset() and ctx.seed == 0
    assert isinstance(ctx.code_cache, CodeCache)
    assert ctx.model_config.audio_num_codebooks == ctx.code_cache.audio_tokenizer.n_q
    assert ctx.model_config.audio_in_token_idx == ctx.text_tokenizer.convert_tokens_to_ids("<|AUDIO|>")


def test_none_paths_mean_default_assets(ctx):
    other = build_context()
    assert other.model_path == ctx.model_path


def test_heavy_objects_are_shared_per_context(ctx, assets):
    other = build_context(assets.model, assets.audio_tokenizer, faults=["x"], seed=3, options={"task": "t"})
    assert other.text_tokenizer is ctx.text_tokenizer
    assert other.code_cache is ctx.code_cache
    assert other.model_config is ctx.model_config
    assert other.faults == frozenset({"x"}) and other.seed == 3 and other.options == {"task": "t"}
    assert ctx.options == {}


def test_own_cache_dir_gets_its_own_cache(assets, tmp_path, ctx):
    other = build_context(assets.model, assets.audio_tokenizer, cache_dir=tmp_path)
    assert other.code_cache is not ctx.code_cache and other.code_cache.root == tmp_path.resolve()
    assert other.code_cache.audio_tokenizer is ctx.code_cache.audio_tokenizer   # codec loaded once


def test_sample_data_codes(ctx, records):
    rec = records[0]
    codes = ctx.code_cache.codes(rec.audio, sample_id=rec.id, field="audio")
    assert codes.shape[0] == ctx.model_config.audio_num_codebooks
    assert 0 <= int(codes.min()) and int(codes.max()) < ctx.model_config.audio_codebook_size


def test_tokenizer_without_a_special_token_is_rejected(assets, tmp_path):
    bad = tmp_path / "model"
    shutil.copytree(assets.model, bad)
    tj = json.loads((bad / "tokenizer.json").read_text())
    tj["added_tokens"] = [t for t in tj["added_tokens"] if t["content"] != "<|AUDIO_OUT|>"]
    (bad / "tokenizer.json").write_text(json.dumps(tj))
    tc = json.loads((bad / "tokenizer_config.json").read_text())
    tc["added_tokens_decoder"] = {k: v for k, v in tc.get("added_tokens_decoder", {}).items()
                                  if v["content"] != "<|AUDIO_OUT|>"}
    (bad / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(MissingSpecialTokenError, match=r"AUDIO_OUT") as info:
        build_context(bad, assets.audio_tokenizer)
    assert str(bad) in str(info.value)
