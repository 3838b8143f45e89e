"""A transcript paired with the wrong audio is caught at the dataset stage, by sample."""

import dataclasses

from harness.compare import select_records
from harness.report import Report
from harness.engine.runner import Comparison, RunOptions


def test_swapped_target_transcripts_are_reported(ctx, records, tmp_path):
    picked = select_records(records, 2)

    def swap_prompts(stage, side, output):
        if stage == "dataset" and side == "custom":
            a, b = output
            sa = dataclasses.replace(a.sample, input_ids=b.sample.input_ids, label_ids=b.sample.label_ids)
            sb = dataclasses.replace(b.sample, input_ids=a.sample.input_ids, label_ids=a.sample.label_ids)
            return [dataclasses.replace(a, sample=sa), dataclasses.replace(b, sample=sb)]
        return output

    comparison = Comparison(picked, ctx, [], tmp_path, RunOptions(stages=("dataset",), ddp_world_size=0,
                                                                   perturb=swap_prompts))
    report = Report(run_name="swap", mode="isolated", stages_requested=["dataset"], stages=comparison.run())
    first = report.first_divergence()
    assert first["stage"] == "dataset" and first["field"] == "target_transcript"
    assert first["sample"] == picked[0].id
