"""Upstream's dual-FFN decoder layer with the text/audio split done by precomputed indices.

Upstream (`HiggsAudioDualFFNDecoderLayer.forward`, boson_multimodal 0.1.1, training path: no
cache, no audio self-attention, not fast-forward) computes, with `m` = audio_out_mask (B, L)
(which `HiggsAudioModel.forward` fills with `audio_in_discrete_codes_mask | audio_out_mask`):

    residual = h
    h = where(m, audio_input_layernorm(h), input_layernorm(h))
    h = residual + self_attn(h)
    residual = h
    t = mlp(post_attention_layernorm(h[~m]))              # boolean-mask gather (nonzero: host sync)
    a = audio_mlp(audio_post_attention_layernorm(h[m]))
    residual[~m] += t;  residual[m] += a                  # boolean-mask index_put (graph break)
    return residual

`dual_ffn_core` computes exactly that with the split given as flat index tensors (`TokenSplit`,
computed once per model forward and shared by all layers): one gather by the permutation "text
rows, then audio rows" feeds both FFNs, and the inverse permutation puts their outputs back in
sequence order, added to the residual out of place (`permute_rows`: gathers both ways, no
scatter-add).  Rows are taken in the same (ascending) order and each output row gets the same
single addition, so the result is bit-identical to upstream's in fp32
(tests/custom_impl/test_speed.py).  Without data-dependent shapes inside,
`torch.compile` captures the whole layer (attention, norms, both FFNs, LoRA) as one graph.

Padding rows (`unpad`, the `unpad-ffn` speed switch): upstream runs the text FFN on every row that
is not audio, padding included (13% of the rows of a batch of 32 shipped samples).  With `unpad`
the split takes the batch's merged (B, L) attention mask, recorded from the model's
`_update_causal_mask` call of the same forward, and puts padding rows in a third group that skips
both FFNs: their layer output is the attention residual alone.  No real row can see that change: the
attention mask (or, right-padded, causality) hides padding keys from every real query, and every
op of the FFN works row by row, so real rows' outputs are upstream's up to the GEMMs' summation
order for another row count.  Padding rows carry no label; their outputs differ from upstream's,
as they already do under `causal-attn`.  With LoRA dropout on, the text FFN's adapters draw their
dropout masks over fewer rows, so a real row gets another draw from the same distribution than it
would upstream (as `compile`'s generated dropout kernels also do).

`install(model_base, compile_layers=...)` replaces `forward` on each eligible layer INSTANCE of one
model (the class and every other model, e.g. the reference's, keep upstream's forward); any call
the core does not cover (cache, attention outputs, ...) goes to upstream's forward unchanged.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from boson_multimodal.model.higgs_audio.modeling_higgs_audio import HiggsAudioDualFFNDecoderLayer
from loguru import logger

UPSTREAM_FORWARD = HiggsAudioDualFFNDecoderLayer.forward
# torch.compile's recompile budget per code object (default 8): every layer and every new batch
# shape may cost one; above it dynamo silently falls back to eager.
RECOMPILE_LIMIT = 64


@dataclass
class TokenSplit:
    """Text/audio(/padding) rows of a (B, L) audio mask as flat indices into the (B * L) rows."""

    mask: torch.Tensor          # (B, L) bool, True at audio positions (the tensor the layers receive)
    text_idx: torch.Tensor      # (n_text,) long, ascending
    audio_idx: torch.Tensor     # (n_audio,) long, ascending
    pad_idx: torch.Tensor       # (n_pad,) long, ascending (empty without `valid`); n_text + n_audio + n_pad = B * L
    valid: torch.Tensor | None = None   # (B, L) the merged attention mask the split skipped padding by
    graphed: bool = False               # the layers run this split's forward as CUDA graphs (`GraphPolicy`)

    def shape_key(self) -> tuple[int, ...]:
        """(B, L, n_text, n_audio, n_pad): every size the compiled core's graph depends on."""
        return (*self.mask.shape, self.text_idx.numel(), self.audio_idx.numel(), self.pad_idx.numel())

    @classmethod
    def of(cls, mask: torch.Tensor, valid: torch.Tensor | None = None) -> "TokenSplit":
        """Split by `mask` (B, L) bool; with `valid` (B, L) (0/1 or bool, the merged attention
        mask), rows where it is 0 go to `pad_idx` whatever `mask` says."""
        audio = mask.reshape(-1)                                    # (B * L,)
        text = ~audio
        pad_idx = audio.new_empty(0, dtype=torch.long)
        if valid is not None:
            real = valid.reshape(-1).bool()                         # (B * L,)
            text, audio, pad_idx = text & real, audio & real, torch.nonzero(~real).squeeze(1)
        return cls(mask=mask, text_idx=torch.nonzero(text).squeeze(1), audio_idx=torch.nonzero(audio).squeeze(1),
                   pad_idx=pad_idx, valid=valid)


