"""Issue 8 on 2+ GPUs (skipped otherwise): the harness's DDP check over real NCCL.

The custom pipeline's DDP run (one GPU per rank, NCCL) is compared with one process on one GPU on
the same global batch: gradients after the all-reduce (backward stage), parameters after optimizer
step 1 and the global loss of every step (step stage), within bf16 tolerance.
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.distributed,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")]


def _compare(tmp_path, *extra: str):
    from harness import compare

    out = tmp_path / "report"
    code = compare.main(["--stage", "all", "--quiet", "--samples", "2", "--device", "cuda",
                         "--ddp-world-size", "2", "--out", str(out), *extra])
    return code, json.loads((out / "report.json").read_text())


def test_two_gpus_over_nccl_agree_with_one_gpu_and_the_report_says_so(tmp_path):
    code, report = _compare(tmp_path)
    assert code == 0 and report["verdict"] == "pass", report["first_divergence"]
    in_sync = [d for d in report["diagnoses"] if d["cause"]["mechanism"].startswith("DDP in sync")]
    assert in_sync and "NCCL on 2 GPUs" in in_sync[0]["cause"]["mechanism"], report["diagnoses"]
    ran = {st.get("stage") or st.get("name") for st in report["stages"]}
    assert {"backward", "step"} <= ran, ran
    md = (tmp_path / "report" / "report.md").read_text()
    assert "DDP in sync" in md


@pytest.mark.parametrize("fault", ["ddp-unwrapped-forward", "inverted-no-sync"])
def test_ddp_faults_are_caught_on_nccl(tmp_path, fault):
    code, report = _compare(tmp_path, "--fault", fault)
    first = report["first_divergence"]
    assert code == 1 and first["stage"] in ("backward", "step"), first
    assert first["field"].startswith("ddp_rank"), first
    assert "not synchronised" in first["cause"]["mechanism"] and "NCCL" in json.dumps(report["diagnoses"])
