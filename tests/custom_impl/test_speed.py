"""Issue 17's speed switches change how the custom pipeline runs, never what it computes.

CPU, tiny checkpoint, fp32: every switch on vs off gives the same losses and gradients (up to
summation order); the index-based dual-FFN layer equals upstream's layer; the stage-contract
forward still returns upstream's full logits; length-grouped micro-batches give the padded
batch's loss and per-token terms; the batches themselves are deterministic and DDP-shardable.
"""

from __future__ import annotations

import math

import pytest
import torch

from custom_impl import attention, dual_ffn, speedups
from custom_impl import loss as L
from custom_impl import stages as S
from custom_impl.distributed import accumulate
from custom_impl.fast_head import TextHeadInputs, gathered_text_terms
from custom_impl.length_grouping import (batch_merged_lengths, grouped_batches, item_merged_length, padded_length,
                                         padding_efficiency)
from custom_impl.model import forward, model_inputs
from custom_impl.speed import (ENV_VAR, SWITCHES, SpeedOptions, SpeedSpecError, apply_spec, flipped, resolve,
                               speed_of)

TRAIN = S.DEFAULT_TRAIN.replace(lora_dropout=0.0)
# Every switch that runs on a CPU without optional packages (fused AdamW is CUDA-only here,
# compile has its own slow test, tf32 changes numerics on purpose).
CPU_ALL = SpeedOptions.all().replace(fused_adamw=False, compile_layers=False, cuda_graphs=False)


def _model(ctx, opts: SpeedOptions | None = None, train=TRAIN):
    model = S.build_model(ctx, train)
    if opts is not None:
        speedups.apply(model, opts)
    return model


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _accumulate(ctx, opts, batches, train=TRAIN):
    model = _model(ctx, opts, train)
    objectives: list[torch.Tensor] = []
    lbs = accumulate(model, batches, ctx, objectives=objectives)
    return lbs, torch.stack(objectives).sum(), _grads(model)


def _assert_grads_close(a, b, rtol=1e-4, atol=1e-6):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


@pytest.fixture(scope="module")
def batches(items, ctx):
    return [S.collate(items[i:i + 4], ctx) for i in (0, 4)]


# ------------------------------------------------------------------------------ switches

def test_every_switch_leaves_losses_and_gradients_unchanged(ctx, batches):
    off_lbs, off_total, off_grads = _accumulate(ctx, SpeedOptions.none(), batches)
    on_lbs, on_total, on_grads = _accumulate(ctx, CPU_ALL, batches)
    for a, b in zip(off_lbs, on_lbs):
        torch.testing.assert_close(b.total.detach(), a.total.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.text, a.text, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.per_codebook, a.per_codebook, rtol=1e-5, atol=1e-6)
        assert (b.text_supervised_tokens, b.audio_supervised_tokens) == (a.text_supervised_tokens,
                                                                         a.audio_supervised_tokens)
    torch.testing.assert_close(on_total, off_total, rtol=1e-5, atol=1e-6)
    _assert_grads_close(on_grads, off_grads)


@pytest.mark.parametrize("name", ["fast-head", "index-ffn", "causal-attn", "lora-bf16"])
def test_each_switch_alone_leaves_the_loss_unchanged(ctx, batches, name):
    off_lbs, off_total, off_grads = _accumulate(ctx, SpeedOptions.none(), batches[:1])
    on_lbs, on_total, on_grads = _accumulate(ctx, apply_spec(SpeedOptions.none(), name, "cpu"), batches[:1])
    torch.testing.assert_close(on_total, off_total, rtol=1e-5, atol=1e-6)
    _assert_grads_close(on_grads, off_grads)


