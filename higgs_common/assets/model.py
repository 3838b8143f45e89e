"""HiggsAudioConfig builders (tiny for CPU tests, full = the released architecture) and a seeded model.

Why the config is written out field by field: the harness's claim "both pipelines load the same
checkpoint" is only worth something if that checkpoint is laid out like the released
`bosonai/higgs-audio-v2-generation-3B-base` — the same adapter type (dual FFN on every layer),
the same skipped Whisper tower, audio-in as codes, the delay pattern, and special token ids that
come from the tokenizer stored next to the weights.  The tiny variant only shrinks sizes.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from boson_multimodal.model.higgs_audio import HiggsAudioConfig, HiggsAudioModel

from higgs_common.assets.text_tokenizer import BOS_TOKEN, EOS_TOKEN, check_special_tokens

# Released Llama-3.2-3B backbone (config.json of the released checkpoint's text_config).
FULL_TEXT_CONFIG: dict[str, Any] = dict(
    model_type="llama",
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=28,
    num_attention_heads=24,
    num_key_value_heads=8,
    head_dim=128,
    hidden_act="silu",
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling=dict(factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
                      original_max_position_embeddings=8192, rope_type="llama3"),
    attention_bias=False,
    mlp_bias=False,
    tie_word_embeddings=True,
    vocab_size=128256,
    initializer_range=0.02,
)
FULL_NUM_CODEBOOKS = 8
FULL_CODEBOOK_SIZE = 1024
FULL_PARAMETERS_APPROX = 5.77e9   # measured on the meta device; see count_parameters


def _token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    check_special_tokens(tokenizer, getattr(tokenizer, "name_or_path", "") or "<in memory>")
    tid = tokenizer.convert_tokens_to_ids
    return dict(
        audio_in_token_idx=tid("<|AUDIO|>"),
        audio_out_token_idx=tid("<|AUDIO_OUT|>"),
        audio_out_bos_token_id=tid("<|audio_out_bos|>"),
        audio_eos_token_id=tid("<|audio_eos|>"),
        pad_token_id=tokenizer.pad_token_id,
    )


def _higgs_config(text_config: dict[str, Any], tokenizer: PreTrainedTokenizerBase, *,
                  num_codebooks: int, codebook_size: int) -> HiggsAudioConfig:
    ids = _token_ids(tokenizer)
    text_config = dict(text_config,
                       bos_token_id=tokenizer.convert_tokens_to_ids(BOS_TOKEN),
                       eos_token_id=tokenizer.convert_tokens_to_ids(EOS_TOKEN),
                       pad_token_id=ids["pad_token_id"])
    if len(tokenizer) > text_config["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} ids but vocab_size={text_config['vocab_size']}")
    return HiggsAudioConfig(
        text_config=text_config,
        audio_adapter_type="dual_ffn_fast_forward",
        audio_dual_ffn_layers=list(range(text_config["num_hidden_layers"])),
        audio_ffn_hidden_size=text_config["hidden_size"],
        audio_ffn_intermediate_size=text_config["intermediate_size"],
        skip_audio_tower=True,
        encode_whisper_embed=False,
        encode_audio_in_tokens=True,
        use_delay_pattern=True,
        use_audio_out_embed_projector=False,
        use_audio_out_self_attention=False,
        audio_num_codebooks=num_codebooks,
        audio_codebook_size=codebook_size,
        audio_stream_bos_id=codebook_size,
        audio_stream_eos_id=codebook_size + 1,
        **ids,
    )


def tiny_config(tokenizer: PreTrainedTokenizerBase, *, num_codebooks: int, codebook_size: int) -> HiggsAudioConfig:
    """2-layer, hidden-64 Llama backbone; vocab = len(tokenizer).  ~160 k parameters."""
    text = dict(FULL_TEXT_CONFIG,
                hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                vocab_size=len(tokenizer))
    return _higgs_config(text, tokenizer, num_codebooks=num_codebooks, codebook_size=codebook_size)


def full_config(tokenizer: PreTrainedTokenizerBase) -> HiggsAudioConfig:
    """The released architecture; vocab stays 128256 even though our tokenizer is smaller."""
    return _higgs_config(dict(FULL_TEXT_CONFIG), tokenizer,
                         num_codebooks=FULL_NUM_CODEBOOKS, codebook_size=FULL_CODEBOOK_SIZE)


def build_model(config: HiggsAudioConfig, seed: int, *, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> HiggsAudioModel:
    """Seeded random init: the same (config, seed) gives bit-identical weights.

    On ``device="meta"`` nothing is allocated (used to count the full model's parameters).
    The fork_rng keeps the caller's CPU RNG untouched (random init on CUDA draws from the CUDA
    generator, seeded too, so a GPU build is deterministic on a given GPU but not equal to a CPU one).
    """
    previous_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if torch.device(device).type == "cuda":
            torch.cuda.manual_seed_all(seed)
        # Construct directly in `dtype`: the full model in fp32 (23 GB) would not fit beside a bf16 copy.
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = HiggsAudioModel(config)
        finally:
            torch.set_default_dtype(previous_dtype)
    model.eval()
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once), meta tensors included."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total
