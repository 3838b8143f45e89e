"""higgs_common.capture: cross-entropy calls and forward outputs of a fused forward-and-loss call."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from higgs_common.capture import capture


def test_records_functional_and_module_calls_with_per_position_ce():
    torch.manual_seed(0)
    logits = torch.randn(6, 5, requires_grad=True)                  # (N, C)
    target = torch.tensor([0, 1, -100, 3, 4, -100])                # (N,)
    model = torch.nn.Linear(5, 5)
    with capture(model) as cap:
        out = model(logits)
        a = F.cross_entropy(out, target)                            # mean over supervised
        b = torch.nn.CrossEntropyLoss(reduction="sum", label_smoothing=0.1)(logits, target)
    assert F.cross_entropy.__module__ == "torch.nn.functional"          # restored
    assert len(cap.calls) == 2 and len(cap.outputs) == 1 and torch.equal(cap.outputs[0], out)
    first, second = cap.calls
    assert first.reduction == "mean" and second.reduction == "sum" and second.label_smoothing == 0.1
    assert first.site.endswith(f"test_capture.py:{_line_of('a = F.cross_entropy')}")
    assert first.supervised == 4
    assert torch.isnan(first.per_position[[2, 5]]).all()
    # the recorded per-position CE reduces to the call's own result
    torch.testing.assert_close(torch.nanmean(first.per_position), a.detach())
    torch.testing.assert_close(torch.nansum(second.per_position), b.detach())
    a.backward()                                                     # the graph is untouched
    assert logits.grad is not None and model.weight.grad is not None


def test_per_codebook_split_and_errors():
    torch.manual_seed(1)
    frames, books, k = 4, 3, 7
    audio_logits = torch.randn(frames, books, k)                    # (N, C, K), upstream layout
    labels = torch.randint(0, k, (frames, books))
    labels[0, 2] = -100
    with capture() as cap:
        F.cross_entropy(audio_logits.reshape(-1, k), labels.reshape(-1))
    means, counts = cap.call().per_codebook(books)
    assert counts.tolist() == [4, 4, 3]
    want = [float(F.cross_entropy(audio_logits[:, c], labels[:, c])) for c in range(books)]
    assert all(math.isclose(float(m), w, rel_tol=1e-6) for m, w in zip(means, want))
    with pytest.raises(ValueError, match="do not split into 5 codebooks"):
        cap.call().per_codebook(5)
    with pytest.raises(LookupError, match="0 cross-entropy calls match"):
        cap.call(site="nowhere.py")


def _line_of(text: str) -> int:
    with open(__file__) as fh:
        return next(i for i, line in enumerate(fh, 1) if text in line and "_line_of" not in line)


def test_position_map_indexes_by_target_position():
    torch.manual_seed(2)
    b, length, v = 2, 5, 11
    logits = torch.randn(b, length, v)                              # (B, L, V)
    labels = torch.randint(0, v, (b, length))
    labels[0, 3] = -100
    with capture() as cap:
        F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1))
    got = cap.call().position_map((b, length))
    assert torch.isnan(got[:, 0]).all() and torch.isnan(got[0, 3])
    want = F.cross_entropy(logits[1, 1], labels[1, 2])              # logits at t score the label at t + 1
    torch.testing.assert_close(got[1, 2], want)
    with pytest.raises(ValueError, match="expected 3 x"):
        cap.call().position_map((3, length))