@dataclass
class GraphPolicy:
    """Which batch shapes the dual-FFN layers replay as CUDA graphs (the `cuda-graphs` switch).

    A CUDA graph is recorded for one set of sizes and only pays off when they recur: a shape is
    graphed from the `after`-th forward that has it on (CUDA graph trees then warm it up once,
    record it once and replay it from then on), and at most `max_shapes` shapes are (each holds its
    recording).  Every other forward runs the same layers compiled without graphs, so training
    whose batch shapes never repeat runs as it would without the switch.
    """

    after: int = 2
    max_shapes: int = 8
    seen: dict[tuple[int, ...], int] = field(default_factory=dict)   # shape key -> forwards seen
    graphed: list[tuple[int, ...]] = field(default_factory=list)     # shape keys graphed, first qualified first

    def admit(self, key: tuple[int, ...]) -> bool:
        """Count one forward of shape `key`; whether its layers run as CUDA graphs."""
        if len(self.graphed) >= self.max_shapes:     # full: nothing more to count
            return key in self.graphed
        self.seen[key] = self.seen.get(key, 0) + 1
        if key not in self.graphed and self.seen[key] >= self.after:
            self.graphed.append(key)
        return key in self.graphed


class SplitCache:
    """The split of the mask the current forward passes to every layer (computed by the first).

    `valid`: the merged (B, L) attention mask of the current forward, set by `record_padding`'s
    wrapper of the model's `_update_causal_mask` when padding rows are to skip the FFNs, else None.
    """

    def __init__(self, graphs: "GraphPolicy | None" = None) -> None:
        self.split: TokenSplit | None = None
        self.valid: torch.Tensor | None = None
        self.graphs = graphs            # which splits the layers replay as CUDA graphs (None: none)
        self.keep_outputs = False       # this forward returns the layers' outputs: no graphs (`_begin_graph_step`)

    def get(self, mask: torch.Tensor) -> TokenSplit:
        # Identity, not value: one forward passes the same mask object to all layers.  The cache
        # holds that object, so a later forward's mask cannot reuse its id.
        valid = self.valid if self.valid is not None and self.valid.shape == mask.shape else None
        if self.split is None or self.split.mask is not mask or self.split.valid is not valid:
            self.split = TokenSplit.of(mask, valid)
            self.split.graphed = (self.graphs is not None and not self.keep_outputs
                                  and self.graphs.admit(self.split.shape_key()))
        return self.split


def record_padding(base: torch.nn.Module, cache: SplitCache) -> None:
    """Wrap `base._update_causal_mask` (whatever is bound there: upstream's or `attention`'s) to keep
    the merged (B, L) attention mask of each forward on `cache.valid` (None when it is not one).
    Bound methods only, so a deep copy of the model gets its own wiring."""
    base.higgs_padding_cache = cache
    base.higgs_inner_update_causal_mask = base._update_causal_mask
    base._update_causal_mask = types.MethodType(_recording_update_causal_mask, base)


def _recording_update_causal_mask(self: torch.nn.Module, attention_mask: Any, *args: Any, **kwargs: Any) -> Any:
    self.higgs_padding_cache.valid = (attention_mask if isinstance(attention_mask, torch.Tensor)
                                      and attention_mask.dim() == 2 else None)
    return self.higgs_inner_update_causal_mask(attention_mask, *args, **kwargs)


