"""The strategies' own contract: drawn samples become valid canonical records whose codes the fake
code cache serves through both native formats, and durations map to the codec's frame counts."""

from __future__ import annotations


import pytest
import torch
from hypothesis import HealthCheck, given, settings

from higgs_common.converters import read_reference_folder, write_chatml_json, write_reference_folder
from tests.strategies import FRAMES_PER_SECOND, batches, durations, frames_for, materialised_context

pytestmark = pytest.mark.property

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@given(seconds=durations())
def test_frames_cover_the_duration_and_never_drop_to_zero(seconds):
    n = frames_for(seconds)
    assert n >= 1
    assert n == 1 or (n - 1) / FRAMES_PER_SECOND < seconds <= n / FRAMES_PER_SECOND + 1e-9
    if seconds < 1 / FRAMES_PER_SECOND:
        assert n == 1


@SETTINGS
@given(samples=batches())
def test_drawn_batches_are_valid_and_served_through_both_formats(ctx, samples):
    k = int(ctx.model_config.audio_codebook_size)
    assert len({s.id for s in samples}) == len(samples)
    with materialised_context(ctx, samples) as (records, c, root):
        for s, r in zip(samples, records):
            for codes in (s.target_codes, s.ref_codes):
                assert codes.dtype == torch.long and codes.dim() == 2
                assert codes.shape[0] == ctx.model_config.audio_num_codebooks
                assert int(codes.min()) >= 0 and int(codes.max()) < k
            assert not (s.ref_codes.shape == s.target_codes.shape and torch.equal(s.ref_codes, s.target_codes))
            assert torch.equal(c.code_cache.codes(r.audio, sample_id=r.id, field="audio"), s.target_codes)
        folder = write_reference_folder(records, root / "ref")
        back = read_reference_folder(folder)
        for s, r in zip(samples, back):     # the converters' byte copies still find their codes
            assert r.text == s.text
            assert torch.equal(c.code_cache.codes(r.audio, sample_id=r.id, field="audio"), s.target_codes)
            assert torch.equal(c.code_cache.codes(r.ref_audio, sample_id=r.id, field="ref_audio"), s.ref_codes)
        assert write_chatml_json(records, root / "chatml.json").is_file()
