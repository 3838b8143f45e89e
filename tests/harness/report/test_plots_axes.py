"""Heatmap axes come from the field's declared axes: a (frame, codebook) loss grid is drawn with
frames along x and codebooks along y, each axis labelled with its declared name."""

from __future__ import annotations

import pytest
import torch

from harness.engine.diff import diff_tensors
from harness.report import plots
from harness.report.model import Report, StageResult, stage_status
from harness.report.render import heatmap_fields, render_html


def _ce_grid_mask() -> torch.Tensor:
    mask = torch.zeros(167, 8, dtype=torch.bool)   # (frame, codebook), as the loss stage's audio_ce_common
    mask[1:60, :] = True
    return mask


def test_frame_by_codebook_grid_puts_frames_on_x():
    fig = plots.heatmap_figure(_ce_grid_mask(), "loss.audio_ce_common", axes=("frame", "codebook"))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "frame (dim 0)" and ax.get_ylabel() == "codebook (dim 1)"
    drawn = ax.get_images()[0].get_array()
    assert tuple(drawn.shape) == (8, 167)                  # (codebook rows, frame columns)
    assert ax.get_ylim()[0] == pytest.approx(7.5)          # the y axis runs over the 8 codebooks, not 167 frames


def test_codebook_by_frame_grid_is_not_transposed():
    fig = plots.heatmap_figure(_ce_grid_mask().t(), "codes", axes=("codebook", "frame"))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "frame (dim 1)" and ax.get_ylabel() == "codebook (dim 0)"
    assert tuple(ax.get_images()[0].get_array().shape) == (8, 167)


def test_undeclared_axes_say_so_and_wrong_axes_are_refused():
    ax = plots.heatmap_figure(torch.zeros(3, 5, dtype=torch.bool), "x").axes[0]
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("dim 0", "dim 1")
    with pytest.raises(ValueError, match="2 axis names"):
        plots.heatmap_layout((3, 5), ("frame",))


def test_plotted_count_is_the_fields_own_count_and_names_the_sample():
    ref = torch.zeros(167, 8)
    cus = ref.clone()
    cus[1:60] = 1.0
    f = diff_tensors(ref, cus, stage="loss", field="audio_ce_common", keep_mask=True,
                     sample_of=lambda i: "spk_b" if i[0] > 80 else "spk_a")
    f.axes = ["frame", "codebook"]
    report = Report("t", "isolated", ["loss"], [StageResult("loss", stage_status([f]), [f])],
                    generated_at="2025-01-01T00:00:00+00:00")
    assert heatmap_fields(report) == [f]
    assert int(f.mismatch_mask.sum()) == f.mismatches == 59 * 8
    text = render_html(report)
    assert f"loss.audio_ce_common, sample spk_a: {59 * 8} of {167 * 8} differ (the first divergence)" in text
    assert "(frame x codebook)" in text


def test_first_divergence_is_plotted_first_and_other_samples_of_a_field_are_not_repeated():
    def codes(stage: str, field: str, sample: str):
        ref = torch.zeros(4, 30, dtype=torch.long)
        cus = ref.clone()
        cus[0, 3] = 1
        d = diff_tensors(ref, cus, stage=stage, field=field, keep_mask=True, sample_of=lambda i: sample)
        d.axes = ["codebook", "frame"]
        return d

    later = [codes("dataset", "target_audio_codes", s) for s in ("s1", "s2", "s3")]
    first = codes("dataset", "reference_audio_codes", "s0")
    stages = [StageResult("dataset", "diverged", [later[0], later[1], later[2]])]
    report = Report("t", "isolated", ["dataset"], stages, generated_at="x")
    assert heatmap_fields(report) == [later[0]]               # one per field name, its first sample
    later[0].expected, later[0].expected_reason = True, "declared"   # now s2's is the first divergence
    stages[0].fields.append(first)
    assert report.first_divergence_field() is later[1]
    assert heatmap_fields(report) == [later[1], first]