def dual_ffn_core(layer: HiggsAudioDualFFNDecoderLayer, hidden_states: torch.Tensor,
                  attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None,
                  cache_position: torch.Tensor | None, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                  audio_mask: torch.Tensor, text_idx: torch.Tensor, audio_idx: torch.Tensor,
                  pad_idx: torch.Tensor | None = None) -> torch.Tensor:
    """One dual-FFN layer, training path (see module docstring).

    hidden_states (B, L, H), audio_mask (B, L) bool, text_idx (n_text,), audio_idx (n_audio,),
    pad_idx (n_pad,) rows that skip both FFNs (None: no such rows) -> (B, L, H).
    """
    residual = hidden_states                                                        # (B, L, H)
    hidden_states = torch.where(audio_mask.unsqueeze(-1), layer.audio_input_layernorm(hidden_states),
                                layer.input_layernorm(hidden_states))              # (B, L, H)
    attn_out = layer.self_attn(hidden_states=hidden_states, attention_mask=attention_mask,
                               position_ids=position_ids, past_key_value=None, output_attentions=False,
                               use_cache=False, cache_position=cache_position,
                               position_embeddings=position_embeddings)[0]        # (B, L, H)
    hidden_states = residual + attn_out                                             # (B, L, H)
    flat = hidden_states.reshape(-1, hidden_states.shape[-1])                       # (B*L, H)
    if pad_idx is None:
        pad_idx = text_idx.new_empty(0)
    perm = torch.cat([text_idx, audio_idx, pad_idx])                                # (B*L,) text, audio, padding rows
    inv = torch.empty_like(perm).index_copy_(0, perm, torch.arange(perm.numel(), device=perm.device))
    text_in, audio_in, _ = permute_rows(flat, perm, inv).split([text_idx.numel(), audio_idx.numel(),
                                                                pad_idx.numel()])
    text = layer.mlp(layer.post_attention_layernorm(text_in))                       # (n_text, H)
    audio = layer.audio_mlp(layer.audio_post_attention_layernorm(audio_in))         # (n_audio, H)
    skipped = text.new_zeros(pad_idx.numel(), text.shape[-1])                       # (n_pad, H)
    out = flat + permute_rows(torch.cat([text, audio, skipped]), inv, perm)         # (B*L, H)
    return out.view_as(hidden_states)


class _PermuteRows(torch.autograd.Function):
    """`x.index_select(0, idx)` for a permutation `idx` of x's rows, whose backward gathers with the
    inverse permutation: autograd's own backward of index_select is a scatter-add (atomic adds; on an
    H200 at batch 32 the dual-FFN split's index_add kernels took 17 ms a step), which a permutation
    does not need: every row is read exactly once."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, idx: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inv)
        return x.index_select(0, idx)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (inv,) = ctx.saved_tensors
        return grad.index_select(0, inv), None, None


def permute_rows(x: torch.Tensor, idx: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """Rows of `x` (N, ...) in the order `idx` (N,), a permutation whose inverse is `inv` (N,);
    exact in both directions (gathers only)."""
    return _PermuteRows.apply(x, idx, inv)


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    """Dynamo's per-code-object recompile limit to at least `limit` (renamed in torch 2.6+)."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < limit:
            setattr(cfg, name, limit)


# function name -> that function under torch.compile (one per process: layers of the same structure
# share its graphs, dynamo treating the layer's parameters as inputs).
_COMPILED: dict[str, Callable[..., torch.Tensor]] = {}


def _compiled_once(fn: Callable[..., torch.Tensor], **options: Any) -> Callable[..., torch.Tensor]:
    if fn.__name__ not in _COMPILED:
        raise_recompile_limit()
        _COMPILED[fn.__name__] = torch.compile(fn, **options)
    return _COMPILED[fn.__name__]


def compiled_core() -> Callable[..., torch.Tensor]:
    """`dual_ffn_core` under torch.compile, one per process."""
    return _compiled_once(dual_ffn_core)


def _graphed_dual_ffn_core(*args: Any) -> torch.Tensor:
    """`dual_ffn_core` under its own code object, so its compiled graphs (with CUDA graphs) are
    cached apart from `compiled_core`'s (dynamo caches compiled code per code object)."""
    return dual_ffn_core(*args)


def graphed_core() -> Callable[..., torch.Tensor]:
    """`dual_ffn_core` under torch.compile's "reduce-overhead" mode, one per process: inductor's
    CUDA graph trees (torch.compiler docs, "CUDAGraph Trees") record each layer's forward and
    backward once per batch shape and replay them, one launch instead of hundreds; a no-op on the
    CPU."""
    return _compiled_once(_graphed_dual_ffn_core, mode="reduce-overhead")


def release_graphs(base: torch.nn.Module) -> bool:
    """Free the memory CUDA graph trees hold for the recordings of `base` (a HiggsAudioModel that
    `install` patched); call when that model is dropped and another is built in the same process.
    The recordings keep their pool (and the dropped model's static inputs) allocated for as long as
    the process runs, and a shut-down tree cannot be replayed by the compiled code that recorded
    it, so this is `torch.compiler.reset()`: it shuts the trees down and drops this process's
    compiled code, which the next model compiles anew (inductor's on-disk cache makes that quicker
    than the first time).  Nothing is done when `base` never graphed a shape.  Returns whether it
    reset."""
    policy = getattr(base, "higgs_graph_policy", None)
    if policy is None or not policy.graphed or not torch.cuda.is_initialized():
        return False
    torch.compiler.reset()
    policy.graphed.clear()
    policy.seen.clear()
    return True


