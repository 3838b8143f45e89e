"""Fixtures for the reference pipeline tests: a small reference metadata folder and its dataset."""

from __future__ import annotations

import pytest

from higgs_common.converters import write_reference_folder

N_RECORDS = 4


@pytest.fixture(scope="session")
def ref_folder(records, tmp_path_factory):
    """The first N_RECORDS canonical records as a train-higgs-audio metadata folder."""
    return write_reference_folder(records[:N_RECORDS], tmp_path_factory.mktemp("reference_folder"))


@pytest.fixture(scope="session")
def zero_shot_items(ref_folder, ctx):
    """reference_impl.stages.dataset on the folder, zero-shot task (the harness default)."""
    from reference_impl import stages

    return stages.dataset(ref_folder, ctx)


@pytest.fixture(scope="session")
def tiny_model(ctx):
    from reference_impl.model import HiggsAudioModelWithLoss

    return HiggsAudioModelWithLoss.from_pretrained(str(ctx.model_path)).eval()
