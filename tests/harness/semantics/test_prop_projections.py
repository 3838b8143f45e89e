"""Properties of the canonical projections: the delay pattern round-trips, and the supervised-code
projection recovers exactly the target codes from any upstream collator layout."""

from __future__ import annotations

import pytest
import torch
from boson_multimodal.data_collator.higgs_audio_collator import HiggsAudioSampleCollator
from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample
from boson_multimodal.model.higgs_audio.utils import build_delay_pattern_mask, revert_delay_pattern
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.semantics import projections as P
from tests.strategies import CollatorOptions, codes, collator_options, frame_counts

pytestmark = pytest.mark.property

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def code_grids(draw, max_seconds: float = 30.0):
    c = draw(st.integers(1, 8))
    k = draw(st.sampled_from([2, 32, 1024]))
    return draw(codes(c, k, frames=frame_counts(max_seconds))), k


@SETTINGS
@given(grid=code_grids())
def test_delay_then_revert_is_identity(grid):
    ids, k = grid                                                 # (C, T)
    delayed = P.apply_delay(ids, k, k + 1)                        # (C, T + C - 1)
    assert delayed.shape == (ids.shape[0], ids.shape[1] + ids.shape[0] - 1)
    assert torch.equal(P.revert_delay(delayed), ids)
    # upstream functions directly, batch dimension included
    up, _ = build_delay_pattern_mask(ids.unsqueeze(0), bos_token_id=k, pad_token_id=k + 1)
    assert torch.equal(revert_delay_pattern(up[0]), ids)


@SETTINGS
@given(segments=st.integers(1, 3).flatmap(
    lambda c: st.lists(codes(c, 32, frames=frame_counts(4.0)), min_size=1, max_size=4)))
def test_delay_segments_then_undelay_is_identity(segments):
    ids = torch.cat(segments, dim=1)                              # (C, sum T)
    starts = torch.tensor([0] + [s.shape[1] for s in segments[:-1]]).cumsum(0)
    delayed, new_starts = P.delay_segments(ids, starts, bos=32, pad=33)
    assert new_starts.numel() == len(segments)
    assert torch.equal(P.undelayed_segments(delayed, new_starts, delayed=True), ids)


AUDIO_IN, AUDIO_OUT, PAD, TEXT = 7, 8, 0, 3


def upstream_sample(target: torch.Tensor, ref: torch.Tensor | None, n_text: int) -> ChatMLDatasetSample:
    """A hand-built sample: text, optional <|AUDIO|> reference, then a labelled <|AUDIO_OUT|> target."""
    tokens, labels, clips = [TEXT] * n_text, [-100] * n_text, []
    if ref is not None:
        tokens, labels = tokens + [AUDIO_IN], labels + [-100]
        clips.append(ref)
    tokens, labels = tokens + [AUDIO_OUT, TEXT], labels + [AUDIO_OUT, TEXT]
    clips.append(target)
    starts = torch.tensor([0] + [c.shape[1] for c in clips[:-1]]).cumsum(0)
    n = len(clips)
    return ChatMLDatasetSample(
        input_ids=torch.tensor(tokens), label_ids=torch.tensor(labels),
        audio_ids_concat=torch.cat(clips, dim=1), audio_ids_start=starts,
        audio_waveforms_concat=torch.zeros(0), audio_waveforms_start=torch.zeros(0, dtype=torch.long),
        audio_sample_rate=torch.full((n,), 24000.0), audio_speaker_indices=torch.full((n,), -1))


@st.composite
def upstream_batches(draw):
    opts: CollatorOptions = draw(collator_options())
    n = draw(st.integers(1, 4))
    grid = codes(opts.num_codebooks, opts.codebook_size, frames=frame_counts(6.0))
    targets = [draw(grid) for _ in range(n)]
    refs = [draw(st.none() | grid) for _ in range(n)]
    n_text = [draw(st.integers(1, 12)) for _ in range(n)]
    mask_label = draw(st.booleans())
    return opts, targets, refs, n_text, mask_label


@SETTINGS
@given(drawn=upstream_batches())
def test_supervised_projection_recovers_targets_for_any_upstream_layout(drawn):
    """Whatever the pad side, rounding, codebook count, delay pattern: projection == target codes."""
    opts, targets, refs, n_text, mask_label = drawn
    k = opts.codebook_size
    collator = HiggsAudioSampleCollator(
        whisper_processor=None, audio_in_token_id=AUDIO_IN, audio_out_token_id=AUDIO_OUT, pad_token_id=PAD,
        audio_stream_bos_id=k, audio_stream_eos_id=k + 1, round_to=opts.round_to, pad_left=opts.pad_left,
        encode_whisper_embed=False, return_audio_in_tokens=True, audio_num_codebooks=opts.num_codebooks,
        use_delay_pattern=opts.use_delay_pattern, mask_audio_out_token_label=mask_label)
    batch = collator([upstream_sample(t, r, m) for t, r, m in zip(targets, refs, n_text)])
    want = torch.cat(targets, dim=1)
    sup = P.supervised_audio_codes(batch.label_audio_ids, batch.audio_out_ids_start,
                                   delayed=opts.use_delay_pattern, bos=k, eos=k + 1)
    assert torch.equal(sup, want)
    undelayed = P.undelayed_segments(batch.audio_out_ids, batch.audio_out_ids_start, delayed=opts.use_delay_pattern)
    keep = ((undelayed != k) & (undelayed != k + 1)).all(dim=0)
    assert torch.equal(undelayed[:, keep], want)
    assert batch.input_ids.shape[1] % opts.round_to == 0