def _grad_out_of_graph_memory(cache: SplitCache, grad: torch.Tensor) -> torch.Tensor | None:
    """Tensor hook on each trainable parameter of a graphed layer (bound to the model's split
    cache): a gradient that a replayed backward graph returned lives in the CUDA graph trees'
    memory, and autograd would make it the parameter's `.grad` as it is (`AccumulateGrad` steals a
    gradient nobody else holds, graph outputs included).  The next forward starts a new graph step,
    whose replay may write over that memory: with gradient accumulation (several micro-batches per
    optimizer step) the earlier micro-batches' gradients would be lost without an error.  So a copy
    outside the graph memory is what `.grad` gets when the backward is a graphed forward's (the last
    forward's split: each backward follows its own forward) or the gradient is a graph output."""
    graphed = cache.split is not None and cache.split.graphed
    return grad.clone() if graphed or torch._C._is_cached_tensor(grad) else None


def _hook_grads_out_of_graph_memory(layer: torch.nn.Module) -> None:
    """`_grad_out_of_graph_memory` on each trainable parameter of `layer`, once per set of
    parameters (a deep copy of the model has new ones, without the hooks: it gets its own)."""
    marker = id(next(layer.parameters(), None))
    if getattr(layer, "higgs_grad_hooks_for", None) == marker:
        return
    for param in layer.parameters():
        if param.requires_grad:
            param.register_hook(functools.partial(_grad_out_of_graph_memory, layer.higgs_split_cache))
    layer.higgs_grad_hooks_for = marker


