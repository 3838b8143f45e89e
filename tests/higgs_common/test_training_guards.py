"""Issue 15: guards for trainables without a gradient and for a silent per-codebook loss."""

from __future__ import annotations

import pytest
import torch

from higgs_common.guards import (MissingGradientError, ZeroAudioLossError, check_codebook_losses_nonzero,
                                 check_grads_flow, frozen_trainable_names, supervised_frames_per_codebook)

KW = dict(step=3, sample_ids=["a", "b"], losses={"audio": 1.5})


class _Lora(torch.nn.Module):
    """peft's parameter names for one adapted layer: W frozen, A random, B zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.base_layer = torch.nn.Linear(4, 4)
        self.base_layer.requires_grad_(False)
        self.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(4, 2, bias=False)})
        self.lora_B = torch.nn.ModuleDict({"default": torch.nn.Linear(2, 4, bias=False)})
        torch.nn.init.zeros_(self.lora_B["default"].weight)

    def forward(self, x):
        return self.base_layer(x) + self.lora_B["default"](self.lora_A["default"](x))


def _step(model, x):
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()


def test_lora_a_may_be_zero_only_while_b_is_zero():
    m = _Lora()
    x = torch.randn(3, 4)
    _step(m, x)
    assert m.lora_A["default"].weight.grad.abs().sum() == 0          # dL/dA = B^T ... = 0 at init
    assert frozen_trainable_names(m.named_parameters()) == ([], [])
    check_grads_flow(m.named_parameters(), **KW)
    with torch.no_grad():
        m.lora_B["default"].weight.fill_(0.1)                         # after a step with lr > 0
    _step(m, x)
    m.lora_A["default"].weight.grad.zero_()                           # now it cannot be zero
    with pytest.raises(MissingGradientError, match=r"exactly-zero gradient: lora_A\.default\.weight") as err:
        check_grads_flow(m.named_parameters(), **KW)
    assert "step 3" in str(err.value) and "['a', 'b']" in str(err.value)


def test_lora_b_zero_or_none_is_an_error_from_step_one():
    m = _Lora()
    _step(m, torch.randn(3, 4))
    m.lora_B["default"].weight.grad.zero_()
    with pytest.raises(MissingGradientError, match=r"lora_B\.default\.weight"):
        check_grads_flow(m.named_parameters(), **KW)
    m.lora_B["default"].weight.grad = None
    with pytest.raises(MissingGradientError, match=r"received no gradient \(grad is None\): lora_B"):
        check_grads_flow(m.named_parameters(), **KW)


def test_frozen_parameters_are_not_trainables():
    m = _Lora()
    m.lora_A.requires_grad_(False)
    m.lora_B.requires_grad_(False)
    check_grads_flow(m.named_parameters(), **KW)      # nothing trainable, nothing to complain about


def test_codebook_guard():
    labels = torch.tensor([[5, 6, -100], [-100, -100, -100], [1, 2, 3]])
    assert supervised_frames_per_codebook(labels) == [2, 0, 3]
    assert supervised_frames_per_codebook(None) == [] and supervised_frames_per_codebook(torch.zeros(0, 0)) == []
    check_codebook_losses_nonzero([1.0, 2.0, 3.0], [2, 2, 3], has_target_audio=True, **KW)
    with pytest.raises(ZeroAudioLossError, match=r"codebook 1: no supervised frame"):
        check_codebook_losses_nonzero([1.0, 0.0, 3.0], [2, 0, 3], has_target_audio=True, **KW)
    with pytest.raises(ZeroAudioLossError, match=r"codebook 1: no supervised frame .*loss nan"):
        check_codebook_losses_nonzero([1.0, float("nan"), 3.0], [2, 0, 3], has_target_audio=True, **KW)
    with pytest.raises(ZeroAudioLossError, match=r"codebook 2: loss exactly 0.0 over 3 supervised frames"):
        check_codebook_losses_nonzero([1.0, 2.0, 0.0], [2, 2, 3], has_target_audio=True, **KW)
    # not this guard's business: no target audio, nothing supervised at all, no per-codebook term
    check_codebook_losses_nonzero([0.0, 0.0], [2, 2], has_target_audio=False, **KW)
    check_codebook_losses_nonzero([0.0, 0.0], [0, 0], has_target_audio=True, **KW)
    check_codebook_losses_nonzero([], [2, 2], has_target_audio=True, **KW)
