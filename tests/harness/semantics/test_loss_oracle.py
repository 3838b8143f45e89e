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


def _custom_outputs(setup, ctx):
    """(outputs, batch, loss conventions) of the custom pipeline on the fixture batch, no autograd."""
    model, batch = setup
    custom = importlib.import_module("custom_impl.stages")
    with torch.no_grad():
        return custom.forward(model, batch, ctx), batch, custom.CONVENTIONS.loss


def test_hypotheses_name_a_reversed_shift_and_a_summed_reduction(setup, ctx):
    out, batch, conv = _custom_outputs(setup, ctx)
    with torch.no_grad():
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


# ------------------------------------------------------------------------------ label smoothing

def _smoothed_text_map(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """What a pipeline with cross_entropy(label_smoothing=eps) reports: (B, L), NaN unsupervised."""
    b, length = labels.shape
    out = torch.full((b, length), float("nan"))
    sup = labels[:, 1:] != -100
    ce = torch.nn.functional.cross_entropy(logits[:, :-1][sup], labels[:, 1:][sup], reduction="none",
                                           label_smoothing=eps)
    body = out[:, 1:].clone()
    body[sup] = ce
    out[:, 1:] = body
    return out


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.3])
def test_text_label_smoothing_is_recognised_with_its_epsilon(eps):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 12, 50, generator=g)
    labels = torch.randint(0, 50, (2, 12), generator=g)
    labels[:, :4] = -100
    actual = _smoothed_text_map(logits, labels, eps)
    hyps = H.text_map_hypotheses(logits, labels, actual)
    found = H.match_map(actual, hyps)
    assert found is not None and found.startswith(f"label smoothing {eps:.3g}"), found


def test_plain_text_ce_gets_no_smoothing_hypothesis_and_a_shift_is_not_called_smoothing():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 12, 50, generator=g)
    labels = torch.randint(0, 50, (2, 12), generator=g)
    plain = _smoothed_text_map(logits, labels, 0.0)
    hyps = H.text_map_hypotheses(logits, labels, plain)
    assert not any(k.startswith("label smoothing") for k in hyps)
    assert H.match_map(plain, hyps) is None
    unshifted = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), labels.reshape(-1),
                                                  reduction="none").reshape(2, 12)       # logits[t] vs labels[t]
    assert H.match_map(unshifted, H.text_map_hypotheses(logits, labels, unshifted)).startswith("no next-token shift")


def test_audio_label_smoothing_is_recognised(setup, ctx):
    out, batch, conv = _custom_outputs(setup, ctx)
    logits, labels, starts = out.audio_logits, batch.label_audio_ids, batch.audio_out_ids_start
    rows, cols = H._rows(starts, logits.shape[0], conv.audio_shift_scope, 1, logits.device)
    tgt = labels[:, cols].T                                                    # (m, C)
    sup = tgt != -100
    ce = torch.nn.functional.cross_entropy(logits[rows].reshape(-1, logits.shape[-1]), tgt.reshape(-1).clamp_min(0),
                                           reduction="none", label_smoothing=0.2).reshape(tgt.shape)
    actual = torch.full(logits.shape[:2], float("nan"))
    actual[cols] = torch.where(sup, ce, torch.full_like(ce, float("nan")))
    found = H.match_map(actual, H.audio_map_hypotheses(logits, labels, starts, conv, actual))
    assert found is not None and found.startswith("label smoothing 0.2"), found


def test_declared_no_audio_shift_and_mean_total_equal_a_hand_written_copy_loss():
    """audio_shift="none" scores audio_logits[t] against the labels at t; total="mean" divides the sum
    of the present terms by their number (train-higgs-audio-vi's `total_loss / num_losses`)."""
    from higgs_common.conventions import LossConventions

    g = torch.Generator().manual_seed(3)
    audio_logits = torch.randn(7, 2, 11, generator=g, requires_grad=True)        # (N, C, K)
    labels = torch.randint(0, 11, (2, 7), generator=g)                          # (C, N)
    labels[1, 4] = -100
    text_logits = torch.randn(1, 5, 13, generator=g, requires_grad=True)
    text_labels = torch.tensor([[-100, 3, 4, -100, 7]])
    conv = LossConventions(total="mean", audio_shift="none")
    terms, _t, a = O.declared_loss(text_logits, audio_logits, text_labels, labels, torch.tensor([0]), conv)
    per_cb = [torch.nn.functional.cross_entropy(audio_logits[:, c][labels[c] != -100], labels[c][labels[c] != -100])
              for c in range(2)]
    audio = torch.stack(per_cb).mean()
    text = torch.nn.functional.cross_entropy(text_logits[0, :-1], text_labels[0, 1:], ignore_index=-100)
    torch.testing.assert_close(terms.audio, audio)
    torch.testing.assert_close(terms.total, (text + audio) / 2)
    assert a.mask.sum() == 13 and bool(a.mask[0].all())                          # frame 0 scored too: no shift
    # the declared map is not the shifted one, and the hypotheses name the shift this declaration lacks
    hyps = H.audio_map_hypotheses(audio_logits.detach(), labels, torch.tensor([0]), conv)
    shifted = O.audio_ce(audio_logits.detach(), labels, torch.tensor([0]), scope="segment").nan_map()
    assert H.match_map(shifted, hyps).startswith("a next-frame shift")


def test_a_declared_defect_is_listed():
    from higgs_common.conventions import DEFECTIVE_DECLARATIONS, LossConventions

    assert LossConventions(audio_shift="none").to_json()["audio_shift"] == DEFECTIVE_DECLARATIONS["loss.audio_shift"][0]
    with pytest.raises(ValueError, match="audio_shift"):
        LossConventions(audio_shift="backwards")
