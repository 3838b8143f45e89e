"""Converting one declared audio layout into another reproduces what the other collator builds."""

from __future__ import annotations

import importlib

import pytest
import torch

from harness.semantics import audio_layout as AL


@pytest.fixture(scope="module")
def batches(records, ctx, tmp_path_factory):
    custom = importlib.import_module("custom_impl.stages")
    reference = importlib.import_module("reference_impl.stages")
    items = custom.dataset(custom.write_native(records, tmp_path_factory.mktemp("n")), ctx)
    return reference.collate(items, ctx), custom.collate(items, ctx)


def test_reference_labels_converted_equal_the_custom_collators(batches, ctx):
    rb, cb = batches
    bos, eos = ctx.model_config.audio_stream_bos_id, ctx.model_config.audio_stream_eos_id
    got = AL.convert_labels(rb.label_audio_ids, rb.audio_out_ids_start, from_layout="bos_first", from_delay=False,
                            to_layout="ignore_first", to_delay=True, bos=bos, eos=eos)
    assert torch.equal(got, cb.label_audio_ids)
    ids, starts = AL.convert_audio_ids(rb.audio_out_ids, rb.audio_out_ids_start, from_delay=False, to_delay=True,
                                       bos=bos, eos=eos)
    assert torch.equal(ids, cb.audio_out_ids) and torch.equal(starts, cb.audio_out_ids_start)


def test_layout_is_read_back_from_batches(batches, ctx):
    rb, cb = batches
    bos, eos = ctx.model_config.audio_stream_bos_id, ctx.model_config.audio_stream_eos_id
    assert AL.is_delayed(rb.audio_out_ids, rb.audio_out_ids_start, bos=bos) is False
    assert AL.is_delayed(cb.audio_out_ids, cb.audio_out_ids_start, bos=bos) is True
    assert AL.label_layout(rb.label_audio_ids, rb.audio_out_ids_start, delayed=False, bos=bos, eos=eos) == "bos_first"
    assert AL.label_layout(cb.label_audio_ids, cb.audio_out_ids_start, delayed=True, bos=bos, eos=eos) == "ignore_first"
    eos_first = rb.label_audio_ids.clone()
    eos_first[:, rb.audio_out_ids_start] = eos
    assert AL.label_layout(eos_first, rb.audio_out_ids_start, delayed=False, bos=bos, eos=eos) == "eos_first"
