"""The independent loss of a declaration equals each pipeline's own loss on the same outputs,
value and gradient; alternative computations are recognised by the hypotheses."""

from __future__ import annotations

import importlib

import pytest
import torch

from harness.semantics import loss_hypotheses as H
from harness.semantics import loss_oracle as O

SPECS = ("reference_impl.stages", "custom_impl.stages", "examples.upstream_defaults.stages")


@pytest.fixture(scope="module")
def setup(records, ctx, tmp_path_factory):
    custom = importlib.import_module("custom_impl.stages")
    items = custom.dataset(custom.write_native(records, tmp_path_factory.mktemp("n")), ctx)
    batch = custom.collate(items, ctx)
    torch.manual_seed(0)
    model = custom.build_model(ctx, custom.DEFAULT_TRAIN.replace(lora_dropout=0.0))
    return model, batch


@pytest.mark.parametrize("spec", SPECS)
def test_oracle_equals_the_pipelines_loss_and_gradient(setup, ctx, spec):
    model, batch = setup
    mod = importlib.import_module(spec)
    custom = importlib.import_module("custom_impl.stages")
    out = custom.forward(model, batch, ctx)
    lb = mod.loss(out, batch, ctx)
    terms, t, a = O.declared_loss(out.logits, out.audio_logits, out.expanded_labels, batch.label_audio_ids,
                                  batch.audio_out_ids_start, mod.CONVENTIONS.loss)
    for name in ("text", "audio", "total"):
        torch.testing.assert_close(getattr(terms, name).detach(), getattr(lb, name).detach().float(), rtol=2e-5,
                                   atol=1e-6, msg=name)
    assert terms.audio_tokens == lb.audio_supervised_tokens and terms.text_tokens == lb.text_supervised_tokens
    g_pipe = torch.autograd.grad(lb.total, [p for p in model.parameters() if p.requires_grad], retain_graph=True)
    g_oracle = torch.autograd.grad(terms.total, [p for p in model.parameters() if p.requires_grad])
    for a_, b_ in zip(g_pipe, g_oracle):
        torch.testing.assert_close(a_, b_, rtol=1e-4, atol=1e-6)


def test_hypotheses_name_a_reversed_shift_and_a_summed_reduction(setup, ctx):
    model, batch = setup
    custom = importlib.import_module("custom_impl.stages")
    conv = custom.CONVENTIONS.loss
    with torch.no_grad():
        out = custom.forward(model, batch, ctx)
        maps = H.audio_map_hypotheses(out.audio_logits, batch.label_audio_ids, batch.audio_out_ids_start, conv)
        reversed_name = next(k for k in maps if "reversed" in k)
        assert H.match_map(maps[reversed_name].nan_map(), maps) == reversed_name
        assert H.match_map(maps["declared"].nan_map(), maps) is None          # the declared map is no misreading
        t = H.text_map_hypotheses(out.logits, out.expanded_labels)["declared"]
        hyps = H.reduced_hypotheses(t, maps["declared"], conv)
        declared = O.reduce(t, maps["declared"], conv)
        summed = hyps["audio reduced as sum over codebooks"]["audio"]
        found = H.match_terms({"audio": summed}, hyps, {"audio": float(declared.audio)})
        assert found["audio"] == "audio reduced as sum over codebooks"
