"""A plain-PyTorch yardstick of the Higgs Audio v2 training step, carried by the bench.

What a careful engineer writes in plain PyTorch (no torch.compile, no custom kernels) for the same
model and the same batch shape, to put the pipelines' tokens/s and MFU next to:

* the model of `HiggsAudioConfig` (`boson_multimodal`'s `dual_ffn_fast_forward` layout, every layer
  dual-FFN): Llama decoder layers whose attention is shared by all positions and whose norms and
  SwiGLU MLP are split into a text and an audio copy at audio-out positions (upstream
  `HiggsAudioDualFFNDecoderLayer`); text embedding, audio-codebook embedding summed over codebooks,
  the text head (tied to the text embedding) and the audio head;
* frozen random weights in `dtype` (bf16 on CUDA), LoRA (r, alpha, targets as the training config's:
  the common configuration puts it on q/k/v/o and both MLPs' gate/up/down, i.e. every linear layer
  of the decoder) with fp32 adapter weights cast to the activations' dtype in the forward;
* `torch.nn.functional.scaled_dot_product_attention(is_causal=True, enable_gqa=True)` on right-padded
  rows (exact at every real position), RMSNorm as `torch.nn.functional.rms_norm`, RoPE (plain
  theta; llama3's frequency rescaling changes values, not cost);
* the text head only at supervised text rows, the audio head at audio-out positions, mean
  cross-entropies summed (text + audio over codebooks), `clip_grad_norm_` and `AdamW(fused=True)`
  on CUDA.

Inputs follow a collated batch's shape (`YardstickBatch.like`): per-sample merged lengths, padded
length, audio-out positions and supervised text rows; token ids and codes are random (the work does
not depend on their values).  Audio-in frames are embedded as text ids (a lookup either way).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


class LoRALinear(nn.Module):
    """y = x W^T + (alpha / r) (x A^T) B^T; W (out, in) frozen in the model dtype, A (r, in) and
    B (out, r) trainable fp32 (B starts at zero, as peft does)."""

    def __init__(self, in_features: int, out_features: int, *, r: int, alpha: float, lora: bool,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device).normal_(0, 0.02),
                                   requires_grad=False)
        self.scale = alpha / r
        if lora:
            self.lora_a = nn.Parameter(torch.empty(r, in_features, device=device))
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
            self.lora_b = nn.Parameter(torch.zeros(out_features, r, device=device))
        else:
            self.lora_a = self.lora_b = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:       # (N, in) -> (N, out)
        y = F.linear(x, self.weight)
        if self.lora_a is not None:
            y = y + self.scale * F.linear(F.linear(x, self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))
        return y


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, inter: int, make: Any) -> None:
        super().__init__()
        self.gate_proj, self.up_proj = make("gate_proj", hidden, inter), make("up_proj", hidden, inter)
        self.down_proj = make("down_proj", inter, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:       # (N, hidden)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden, dtype=dtype, device=device), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, x (B, heads, L, hd), cos/sin (L, hd)."""
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-b, a), dim=-1) * sin