def test_full_finetuning_gets_the_same_head_gradient_through_the_gathered_head(ctx, batches):
    full = TRAIN.replace(use_lora=False)
    _, off_total, off_grads = _accumulate(ctx, SpeedOptions.none(), batches[:1], train=full)
    _, on_total, on_grads = _accumulate(ctx, CPU_ALL, batches[:1], train=full)
    torch.testing.assert_close(on_total, off_total, rtol=1e-5, atol=1e-6)
    head = [n for n in off_grads if n.endswith("text_lm_head.weight")]
    assert head and float(off_grads[head[0]].abs().sum()) > 0
    _assert_grads_close(on_grads, off_grads, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compiled_layers_leave_losses_and_gradients_unchanged(ctx, batches):
    """torch.compile (inductor, CPU here) of every layer, with the base-dtype LoRA forward inside it:
    same loss, gradients within fp32 noise, one graph shared by all layers (two: layer 0's input
    needs no gradient), no graph break."""
    from torch._dynamo.utils import counters

    off_lbs, off_total, off_grads = _accumulate(ctx, SpeedOptions.none(), batches)
    counters.clear()
    on_lbs, on_total, on_grads = _accumulate(ctx, CPU_ALL.replace(compile_layers=True, lora_bf16=True), batches)
    torch.testing.assert_close(on_total, off_total, rtol=1e-5, atol=1e-6)
    _assert_grads_close(on_grads, off_grads, rtol=1e-3, atol=1e-6)
    assert counters["frames"]["ok"] <= 2, dict(counters["frames"])
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.slow
def test_cuda_graphs_route_recurring_shapes_through_the_graphed_core(ctx, batches):
    """cuda-graphs, installed on a CPU model (where the graphed core compiles without graphs; the
    speed options turn it on for CUDA models only): the first forward of a batch shape runs the
    compiled core, the second and later ones the graphed core, whose layers' trainable parameters
    then copy their gradients (the copy CUDA needs), with the same loss and gradients as the layers
    uncompiled."""
    assert not speedups.base_model(_model(ctx, CPU_ALL.replace(compile_layers=True, cuda_graphs=True))
                                   ).higgs_graph_policy                       # apply: CUDA models only
    model = _model(ctx)
    dual_ffn.install(speedups.base_model(model), index_ffn=True, compile_layers=True, unpad=True, cuda_graphs=True)
    cache = speedups.base_model(model).layers[0].higgs_split_cache
    assert cache.graphs is not None
    graphed, totals = [], []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        objectives: list[torch.Tensor] = []
        accumulate(model, batches[:1], ctx, objectives=objectives)
        graphed.append(cache.split.graphed)
        totals.append(torch.stack(objectives).sum())
    assert graphed == [False, True]
    hooked = [p for p in speedups.base_model(model).layers[0].parameters() if p.requires_grad]
    assert hooked and all(p._backward_hooks for p in hooked)      # gradients copied out of graph memory
    # a forward that returns the layers' outputs keeps them out of graph memory: no graphs for it
    with torch.no_grad():
        hidden = model(**model_inputs(batches[0]), output_hidden_states=True).hidden_states
    assert hidden and not cache.split.graphed
    _, off_total, off_grads = _accumulate(ctx, SpeedOptions.none(), batches[:1])
    for total in totals:
        torch.testing.assert_close(total, off_total, rtol=1e-5, atol=1e-6)
    _assert_grads_close(_grads(model), off_grads, rtol=1e-3, atol=1e-6)
    speedups.release(model)


def test_graph_policy_graphs_a_shape_from_its_second_forward_and_at_most_max_shapes():
    policy = dual_ffn.GraphPolicy(after=2, max_shapes=2)
    a, b, c = (8, 328, 1, 2, 3), (8, 352, 1, 2, 3), (4, 100, 1, 2, 3)
    assert [policy.admit(a), policy.admit(a), policy.admit(a)] == [False, True, True]
    # c qualifies before b: it takes the second place and keeps it; b stays on the compiled core
    assert [policy.admit(b), policy.admit(c), policy.admit(c), policy.admit(b), policy.admit(b)] == [
        False, False, True, False, False]
    assert policy.graphed == [a, c] and policy.admit(a) and policy.admit(c)


# ------------------------------------------------------------------------------ dual FFN

def _upstream_layer(layer, x, attn_mask, mask, pos_emb):
    """Upstream's dual-FFN layer on x (B, L, H) with audio mask `mask` (B, L): its (B, L, H) output."""
    b, n = mask.shape
    return dual_ffn.UPSTREAM_FORWARD(layer, x, attention_mask=attn_mask,
                                     position_ids=torch.arange(n).unsqueeze(0).expand(b, n), audio_out_mask=mask,
                                     cache_position=torch.arange(n), position_embeddings=pos_emb)[0]


def _out_and_grads(layer, hidden, fn, rows=None):
    """fn(x) on a fresh leaf copy of `hidden`; the output and the gradients (layer's trainable parameters,
    then x) of the sum of squares of its `rows` (a (B, L) mask; None: every row)."""
    x = hidden.clone().requires_grad_(True)
    out = fn(x)
    (out if rows is None else out[rows]).pow(2).sum().backward()
    grads = [p.grad.clone() for p in layer.parameters() if p.requires_grad] + [x.grad.clone()]
    layer.zero_grad()
    return out.detach(), grads


@pytest.mark.parametrize("padded", [False, True])
def test_index_dual_ffn_layer_equals_upstream_layer(ctx, padded):
    base = speedups.base_model(_model(ctx))
    layer = base.layers[0]
    assert dual_ffn.eligible(layer)
    g = torch.Generator().manual_seed(0)
    b, n, h = 3, 24, base.config.text_config.hidden_size
    hidden = torch.randn(b, n, h, generator=g)
    mask = torch.rand(b, n, generator=g) < 0.4                                   # (B, L) audio positions
    position_ids = torch.arange(n).unsqueeze(0).expand(b, n)
    pos_emb = base.rotary_emb(hidden, position_ids)
    attn_mask = None
    if padded:                                                                   # (B, 1, L, L) additive causal
        keep = torch.ones(b, n)
        keep[0, 18:] = 0
        attn_mask = base._update_causal_mask(keep, hidden, torch.arange(n), None, False)

    up_out, up_grads = _out_and_grads(layer, hidden, lambda x: _upstream_layer(layer, x, attn_mask, mask, pos_emb))
    split = dual_ffn.TokenSplit.of(mask)
    ix_out, ix_grads = _out_and_grads(layer, hidden, lambda x: dual_ffn.dual_ffn_core(
        layer, x, attn_mask, position_ids, torch.arange(n), pos_emb, mask, split.text_idx, split.audio_idx))
    assert torch.equal(ix_out, up_out)                                          # bit-identical forward
    for a, c in zip(ix_grads, up_grads):
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("right_padded", [True, False])
def test_unpadded_dual_ffn_layer_equals_upstream_at_real_rows(ctx, right_padded):
    """Padding rows skip both FFNs: real rows keep upstream's output and every gradient a loss on
    real rows gives (up to summation order); padding rows get the attention residual alone."""
    base = speedups.base_model(_model(ctx))
    layer = base.layers[0]
    g = torch.Generator().manual_seed(1)
    b, n, h = 3, 24, base.config.text_config.hidden_size
    hidden = torch.randn(b, n, h, generator=g)
    keep = torch.ones(b, n, dtype=torch.long)                                    # (B, L) merged attention mask
    if right_padded:
        keep[0, 17:] = 0
        keep[2, 20:] = 0
    else:
        keep[1, :6] = 0
    mask = (torch.rand(b, n, generator=g) < 0.4) & keep.bool()                   # (B, L) audio positions, all real
    position_ids = torch.arange(n).unsqueeze(0).expand(b, n)
    pos_emb = base.rotary_emb(hidden, position_ids)
    attn_mask = base._update_causal_mask(keep, hidden, torch.arange(n), None, False)
    real = keep.bool()

    up_out, up_grads = _out_and_grads(layer, hidden, lambda x: _upstream_layer(layer, x, attn_mask, mask, pos_emb),
                                      rows=real)
    split = dual_ffn.TokenSplit.of(mask, keep)
    assert split.pad_idx.numel() == int((keep == 0).sum())
    assert split.text_idx.numel() + split.audio_idx.numel() + split.pad_idx.numel() == b * n
    ix_out, ix_grads = _out_and_grads(layer, hidden, lambda x: dual_ffn.dual_ffn_core(
        layer, x, attn_mask, position_ids, torch.arange(n), pos_emb, mask, split.text_idx, split.audio_idx,
        split.pad_idx), rows=real)
    torch.testing.assert_close(ix_out[real], up_out[real], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(ix_out[~real], up_out[~real])                     # padding rows did skip the FFN
    for a, c in zip(ix_grads, up_grads):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


def test_unpad_records_each_forwards_padding_and_survives_a_deep_copy(ctx, batches):
    import copy

    model = _model(ctx, SpeedOptions.none().replace(index_ffn=True, unpad_ffn=True))
    base = speedups.base_model(model)
    out = S.forward(model, batches[0], ctx)
    cache = base.layers[0].higgs_split_cache
    merged = out.extra["attention_mask"]                                          # (B, L)
    assert cache.valid is not None and torch.equal(cache.valid, merged)
    assert cache.split.pad_idx.numel() == int((merged == 0).sum()) > 0           # the shipped batch has padding
    twin = copy.deepcopy(model)
    twin_base = speedups.base_model(twin)
    assert twin_base.higgs_padding_cache is twin_base.layers[0].higgs_split_cache is not cache
    assert twin_base._update_causal_mask.__self__ is twin_base


def test_installed_layers_fall_back_to_upstream_outside_the_training_path(ctx, batches):
    model = _model(ctx, SpeedOptions.none().replace(index_ffn=True))
    base = speedups.base_model(model)
    assert all(layer.forward.__func__ is dual_ffn._index_forward for layer in base.layers)
    assert type(base.layers[0]).forward is dual_ffn.UPSTREAM_FORWARD                   # the class is untouched
    other = speedups.base_model(_model(ctx))
    assert "forward" not in vars(other.layers[0])                                      # other models too
    layer = base.layers[0]
    x = torch.randn(1, 5, base.config.text_config.hidden_size)
    mask = torch.zeros(1, 5, dtype=torch.bool)
    pos = base.rotary_emb(x, torch.arange(5).unsqueeze(0))
    out = layer(x, audio_out_mask=mask, output_attentions=True, position_embeddings=pos,
                position_ids=torch.arange(5).unsqueeze(0), cache_position=torch.arange(5))
    assert len(out) == 2                                                               # upstream's (hidden, attn)


# ------------------------------------------------------------------------------ stage contract

def test_stage_forward_still_returns_full_logits_equal_to_before(ctx, batches):
    batch = batches[0]
    plain = S.forward(_model(ctx), batch, ctx)
    fast = S.forward(_model(ctx, CPU_ALL), batch, ctx)                 # switches installed on the model
    vocab = ctx.model_config.text_config.vocab_size
    assert plain.logits.shape[-1] == vocab and fast.logits.shape == plain.logits.shape
    real = plain.extra["attention_mask"].bool()                         # padding rows are nobody's input
    torch.testing.assert_close(fast.logits[real], plain.logits[real], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.audio_logits, plain.audio_logits, rtol=1e-5, atol=1e-6)
    assert torch.equal(fast.expanded_labels, plain.expanded_labels)


def test_training_forward_carries_hidden_states_and_the_real_head(ctx, batches):
    model = _model(ctx)
    out = forward(model, batches[0], ctx, speed=SpeedOptions())
    head = out.extra["text_head"]
    assert out.logits is None and isinstance(head, TextHeadInputs)
    assert head.hidden.shape[-1] == ctx.model_config.text_config.hidden_size
    proj = speedups.base_model(model).audio_decoder_proj
    assert isinstance(proj.text_lm_head, torch.nn.Linear) and head.weight is proj.text_lm_head.weight   # restored


@pytest.mark.parametrize("faults", [(), ("no-shift",)])
def test_gathered_head_terms_equal_full_logits_terms(ctx, batches, with_faults, faults):
    fctx = with_faults(*faults)
    model = _model(ctx)
    model.eval()
    with torch.no_grad():
        full = L.compute_terms(S.forward(model, batches[0], fctx), batches[0], faults=fctx.faults)
        fast = L.compute_terms(forward(model, batches[0], fctx, speed=SpeedOptions()), batches[0], faults=fctx.faults)
    assert fast.text_count == full.text_count > 0
    torch.testing.assert_close(fast.text_sum, full.text_sum, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.text_token_ce, full.text_token_ce, rtol=1e-5, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(fast.audio_sums, full.audio_sums, rtol=1e-6, atol=1e-6)


def test_chunked_cross_entropy_equals_one_chunk():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 9, 8, generator=g, requires_grad=True)
    weight = torch.randn(50, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9), generator=g)
    labels[0, :3] = -100
    sums, grads = [], []
    for chunk in (0, 2):
        s, n, _ = gathered_text_terms(TextHeadInputs(hidden, weight, chunk_rows=chunk), labels)
        s.backward()
        sums.append(s.detach())
        grads.append((hidden.grad.clone(), weight.grad.clone()))
        hidden.grad = weight.grad = None
    assert n == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(sums[1], sums[0])
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------ length grouping

def test_merged_lengths_match_the_model(ctx, items, batches):
    batch = batches[0]
    with torch.no_grad():
        out = S.forward(_model(ctx), batch, ctx)
    real = out.extra["attention_mask"].sum(dim=1).tolist()
    cfg = ctx.model_config
    assert batch_merged_lengths(batch, cfg.audio_in_token_idx, cfg.audio_out_token_idx) == real
    assert [item_merged_length(it.sample, cfg) for it in items[:4]] == real
    assert padded_length(real) == out.expanded_input_ids.shape[1]


def _per_sample_ce(lb, batch, ids):
    """sample id -> (text CE values, audio CE rows (n, C)) from a breakdown's per-token maps."""
    out = {}
    starts = batch.audio_out_ids_start.tolist() + [lb.audio_token_ce.shape[0]]
    owner = batch.audio_out_ids_start_group_loc.tolist()
    for b, sid in enumerate(ids):
        row = lb.text_token_ce[b]
        audio = [lb.audio_token_ce[starts[s]:starts[s + 1]] for s in range(len(owner)) if owner[s] == b]
        out[sid] = (row[~torch.isnan(row)], torch.cat(audio))
    return out


def test_length_grouped_micro_batches_give_the_padded_batch_loss(ctx, items):
    eight = items[:8]
    cfg = ctx.model_config
    lengths = [item_merged_length(it.sample, cfg) for it in eight]
    groups = grouped_batches(lengths, 4, seed=3)
    assert sorted(i for g in groups for i in g) == list(range(8))
    plain_batch = S.collate(eight, ctx)
    grouped = [S.collate([eight[i] for i in g], ctx) for g in groups]
    assert sum(b.attention_mask.numel() for b in grouped) <= plain_batch.attention_mask.numel()
    p_lbs, p_total, p_grads = _accumulate(ctx, SpeedOptions.none(), [plain_batch])
    g_lbs, g_total, g_grads = _accumulate(ctx, CPU_ALL, grouped)
    torch.testing.assert_close(g_total, p_total, rtol=1e-5, atol=1e-6)             # global-token normalisation
    _assert_grads_close(g_grads, p_grads)
    plain = _per_sample_ce(p_lbs[0], plain_batch, [it.sample_id for it in eight])
    per_group = {}
    for lb, batch, g in zip(g_lbs, grouped, groups):
        per_group |= _per_sample_ce(lb, batch, [eight[i].sample_id for i in g])
    assert per_group.keys() == plain.keys()
    for sid, (text, audio) in plain.items():
        torch.testing.assert_close(per_group[sid][0], text, rtol=1e-5, atol=1e-6, msg=sid)
        torch.testing.assert_close(per_group[sid][1], audio, rtol=1e-5, atol=1e-6, equal_nan=True, msg=sid)


def test_grouped_batches_are_deterministic_and_shard_across_ranks():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(100, 400, (103,), generator=g).tolist()
    one = grouped_batches(lengths, 4, world_size=3, rank=1, seed=7, epoch=2)
    assert one == grouped_batches(lengths, 4, world_size=3, rank=1, seed=7, epoch=2)
    assert one != grouped_batches(lengths, 4, world_size=3, rank=1, seed=7, epoch=3)
    ranks = [grouped_batches(lengths, 4, world_size=3, rank=r, seed=7, epoch=2) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) == 103 // 12
    seen = [i for r in ranks for b in r for i in b]
    assert len(seen) == len(set(seen)) == 12 * (103 // 12)                          # each sample at most once
    assert all(len(b) == 4 for r in ranks for b in r)
    # step k of every rank comes from one length-sorted global batch: similar lengths on all ranks
    for step in zip(*ranks):
        merged = sorted((lengths[i] for b in step for i in b), reverse=True)
        assert max(merged) == max(lengths[i] for i in step[0] + step[1] + step[2]) and len(merged) == 12
    assert max(lengths[i] for b in (r[0] for r in ranks) for i in b) == max(
        lengths[i] for r in ranks for b in r for i in b)                             # longest batch first
    random_order = torch.randperm(103, generator=g).tolist()[:96]
    random_batches = [random_order[i:i + 4] for i in range(0, 96, 4)]
    grouped = [b for r in ranks for b in r]
    assert padding_efficiency(grouped, lengths) > padding_efficiency(random_batches, lengths)


def test_grouped_batches_refuse_too_few_samples():
    with pytest.raises(ValueError, match="cannot fill a batch"):
        grouped_batches([5, 6, 7], 2, world_size=2)


# ------------------------------------------------------------------------------ options

def test_speed_spec_grammar(monkeypatch):
    cuda = SpeedOptions.defaults("cuda")
    assert cuda.fast_head and cuda.index_ffn and cuda.compile_layers and not cuda.group_by_length
    assert cuda.tf32 and not cuda.liger_rmsnorm and not SpeedOptions.all().tf32
    assert cuda.lora_bf16 and not SpeedOptions.all().lora_bf16           # numerics-changing: CUDA default only
    assert SpeedOptions.defaults("cpu") == SpeedOptions() == SpeedOptions.none().replace(fast_head=True)
    assert apply_spec(cuda, "-compile,no-index-ffn,-tf32", "cuda") == cuda.replace(compile_layers=False,
                                                                                   index_ffn=False, tf32=False)
    assert apply_spec(cuda, "none,fast-head", "cuda") == SpeedOptions()
    assert apply_spec(SpeedOptions(), "ce-chunk-rows=7", "cpu").ce_chunk_rows == 7
    with pytest.raises(SpeedSpecError, match="unknown speed switch 'compiel'"):
        apply_spec(cuda, "compiel", "cuda")
    monkeypatch.setenv(ENV_VAR, "none,index-ffn")
    assert resolve("cpu", "causal-attn") == SpeedOptions.none().replace(index_ffn=True, causal_attn=True)
    assert resolve("cpu", None, env=False) == SpeedOptions()
    labels = [label for label, _ in flipped(cuda, ["compile", "tf32", "none"])]
    assert labels == ["-compile", "-tf32", "none"]
    assert set(SWITCHES) == set(cuda.to_json()) - {"ce-chunk-rows"}


def test_options_travel_with_the_model(ctx):
    model = _model(ctx, CPU_ALL)
    assert speed_of(model) == CPU_ALL
    assert speed_of(_model(ctx)) == SpeedOptions()


def test_causal_attention_only_for_right_padding(ctx):
    assert attention.is_right_padded(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert not attention.is_right_padded(torch.tensor([[0, 1, 1], [1, 1, 1]]))
    assert not attention.is_right_padded(torch.tensor([[1, 0, 1]]))
    base = speedups.base_model(_model(ctx))
    assert attention.unsupported_reason(base) is None
    report = speedups.apply(_model(ctx), SpeedOptions.none().replace(causal_attn=True))
    assert report["causal_attn"] == "installed"
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    x = torch.zeros(2, 4, base.config.text_config.hidden_size)
    attention.install(base)
    assert base._update_causal_mask(left, x, torch.arange(4), None, False) is not None   # upstream's mask
    assert base._update_causal_mask(torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]), x, torch.arange(4), None,
                                    False) is None


def test_liger_switches_say_what_is_missing(ctx):
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        from custom_impl.kernels import MissingKernelError
        with pytest.raises(MissingKernelError, match="pip install liger-kernel"):
            speedups.apply(_model(ctx), SpeedOptions.none().replace(liger_rmsnorm=True))
    else:
        pytest.skip("liger-kernel is installed here (its kernels need CUDA: tests/harness/test_gpu_pipelines.py)")


@pytest.mark.slow
def test_training_cli_runs_with_every_switch_and_the_same_first_loss(tmp_path):
    from tests.custom_impl.train_runner import run_train

    common = ("--max-steps", "2", "--grad-accum", "1", "--batch-size", "2")
    plain = run_train(tmp_path / "plain", *common, "--speed", "none", nproc=1)
    fast = run_train(tmp_path / "fast", *common, "--speed", "all,-group-by-length", nproc=1)
    grouped = run_train(tmp_path / "grouped", *common, "--speed", "all", nproc=1)
    assert len(plain) == len(fast) == len(grouped) == 2
    assert math.isclose(fast[0]["loss"], plain[0]["loss"], rel_tol=1e-5)
    assert plain[0]["rank0_sample_ids"] == fast[0]["rank0_sample_ids"]
    assert all(math.isfinite(r["loss"]) for r in grouped)


def test_training_cli_rejects_an_unknown_switch(capsys):
    from custom_impl.train import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["--speed", "compiel"])
    assert exc.value.code == 2 and "unknown speed switch 'compiel'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ CUDA (skipped without)

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_defaults_keep_the_bf16_loss_and_gradients(assets, items):
    """On CUDA (bf16 frozen base, fp32 LoRA): the device defaults (compile and tf32 included, tf32
    turned on process-wide as the training CLI does and checked to be on) and, when liger-kernel is
    installed, its kernels give the plain pipeline's loss within bf16 noise."""
    from harness.engine.common_config import common_train_config
    from higgs_common.context import build_context

    from custom_impl.collator import batch_to_device

    ctx = build_context(assets.model, assets.audio_tokenizer, device="cuda")
    train = common_train_config("cuda")
    cuda_batches = [batch_to_device(S.collate(items[i:i + 4], ctx), ctx.device) for i in (0, 4)]
    variants = [SpeedOptions.defaults("cuda")]
    try:
        import liger_kernel  # noqa: F401
        variants.append(SpeedOptions.defaults("cuda").replace(liger_rmsnorm=True, liger_swiglu=True, liger_ce=True))
        variants.append(SpeedOptions.none().replace(fast_head=True, liger_rmsnorm=True, liger_swiglu=True))
    except ImportError:
        pass
    assert SpeedOptions.defaults("cuda").tf32                      # the CUDA defaults include tf32 ...
    with speedups.process_settings(SpeedOptions.none()):
        assert not torch.backends.cuda.matmul.allow_tf32          # ... the plain pipeline runs without it
        _, off_total, off_grads = _accumulate(ctx, SpeedOptions.none(), cuda_batches, train=train)
    for opts in variants:
        # process_settings is what the training CLI and the bench enter: tf32 on where opts say so
        with speedups.process_settings(opts):
            assert torch.backends.cuda.matmul.allow_tf32 == opts.tf32, opts.describe()
            assert torch.get_float32_matmul_precision() == ("high" if opts.tf32 else "highest"), opts.describe()
            _, on_total, on_grads = _accumulate(ctx, opts, cuda_batches, train=train)
        torch.testing.assert_close(on_total, off_total, rtol=1e-2, atol=1e-3, msg=opts.describe())
        for name, g in off_grads.items():
            diff = float((on_grads[name].float() - g.float()).norm())
            assert diff <= 3e-2 * float(g.float().norm()) + 1e-6, (opts.describe(), name, diff)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("copy_grads", [True, False], ids=["grads-copied", "grads-left-in-graph-memory"])
