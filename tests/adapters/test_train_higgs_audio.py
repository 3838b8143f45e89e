"""train-higgs-audio run from a user's checkout: it passes check_adapter, agrees with this project's
re-implementation (reference_impl) in both roles with only declared differences, and turns the
errors its dataset logs and skips into errors naming the sample.

Needs a clone of github.com/JimmyMa99/train-higgs-audio: set HIGGS_DIFF_TRAIN_HIGGS_AUDIO to its path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from higgs_common.stages import SampleError

CHECKOUT = os.environ.get("HIGGS_DIFF_TRAIN_HIGGS_AUDIO")
pytestmark = pytest.mark.skipif(not CHECKOUT, reason="set HIGGS_DIFF_TRAIN_HIGGS_AUDIO to a clone of "
                                                     "github.com/JimmyMa99/train-higgs-audio")


def _spec() -> str:
    return f"train-higgs-audio={CHECKOUT}"


def test_its_dataset_yields_one_item_per_record_with_reference_impl_tokens(ctx, records, tmp_path):
    from adapters import train_higgs_audio as tha
    from reference_impl import stages as ref
    tha.configure(CHECKOUT)
    native = tha.write_native(records[:3], tmp_path / "native")
    ours, theirs = tha.dataset(native, ctx), ref.dataset(native, ctx)
    assert [i.sample_id for i in ours] == [r.id for r in records[:3]]
    for a, b in zip(ours, theirs):
        assert a.sample.input_ids.tolist() == b.sample.input_ids.tolist()
        assert a.sample.audio_ids_concat.tolist() == b.sample.audio_ids_concat.tolist()
        assert a.label_audio_indices == b.label_audio_indices == (0, 1)


def test_a_sample_its_dataset_would_skip_is_an_error_naming_it(ctx, records, tmp_path):
    from adapters import train_higgs_audio as tha
    tha.configure(CHECKOUT)
    native = tha.write_native(records[:2], tmp_path / "native")
    meta = json.loads((native / "metadata.json").read_text())
    (native / meta["samples"][1]["transcript_file"]).unlink()   # the script logs, then trains on the next sample
    with pytest.raises(SampleError) as err:
        tha.dataset(native, ctx)
    assert meta["samples"][1]["id"] in str(err.value) and "metadata.json" in str(err.value)


@pytest.mark.slow
def test_it_passes_check_adapter(tmp_path):
    from harness import check_adapter
    out = tmp_path / "checks.json"
    assert check_adapter.main([_spec(), "--json", str(out)]) == 0
    assert all(c["passed"] for c in json.loads(out.read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("roles", [("checkout", "reference_impl"), ("reference_impl", "checkout")])
def test_it_agrees_with_reference_impl_in_either_role(roles):
    from harness.testing import assert_pipelines_agree
    specs = {"checkout": _spec(), "reference_impl": "reference_impl.stages"}
    report = assert_pipelines_agree(specs[roles[0]], specs[roles[1]], stage="all")
    sides = report.to_json()["config"]["sides"]
    worker = sides["reference" if roles[0] == "checkout" else "custom"]["worker"]
    assert Path(worker["boson_multimodal"]).resolve().is_relative_to(Path(CHECKOUT).resolve())
