"""CUDA checks (skipped without a GPU): the pipelines agree in bf16, and the fault table holds on CUDA.

Tolerances (bf16, both sides load the same bf16 weights and run the same upstream forward):
logits / audio_logits rtol 2e-2, atol 2e-2 (a few bf16 ulps: kernels may pick different
reduction orders for the two model objects); losses rtol 1e-2.  The DDP faults are checked with
the harness's own 2-rank gloo workers, which run on the CPU even when the models are on CUDA.
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

LOGIT_TOL = dict(rtol=2e-2, atol=2e-2)
LOSS_RTOL = 1e-2


@pytest.fixture(scope="module")
def cuda_ctx(assets):
    from higgs_common.context import build_context

    return build_context(assets.model, assets.audio_tokenizer, device="cuda")


def test_forward_and_loss_agree_in_bf16(cuda_ctx, records, tmp_path):
    from custom_impl import stages as C
    from harness.engine.common_config import common_train_config
    from reference_impl import stages as R
    from reference_impl.loss import reference_losses

    train = common_train_config("cuda")
    assert train.precision == "bf16"
    native = C.write_native(records[:4], tmp_path)
    items = C.dataset(native, cuda_ctx)
    batch = C.collate(items, cuda_ctx)
    ref, cus = R.build_model(cuda_ctx, train), C.build_model(cuda_ctx, train)
    ref_params = {n: p for n, p in ref.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n, p in cus.named_parameters():
            if p.requires_grad:
                p.copy_(ref_params[n])
    ref.eval(), cus.eval()
    # Both load the frozen base in bf16 on CUDA (custom: custom_impl.model.load_dtype).
    assert {p.dtype for p in ref.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in cus.parameters() if not p.requires_grad} == {torch.bfloat16}
    with torch.no_grad():
        ro, co = R.forward(ref, batch, cuda_ctx), C.forward(cus, batch, cuda_ctx)
    assert ro.logits.is_cuda and co.logits.is_cuda
    torch.testing.assert_close(co.logits.float(), ro.logits.float(), **LOGIT_TOL)
    torch.testing.assert_close(co.audio_logits.float(), ro.audio_logits.float(), **LOGIT_TOL)
    assert torch.equal(co.expanded_labels, ro.expanded_labels)
    # One loss function on both outputs: equal within bf16 noise.
    lab = batch.label_audio_ids.cuda()
    lr = reference_losses(ro.logits, ro.audio_logits, ro.expanded_labels, lab)
    lc = reference_losses(co.logits, co.audio_logits, co.expanded_labels, lab)
    assert torch.isfinite(lr["loss"]) and float(lr["loss"]) > 0
    torch.testing.assert_close(lc["loss"].float(), lr["loss"].float(), rtol=LOSS_RTOL, atol=0)
    # The custom text term equals the reference's text term on the same outputs (same definition).
    c_loss = C.loss(co, batch, cuda_ctx)
    torch.testing.assert_close(c_loss.text.float(), lr["llm_loss"].float(), rtol=LOSS_RTOL, atol=0)


def _compare(tmp_path, *extra: str) -> tuple[int, dict]:
    from harness import compare

    out = tmp_path / "report"
    code = compare.main(["--stage", "all", "--quiet", "--samples", "2", "--device", "cuda",
                         "--out", str(out), *extra])
    return code, json.loads((out / "report.json").read_text())


def test_no_fault_passes_on_cuda(tmp_path):
    code, report = _compare(tmp_path, "--ddp-world-size", "0")
    assert report["config"]["device"] == "cuda"
    assert code == 0 and report["verdict"] == "pass", report["first_divergence"]


@pytest.mark.parametrize("fault", ["reference-audio-as-label", "unmapped-audio-labels", "silent-zero-audio-loss",
                                   "no-shift", "random-extra-layers", "ddp-unwrapped-forward", "inverted-no-sync"])
def test_fault_table_on_cuda(tmp_path, fault):
    from tests.harness.test_fault_table import DDP_FAULTS, FAULT_TABLE

    stage, field, cause = FAULT_TABLE[fault]
    code, report = _compare(tmp_path, "--fault", fault, "--ddp-world-size", "2" if fault in DDP_FAULTS else "0")
    first = report["first_divergence"]
    assert code == 1 and first is not None and first["stage"] == stage, first
    assert first["field"].startswith(field[:-1]) if field.endswith("*") else first["field"] == field, first
    assert cause in first["cause"]["mechanism"], first["cause"]