def test_cuda_graphs_replay_the_compiled_layers_step_after_step(assets, items, monkeypatch, copy_grads):
    """cuda-graphs on top of the CUDA defaults, five optimizer steps on the same two micro-batches
    (gradient accumulation; per shape the plain compiled core, a warm-up, a recording, then replays of
    each layer's forward and backward graphs):

    * the objective of every step equals the run without graphs within bf16 noise of the trajectory
      (both bf16, dropout 0: no random draws), and the loss falls: the replays read the updated
      weights.  The trained adapters are not compared: AdamW divides each element's step by that
      element's own gradient scale, so elements whose gradient is near zero move by +-lr on bf16
      noise alone.
    * once both shapes replay, the accumulated gradients of the two micro-batches equal those of
      the same model, on the same weights, running the same compiled layers without graphs: the
      first micro-batch's gradients survive the second one's replay into the same graph memory
      (without the copy out of it, they become the second one's).  The same weights and the same
      compiled graph, launched or replayed (the graphed core is a second compile of it, in
      "reduce-overhead" mode, whose kernels may be chosen apart): each micro-batch's gradient leaves
      the layers' bf16 matmuls rounded once, so the fp32 sum of the two may move by one bf16 rounding
      (2^-8) of each, 2 x 2^-8 of the whole norm-wise.
      With the copy taken out (`grads-left-in-graph-memory`) the kept gradients must be lost, as
      CUDA graph trees' "overwritten by a subsequent run" error or as different values: the test can fail.
    """
    from harness.engine.common_config import common_train_config
    from higgs_common.context import build_context

    from custom_impl.collator import batch_to_device

    ctx = build_context(assets.model, assets.audio_tokenizer, device="cuda")
    train = common_train_config("cuda").replace(lora_dropout=0.0)
    cuda_batches = [batch_to_device(S.collate(items[i:i + 4], ctx), ctx.device) for i in (0, 4)]
    if not copy_grads:
        monkeypatch.setattr(dual_ffn, "_grad_out_of_graph_memory", lambda cache, grad: None)

    def train_five_steps(model, optimizer) -> list[float]:
        totals = []
        for _ in range(5):
            objectives: list[torch.Tensor] = []
            accumulate(model, cuda_batches, ctx, objectives=objectives)
            totals.append(float(torch.stack(objectives).sum()))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return totals

    def replayed_and_launched(model, optimizer, policy) -> tuple[dict, dict]:
        accumulate(model, cuda_batches, ctx)                      # replays of both shapes
        replayed = _grads(model)
        optimizer.zero_grad(set_to_none=True)
        graphed, cap = list(policy.graphed), policy.max_shapes
        policy.graphed.clear()
        policy.max_shapes = 0                                     # full and empty: no shape graphs
        try:
            accumulate(model, cuda_batches, ctx)                  # the same compiled layers, launched
        finally:
            policy.graphed[:], policy.max_shapes = graphed, cap
        return replayed, _grads(model)

    runs, grads, overwritten = {}, None, None
    for graphs in ((False, True) if copy_grads else (True,)):
        opts = SpeedOptions.defaults("cuda").replace(cuda_graphs=graphs)
        with speedups.process_settings(opts):
            model = _model(ctx, opts, train)
            try:
                optimizer, _ = S.make_optimizer(model, train)
                policy = speedups.base_model(model).higgs_graph_policy
                try:
                    runs[graphs] = train_five_steps(model, optimizer)
                    assert (policy is not None and len(policy.graphed) == 2) == graphs   # both shapes
                    if graphs:
                        grads = replayed_and_launched(model, optimizer, policy)
                except RuntimeError as exc:
                    # CUDA graph trees' own check: a later replay wrote over a tensor still in use
                    if copy_grads or "overwritten by a subsequent run" not in str(exc):
                        raise
                    overwritten = exc
            finally:
                speedups.release(model)
    if not copy_grads:
        # without the copy the kept gradients are lost: loudly (graph trees' check) or in the values
        off = ([] if grads is None else
               [float((grads[0][n].float() - g.float()).norm()) / (float(g.float().norm()) + 1e-6)
                for n, g in grads[1].items()])
        assert overwritten is not None or max(off, default=0.0) > 2 * 2.0 ** -8, \
            "the replay did not write over the kept gradients"
        return
    replayed, launched = grads
    torch.testing.assert_close(torch.tensor(runs[True]), torch.tensor(runs[False]), rtol=1e-2, atol=1e-3)
    assert runs[False][-1] < runs[False][0]                         # it trained
    assert replayed.keys() == launched.keys() and replayed
    for name, g in launched.items():
        diff = float((replayed[name].float() - g.float()).norm())
        assert diff <= 2 * 2.0 ** -8 * float(g.float().norm()) + 1e-6, (name, diff)