def _begin_graph_step(cache: SplitCache, module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
    """Forward pre-hook of the model under `cuda_graphs` (bound to its split cache): each model
    forward starts a new CUDA graph tree generation, so a replay may reuse the memory of the
    previous forward's graph outputs (consumed by then: its backward has run, or it ran under
    no_grad; the model's output is computed from the layers' outputs outside the graphs).  A forward
    that hands the layers' outputs to its caller (`output_hidden_states=True`) runs the plain
    compiled layers instead: those outputs must outlive the next forward."""
    cache.keep_outputs = bool(kwargs.get("output_hidden_states"))
    torch.compiler.cudagraph_mark_step_begin()


def eligible(layer: torch.nn.Module) -> bool:
    """A dual-FFN layer the core covers: not fast-forward, no audio self-attention."""
    return (isinstance(layer, HiggsAudioDualFFNDecoderLayer) and not layer.fast_forward
            and not layer.use_audio_attention)


def _index_forward(self: HiggsAudioDualFFNDecoderLayer, hidden_states: torch.Tensor,
                   attention_mask: torch.Tensor | None = None, audio_attention_mask: torch.Tensor | None = None,
                   fast_forward_attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                   audio_out_mask: torch.Tensor | None = None, is_decoding_audio_token: bool | None = None,
                   past_key_value: Any = None, output_attentions: bool | None = False, use_cache: bool | None = False,
                   cache_position: torch.Tensor | None = None,
                   position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                   is_using_cuda_graph: bool | None = False, **kwargs: Any) -> tuple[torch.Tensor, ...]:
    """Same signature as upstream's forward; the training path runs `dual_ffn_core`."""
    covered = (audio_out_mask is not None and audio_out_mask.dim() == 2 and audio_out_mask.shape[0] > 0
               and tuple(audio_out_mask.shape) == tuple(hidden_states.shape[:2])
               and not use_cache and not output_attentions and past_key_value is None and not is_using_cuda_graph
               and position_embeddings is not None and not kwargs)
    if not covered:
        return UPSTREAM_FORWARD(self, hidden_states, attention_mask=attention_mask,
                                audio_attention_mask=audio_attention_mask,
                                fast_forward_attention_mask=fast_forward_attention_mask, position_ids=position_ids,
                                audio_out_mask=audio_out_mask, is_decoding_audio_token=is_decoding_audio_token,
                                past_key_value=past_key_value, output_attentions=output_attentions,
                                use_cache=use_cache, cache_position=cache_position,
                                position_embeddings=position_embeddings, is_using_cuda_graph=is_using_cuda_graph,
                                **kwargs)
    split = self.higgs_split_cache.get(audio_out_mask)
    hidden_states = hidden_states.contiguous()      # a strided view would cost the compiled core a recompile
    if self.higgs_core is not dual_ffn_core:
        mark_dynamic_shapes(hidden_states, attention_mask, position_ids, cache_position, position_embeddings, split)
    if split.graphed:               # only where `install` gave the layers a graphed core
        _hook_grads_out_of_graph_memory(self)
    core = self.higgs_graphed_core if split.graphed else self.higgs_core
    out = core(self, hidden_states, attention_mask, position_ids, cache_position, position_embeddings,
               split.mask, split.text_idx, split.audio_idx, split.pad_idx)
    return (out,)


def mark_dynamic_shapes(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                        position_ids: torch.Tensor | None, cache_position: torch.Tensor | None,
                        position_embeddings: tuple[torch.Tensor, torch.Tensor], split: TokenSplit) -> None:
    """Batch and sequence sizes (and the text/audio row counts) as dynamic dimensions of the
    compiled core, the hidden size static: one graph serves every batch shape from the first call
    on (otherwise dynamo compiles a static graph first and recompiles at the second shape)."""
    mark = torch._dynamo.maybe_mark_dynamic
    mark(hidden_states, 0)
    mark(hidden_states, 1)
    mark(split.mask, 0)
    mark(split.mask, 1)
    mark(split.text_idx, 0)
    mark(split.audio_idx, 0)
    mark(split.pad_idx, 0)
    if attention_mask is not None:                                   # (B, 1, L, L)
        for dim in (0, 2, 3):
            mark(attention_mask, dim)
    if position_ids is not None:                                     # (B, L)
        mark(position_ids, 0)
        mark(position_ids, 1)
    if cache_position is not None:                                   # (L,)
        mark(cache_position, 0)
    for t in position_embeddings:                                    # cos, sin (B, L, head_dim)
        mark(t, 0)
        mark(t, 1)


def install(base: torch.nn.Module, *, index_ffn: bool, compile_layers: bool, unpad: bool = False,
            cuda_graphs: bool = False) -> dict[str, int]:
    """Patch the decoder layers of ONE HiggsAudioModel instance (`base`, unwrapped from peft/DDP).

    index_ffn: eligible dual-FFN layers run `dual_ffn_core` (compiled when `compile_layers`).
    unpad: with index_ffn, padding rows skip both FFNs (module docstring; `record_padding`).
    compile_layers: the other layers (or all, without index_ffn: then upstream's boolean-mask
    layer, whose graph breaks) are compiled whole with `nn.Module.compile`.
    cuda_graphs: with index_ffn and compile_layers, the index-FFN layers replay recurring
    batch shapes as CUDA graphs (`GraphPolicy`, `graphed_core`), each forward of `base` starts a
    new graph step, and the layers' trainable parameters take their gradients out of the graphs'
    memory (`_grad_out_of_graph_memory`, hooked at a layer's first graphed call).  Callers must
    consume a forward's outputs (backward, or read them) before the next forward: its replay may
    write over the previous one's layer outputs (a forward with `output_hidden_states=True` runs
    without graphs).  On the CPU the graphed core is the compiled one (no graphs); `speedups.apply`
    turns this on for CUDA models only.
    Returns counts of what was done, for logs and reports.
    """
    graphs = GraphPolicy() if index_ffn and compile_layers and cuda_graphs else None
    cache = SplitCache(graphs)
    done = {"index_ffn_layers": 0, "compiled_layers": 0, "layers": len(base.layers)}
    if index_ffn and unpad:
        record_padding(base, cache)
        done["unpad_ffn"] = 1
    if compile_layers:
        raise_recompile_limit()
    base.higgs_graph_policy = graphs
    if graphs is not None:
        base.register_forward_pre_hook(functools.partial(_begin_graph_step, cache), with_kwargs=True)
        done["cuda_graphs"] = 1
    for layer in base.layers:
        if index_ffn and eligible(layer):
            layer.higgs_split_cache = cache
            layer.higgs_core = compiled_core() if compile_layers else dual_ffn_core
            layer.higgs_graphed_core = graphed_core() if graphs is not None else None
            layer.forward = types.MethodType(_index_forward, layer)
            done["index_ffn_layers"] += 1
            done["compiled_layers"] += int(compile_layers)
        elif compile_layers:
            layer.compile()
            done["compiled_layers"] += 1
    if index_ffn and done["index_ffn_layers"] < len(base.layers):
        logger.info(f"index-ffn: {done['index_ffn_layers']} of {len(base.layers)} layers eligible "
                    "(fast-forward or audio-attention layers keep upstream's forward)")
    return done