class DualFFNLayer(nn.Module):
    """One decoder layer: text/audio input norms, shared attention, text/audio post norms and MLPs."""

    def __init__(self, t: Any, make: Any, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        h, eps = t.hidden_size, t.rms_norm_eps
        self.heads, self.kv = t.num_attention_heads, t.num_key_value_heads
        self.hd = getattr(t, "head_dim", None) or h // self.heads
        norm = lambda: RMSNorm(h, eps, dtype, device)                        # noqa: E731
        self.input_layernorm, self.audio_input_layernorm = norm(), norm()
        self.post_attention_layernorm, self.audio_post_attention_layernorm = norm(), norm()
        self.q_proj = make("q_proj", h, self.heads * self.hd)
        self.k_proj = make("k_proj", h, self.kv * self.hd)
        self.v_proj = make("v_proj", h, self.kv * self.hd)
        self.o_proj = make("o_proj", self.heads * self.hd, h)
        self.mlp = SwiGLU(h, t.intermediate_size, make)
        self.audio_mlp = SwiGLU(h, t.intermediate_size, make)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, text_idx: torch.Tensor, audio_idx: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape                                                     # x (B, L, H), audio (B, L, 1) bool
        normed = torch.where(audio, self.audio_input_layernorm(x), self.input_layernorm(x)).view(b * n, h)
        q = self.q_proj(normed).view(b, n, self.heads, self.hd).transpose(1, 2)   # (B, heads, L, hd)
        k = self.k_proj(normed).view(b, n, self.kv, self.hd).transpose(1, 2)      # (B, kv, L, hd)
        v = self.v_proj(normed).view(b, n, self.kv, self.hd).transpose(1, 2)
        attn = F.scaled_dot_product_attention(rope(q, cos, sin), rope(k, cos, sin), v, is_causal=True,
                                              enable_gqa=True)
        x = x + self.o_proj(attn.transpose(1, 2).reshape(b * n, self.heads * self.hd)).view(b, n, h)
        flat = x.view(b * n, h)
        out = flat.clone()
        out.index_add_(0, text_idx, self.mlp(self.post_attention_layernorm(flat.index_select(0, text_idx))))
        out.index_add_(0, audio_idx, self.audio_mlp(self.audio_post_attention_layernorm(flat.index_select(0, audio_idx))))
        return out.view(b, n, h)


class Yardstick(nn.Module):
    """The model (module docstring) built from a `HiggsAudioConfig`; `lora_targets` names the linear
    layers that get adapters (by their name inside a layer: q_proj, ..., down_proj)."""

    def __init__(self, config: Any, *, lora_r: int, lora_alpha: float, lora_targets: Sequence[str],
                 dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        device = torch.device(device)
        t = config.text_config
        targets = set(lora_targets)

        def make(name: str, fan_in: int, fan_out: int) -> LoRALinear:
            return LoRALinear(fan_in, fan_out, r=lora_r, alpha=lora_alpha, lora=name in targets, dtype=dtype,
                              device=device)

        self.codebooks, self.codebook_size = config.audio_num_codebooks, config.audio_codebook_size + 2
        self.embed_tokens = nn.Parameter(torch.empty(t.vocab_size, t.hidden_size, dtype=dtype, device=device)
                                         .normal_(0, 0.02), requires_grad=False)      # tied text head
        self.audio_codebook_embeddings = nn.Parameter(
            torch.empty(self.codebooks * self.codebook_size, t.hidden_size, dtype=dtype, device=device).normal_(0, 0.02),
            requires_grad=False)
        self.layers = nn.ModuleList(DualFFNLayer(t, make, dtype, device) for _ in range(t.num_hidden_layers))
        self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps, dtype, device)
        self.audio_lm_head = nn.Parameter(torch.empty(self.codebooks * self.codebook_size, t.hidden_size, dtype=dtype,
                                                      device=device).normal_(0, 0.02), requires_grad=False)
        hd = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
        self.register_buffer("inv_freq", 1.0 / (t.rope_theta ** (torch.arange(0, hd, 2, device=device).float() / hd)),
                             persistent=False)
        self.dtype = dtype

    def loss(self, batch: "YardstickBatch") -> torch.Tensor:
        """Mean text CE at supervised rows + mean audio CE over every (audio-out position, codebook) (scalar fp32)."""
        b, n = batch.input_ids.shape
        pos = torch.arange(n, device=batch.input_ids.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)                               # (L, hd)
        cos, sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        x = F.embedding(batch.input_ids, self.embed_tokens)                   # (B, L, H)
        offsets = torch.arange(self.codebooks, device=x.device) * self.codebook_size
        audio_emb = F.embedding(batch.audio_codes + offsets, self.audio_codebook_embeddings).sum(1)   # (A, H)
        x = x.view(b * n, -1).index_copy(0, batch.audio_idx, audio_emb).view(b, n, -1)
        audio = batch.audio_mask.unsqueeze(-1)                                # (B, L, 1)
        for layer in self.layers:
            x = layer(x, audio, batch.text_idx, batch.audio_idx, cos, sin)
        h = self.norm(x).view(b * n, -1)
        text_logits = F.linear(h.index_select(0, batch.text_rows), self.embed_tokens)          # (N_text, V)
        audio_logits = F.linear(h.index_select(0, batch.audio_idx), self.audio_lm_head)        # (A, C*(K+2))
        text = F.cross_entropy(text_logits.float(), batch.text_labels)
        audio_ce = F.cross_entropy(audio_logits.float().view(-1, self.codebook_size), batch.audio_labels.view(-1),
                                   ignore_index=IGNORE)
        return text + audio_ce


@dataclass
class YardstickBatch:
    """Random inputs with a collated batch's layout (flat indices into B*L)."""

    input_ids: torch.Tensor      # (B, L) long
    audio_mask: torch.Tensor     # (B, L) bool: audio-out positions
    text_idx: torch.Tensor       # (B*L - A,) long: every position that is not audio-out (padding included)
    audio_idx: torch.Tensor      # (A,) long
    audio_codes: torch.Tensor    # (A, C) long, in [0, K+2)
    audio_labels: torch.Tensor   # (A, C) long, in [0, K)
    text_rows: torch.Tensor      # (N_text,) long: supervised text rows
    text_labels: torch.Tensor    # (N_text,) long

    @classmethod
    def like(cls, lengths: Sequence[int], padded_len: int, audio_out_positions: int, text_supervised: int,
             config: Any, device: torch.device | str, seed: int = 0) -> "YardstickBatch":
        """Per sample i: `lengths[i]` real positions (right-padded to `padded_len`), the last ones
        audio-out (the batch's `audio_out_positions` split in proportion to length), the text rows
        just before them supervised (`text_supervised` in all, split the same way).

        Raises ValueError when the counts do not fit the lengths."""
        b, total = len(lengths), sum(lengths)
        if audio_out_positions + text_supervised > total or max(lengths) > padded_len:
            raise ValueError(f"yardstick batch: {audio_out_positions} audio-out + {text_supervised} text rows do not "
                             f"fit lengths {list(lengths)} padded to {padded_len}")
        g = torch.Generator().manual_seed(seed)

        def split(count: int) -> list[int]:
            parts = [count * n // total for n in lengths]
            for i in range(count - sum(parts)):
                parts[i % b] += 1
            return parts

        audio_parts, text_parts = split(audio_out_positions), split(text_supervised)
        mask = torch.zeros(b, padded_len, dtype=torch.bool)
        rows = []
        for i, (n, a, s) in enumerate(zip(lengths, audio_parts, text_parts)):
            a, s = min(a, n), min(s, n - min(a, n))
            mask[i, n - a:n] = True
            rows += [i * padded_len + j for j in range(n - a - s, n - a)]
        flat = mask.view(-1)
        t = config.text_config
        c, k = config.audio_num_codebooks, config.audio_codebook_size
        a_total = int(flat.sum())
        return cls(input_ids=torch.randint(0, t.vocab_size, (b, padded_len), generator=g).to(device),
                   audio_mask=mask.to(device),
                   text_idx=(~flat).nonzero().squeeze(1).to(device), audio_idx=flat.nonzero().squeeze(1).to(device),
                   audio_codes=torch.randint(0, k + 2, (a_total, c), generator=g).to(device),
                   audio_labels=torch.randint(0, k, (a_total, c), generator=g).to(device),
                   text_rows=torch.tensor(rows, dtype=torch.long).to(device),
                   text_labels=torch.randint(0, t.vocab_size, (len(rows),), generator=g).to(device))


def lora_targets_of(train: Any) -> tuple[int, float, tuple[str, ...]]:
    """(r, alpha, target names) of a TrainConfig (LoRA on every decoder linear layer when it has none)."""
    targets = tuple(train.lora_target_modules or
                    ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    return int(train.lora_r), float(train.lora_alpha), targets


def run_yardstick(ctx: Any, train: Any, batches: Sequence[Any], shapes: Sequence[Any], *, config_name: str,
                  steps: int, warmup: int, batching: str = "fixed", count: bool = True, seed: int = 0) -> Any:
    """The yardstick's training step (loss, backward, clip, AdamW) timed per step like the pipelines'
    (`bench.train.run_custom`); returns a `TrainMeasurement` with pipeline "yardstick".

    Frozen weights in bf16 on CUDA (fp32 on the CPU); LoRA as `train` says.  Step i trains on a
    yardstick batch shaped like batches[i % len(batches)]."""
    from custom_impl.length_grouping import batch_merged_lengths
    from bench import train as tb

    cfg = ctx.model_config
    m = tb.TrainMeasurement("yardstick", config_name, shapes[0].batch_size, speed="plain PyTorch", batching=batching,
                            precision="bf16" if ctx.device.type == "cuda" else "fp32",
                            step_shapes=tb._timed_shapes(shapes, warmup, steps))
    device = ctx.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = opt = None
    t_start = time.perf_counter()
    try:
        tb._reset_peak(device)
        r, alpha, targets = lora_targets_of(train)
        torch.manual_seed(seed)
        model = Yardstick(cfg, lora_r=r, lora_alpha=alpha, lora_targets=targets, dtype=dtype, device=device)
        params = [p for p in model.parameters() if p.requires_grad]
        m.trainable_params, m.weights_dtype = tb._trainable(model), tb._weights_dtype(model)
        opt = torch.optim.AdamW(params, lr=train.learning_rate, betas=tuple(train.adam_betas), eps=train.adam_eps,
                                weight_decay=train.weight_decay, fused=device.type == "cuda")
        ybatches = [YardstickBatch.like(batch_merged_lengths(bt, cfg.audio_in_token_idx, cfg.audio_out_token_idx),
                                        sh.padded_len, sh.audio_out_positions, sh.text_supervised, cfg, device, seed)
                    for bt, sh in zip(batches, shapes)]

        def one_step(batch: YardstickBatch) -> float:
            loss = model.loss(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())

        clock = tb.StepClock(device, m, warmup)
        with tb.frozen_heap():
            for i in range(warmup + steps):
                clock.begin()
                loss = one_step(ybatches[i % len(ybatches)])
                clock.end()
                m.losses.append(loss)
        m.peak_memory_gib = tb._peak(device)
        if count:
            m.counted_flops_per_step = tb.count_flops(lambda: model.loss(ybatches[0]).backward())
            opt.zero_grad(set_to_none=True)
    except Exception as exc:  # noqa: BLE001 - an OOM/crash is a measurement result, reported in the table
        tb._record_failure(m, exc, device, "yardstick", config_name)
    finally:
        del model, opt
        tb._free()
    m.wall_s = time.perf_counter() - t_start
    return m