def test_process_settings_turn_tf32_on_and_off_and_restore():
    """The tf32 switch sets fp32 matmuls to TF32 ('high', what allow_tf32 reads) process-wide, and
    off ('highest') when the switch is off, whatever the process had; leaving restores it."""
    before = torch.get_float32_matmul_precision()
    with speedups.process_settings(SpeedOptions.defaults("cuda")):
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
        with speedups.process_settings(SpeedOptions.defaults("cuda").replace(tf32=False)):
            assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before


def test_permute_rows_gathers_both_ways_and_matches_index_select():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    idx = torch.randperm(7, generator=g)
    inv = torch.empty_like(idx).index_copy_(0, idx, torch.arange(7))
    w = torch.randn(7, 4, generator=g, dtype=torch.float64)
    a = x.clone().requires_grad_(True)
    (dual_ffn.permute_rows(a, idx, inv) * w).sum().backward()
    b = x.clone().requires_grad_(True)
    (b.index_select(0, idx) * w).sum().backward()
    assert torch.equal(dual_ffn.permute_rows(x, idx, inv), x.index_select(0, idx))
    assert torch.equal(a.grad, b.grad)                            # the inverse gather is autograd's scatter
    assert torch.equal(dual_ffn.permute_rows(dual_ffn.permute_rows(x, idx, inv), inv, idx), x)


