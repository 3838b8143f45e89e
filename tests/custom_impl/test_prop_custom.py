"""Custom-pipeline properties: the voice prompt is never a target; blank transcripts fail loudly."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custom_impl import stages as C
from higgs_common.stages import SampleError
from tests.harness.test_prop_pipelines import check_reference_never_target
from tests.strategies import batches, blank_transcripts, drawn_samples, materialised_context

pytestmark = pytest.mark.property

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(samples=batches())
def test_reference_voice_is_never_an_audio_target(ctx, samples):
    check_reference_never_target(samples, ctx)


@SETTINGS
@given(sample=drawn_samples(max_seconds=1.0, text=blank_transcripts()), blank_field=st.sampled_from(["text", "ref_text"]))
def test_blank_transcript_is_a_sample_error_naming_sample_and_field(ctx, sample, blank_field):
    if blank_field == "ref_text":
        sample.ref_text, sample.text = sample.text, "a real target sentence"
    with materialised_context(ctx, [sample]) as (records, c, root):
        native = C.write_native(records, root / "native")
        with pytest.raises(SampleError) as err:
            C.dataset(native, c)
    assert err.value.sample_id == sample.id
    assert err.value.field is not None and "text" in err.value.field
    assert sample.id in str(err.value) and str(native) in str(err.value)
