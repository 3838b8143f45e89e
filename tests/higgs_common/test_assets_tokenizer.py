"""Text tokenizer and model config of the offline checkpoint."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from higgs_common.assets.model import full_config, tiny_config
from higgs_common.assets.text_tokenizer import (
    BUILTIN_CORPUS,
    HIGGS_SPECIAL_TOKENS,
    MissingSpecialTokenError,
    build_text_tokenizer,
    check_special_tokens,
)
from higgs_common.stages import HiggsDiffError


@pytest.fixture(scope="module")
def tok():
    return build_text_tokenizer()


def test_required_tokens_listed():
    required = {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>", "<|eom_id|>", "<|recipient|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>",
                "<|audio_out_bos|>", "<|AUDIO_OUT|>", "<|scene_desc_start|>", "<|scene_desc_end|>"}
    assert required <= set(HIGGS_SPECIAL_TOKENS)
    from boson_multimodal import constants
    assert {constants.AUDIO_IN_TOKEN, constants.AUDIO_OUT_TOKEN, constants.EOS_TOKEN} <= set(HIGGS_SPECIAL_TOKENS)


def test_every_special_token_is_one_id(tok):
    ids = set()
    for t in HIGGS_SPECIAL_TOKENS:
        enc = tok.encode(t, add_special_tokens=False)
        assert len(enc) == 1 and tok.convert_ids_to_tokens(enc[0]) == t
        ids.add(enc[0])
        # also inside running text, as prepare_chatml_sample writes them
        assert enc[0] in tok.encode(f"hello{t}world", add_special_tokens=False)
    assert len(ids) == len(HIGGS_SPECIAL_TOKENS)
    assert min(ids) >= 256, "specials sit after the byte alphabet, like Llama-3's 128000+"


def test_llama_like_bos_eos_pad(tok):
    assert tok.bos_token == "<|begin_of_text|>"
    assert tok.eos_token == tok.pad_token == "<|end_of_text|>"
    assert tok.encode("hi")[0] == tok.bos_token_id
    assert len(tok) == 512


def test_prompt_layout_of_prepare_chatml_sample(tok):
    from boson_multimodal.data_types import AudioContent, ChatMLSample, Message
    from boson_multimodal.dataset.chatml_dataset import prepare_chatml_sample

    sample = ChatMLSample(messages=[
        Message(role="user", content="Say hi."),
        Message(role="assistant", content=AudioContent(audio_url="x.wav")),
    ])
    input_tokens, _, audio, _ = prepare_chatml_sample(sample, tok)
    assert input_tokens is not None and len(audio) == 1
    assert input_tokens.count(tok.convert_tokens_to_ids("<|AUDIO_OUT|>")) == 1
    assert input_tokens[0] == tok.convert_tokens_to_ids("<|begin_of_text|>")


def test_deterministic(tok):
    again = build_text_tokenizer()
    assert again.get_vocab() == tok.get_vocab()
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


@pytest.mark.property
@given(st.text(max_size=80))
def test_any_text_round_trips(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert all(0 <= i < len(tok) for i in ids)


def test_missing_special_token_is_caught():
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import trainers
    raw.train_from_iterator(BUILTIN_CORPUS, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    raw.add_special_tokens([t for t in HIGGS_SPECIAL_TOKENS if t != "<|AUDIO|>"])
    broken = PreTrainedTokenizerFast(tokenizer_object=raw)
    with pytest.raises(MissingSpecialTokenError) as info:
        check_special_tokens(broken, "/some/ckpt")
    assert isinstance(info.value, HiggsDiffError)
    assert "<|AUDIO|>" in str(info.value) and "/some/ckpt" in str(info.value)
    assert len(info.value.ids) > 1, "the trap: the token is split into several byte pieces"


def test_tiny_config_matches_release_layout(tok):
    cfg = tiny_config(tok, num_codebooks=4, codebook_size=32)
    assert cfg.audio_adapter_type == "dual_ffn_fast_forward"
    assert cfg.audio_dual_ffn_layers == [0, 1] and cfg.text_config.num_hidden_layers == 2
    assert cfg.text_config.hidden_size == 64 and cfg.text_config.vocab_size == len(tok)
    assert cfg.skip_audio_tower and cfg.encode_audio_in_tokens and cfg.use_delay_pattern
    assert not cfg.encode_whisper_embed
    assert (cfg.audio_stream_bos_id, cfg.audio_stream_eos_id) == (32, 33)
    ids = tok.convert_tokens_to_ids
    assert cfg.audio_in_token_idx == ids("<|AUDIO|>") and cfg.audio_out_token_idx == ids("<|AUDIO_OUT|>")
    assert cfg.audio_out_bos_token_id == ids("<|audio_out_bos|>") and cfg.audio_eos_token_id == ids("<|audio_eos|>")
    assert cfg.pad_token_id == tok.pad_token_id == cfg.text_config.pad_token_id


def test_full_config_is_the_released_architecture(tok):
    cfg = full_config(tok)
    t = cfg.text_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads,
            t.intermediate_size, t.vocab_size) == (3072, 28, 24, 8, 8192, 128256)
    assert t.rope_theta == 500000.0 and t.rope_scaling["rope_type"] == "llama3"
    assert cfg.audio_dual_ffn_layers == list(range(28))
    assert (cfg.audio_num_codebooks, cfg.audio_codebook_size) == (8, 1024)
    assert (cfg.audio_stream_bos_id, cfg.audio_stream_eos_id) == (1024, 1025)
    assert cfg.audio_in_token_idx == tok.convert_tokens_to_ids("<|AUDIO|>")