def _lora_linear(seed: int = 0, base_dtype=torch.bfloat16):
    """A peft LoRA Linear (r 4) on a frozen base of `base_dtype`, fp32 adapters, B non-zero."""
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(24, 20, bias=True)).to(base_dtype)
    peft_model = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules=["0"]))
    layer = peft_model.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    assert layer.lora_A["default"].weight.dtype == torch.float32
    return layer


def _run_lora(layer, x):
    x = x.clone().requires_grad_(True)
    out = layer(x)
    (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = [layer.lora_A["default"].weight.grad.clone(), layer.lora_B["default"].weight.grad.clone(), x.grad.clone()]
    layer.zero_grad()
    return out.detach(), grads


def test_lora_bf16_is_the_reference_autocast_of_the_adapter_path():
    """On a bf16 base the patched forward computes what peft's forward computes under bf16 autocast
    (the reference's setting), within bf16 rounding; the adapters' gradients stay fp32."""
    from custom_impl import lora_compute

    layer = _lora_linear()
    x = torch.randn(3, 5, 24, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_out, ref_grads = _run_lora(layer, x)
    assert lora_compute.install(layer) == 1 and lora_compute.install(layer) == 0     # once per module
    out, grads = _run_lora(layer, x)
    assert out.dtype == torch.bfloat16 and grads[0].dtype == grads[1].dtype == torch.float32
    # bf16 (8-bit significand) rounding of the inputs and of two sums: a few units of 2^-8 relative
    torch.testing.assert_close(out.float(), ref_out.float(), rtol=2 ** -6, atol=2 ** -6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.float(), b.float(), rtol=2 ** -5, atol=2 ** -5 * float(b.float().abs().max()))


def test_lora_bf16_on_an_fp32_base_changes_only_summation_order_and_falls_back_to_peft():
    from custom_impl import lora_compute

    layer = _lora_linear(base_dtype=torch.float32)
    x = torch.randn(2, 6, 24, generator=torch.Generator().manual_seed(2))
    ref_out, ref_grads = _run_lora(layer, x)
    lora_compute.install(layer)
    out, grads = _run_lora(layer, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    layer.enable_adapters(False)                 # not covered: peft's own forward, the base layer alone
    with torch.no_grad():
        assert torch.equal(layer(x), layer.base_layer(x))


def test_lora_bf16_leaves_a_lora_bias_to_peft_and_keeps_modules_picklable(tmp_path):
    """A bias on lora_B (peft's lora_bias) is not covered: peft's forward runs it.  The changed modules
    are still peft LoRA Linears and survive torch.save / torch.load."""
    import io

    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.layer import Linear as LoraLinear

    from custom_impl import lora_compute

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(24, 20))
    layer = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules=["0"], lora_bias=True)).base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        layer.lora_B["default"].bias.normal_()
    x = torch.randn(3, 24)
    with torch.no_grad():
        before = layer(x)
        assert lora_compute.install(layer) == 1 and isinstance(layer, LoraLinear)
        torch.testing.assert_close(layer(x), before, rtol=0, atol=0)         # peft's own forward ran
    plain = _lora_linear(base_dtype=torch.float32)
    lora_compute.install(plain)
    buf = io.BytesIO()
    torch.save(plain, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is lora_compute.BaseDtypeLoraLinear
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), plain(x))
