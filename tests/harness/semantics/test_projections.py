"""Projections strip by-design layout differences; these pin their exact semantics."""

import torch

from harness.semantics import projections as P

BOS, EOS = 32, 33


def _segments(*lengths: int, c: int = 4, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    segs = [torch.randint(0, 32, (c, n), generator=g) for n in lengths]
    starts = torch.tensor([0] + [int(x) for x in torch.tensor([s.shape[1] for s in segs[:-1]]).cumsum(0)]) if len(segs) > 1 else torch.tensor([0])
    return segs, starts


def test_delay_then_revert_is_identity():
    codes = torch.randint(0, 32, (4, 7))
    delayed = P.apply_delay(codes, BOS, EOS)
    assert delayed.shape == (4, 10)
    assert torch.equal(P.revert_delay(delayed), codes)


def test_segment_bounds():
    assert P.segment_bounds(torch.tensor([0, 3, 5]), 9) == [(0, 3), (3, 5), (5, 9)]
    assert P.segment_bounds(torch.zeros(0, dtype=torch.long), 0) == []


def test_supervised_codes_agree_between_bos_first_and_delayed_minus100_labels():
    segs, _ = _segments(5, 3)
    ref = torch.cat([torch.cat([torch.full((4, 1), BOS), s, torch.full((4, 1), EOS)], 1) for s in segs], 1)
    ref_starts = torch.tensor([0, 7])
    cus_parts = []
    for s in segs:
        lab = torch.cat([torch.full((4, 1), -100), s, torch.full((4, 1), EOS)], 1)
        cus_parts.append(P.apply_delay(lab, -100, -100))
    cus = torch.cat(cus_parts, 1)
    cus_starts = torch.tensor([0, cus_parts[0].shape[1]])
    a = P.supervised_audio_codes(ref, ref_starts, delayed=False, bos=BOS, eos=EOS)
    b = P.supervised_audio_codes(cus, cus_starts, delayed=True, bos=BOS, eos=EOS)
    assert torch.equal(a, torch.cat(segs, 1))
    assert torch.equal(a, b)


def test_all_ignored_labels_project_to_nothing():
    lab = torch.full((4, 9), -100)
    out = P.supervised_audio_codes(lab, torch.tensor([0]), delayed=False, bos=BOS, eos=EOS)
    assert out.shape == (4, 0)


def test_per_position_ce_never_crosses_a_segment():
    torch.manual_seed(0)
    logits = torch.randn(8, 2, 34)
    labels = torch.randint(0, 34, (2, 8))
    ce = P.per_position_audio_ce(logits, labels, torch.tensor([0, 5]))
    assert torch.isnan(ce[0]).all() and torch.isnan(ce[5]).all()     # first frame of each segment
    want = torch.nn.functional.cross_entropy(logits[5], labels[:, 6])
    assert torch.allclose(ce[6].mean(), want)


def test_per_position_ce_unshifted_is_the_copy_task():
    torch.manual_seed(1)
    logits = torch.randn(4, 1, 10)
    labels = torch.randint(0, 10, (1, 4))
    ce = P.per_position_audio_ce(logits, labels, torch.tensor([0]), shift=False)
    assert torch.allclose(ce[2, 0], torch.nn.functional.cross_entropy(logits[2], labels[:, 2]))


def test_common_positions_masks_both_sides():
    a = torch.tensor([1.0, float("nan"), 3.0])
    b = torch.tensor([1.0, 2.0, float("nan")])
    ca, cb = P.common_positions(a, b)
    assert torch.isnan(ca[1:]).all() and torch.isnan(cb[1:]).all() and ca[0] == 1.0


def test_find_key_searches_nested_config():
    assert P.find_key({"a": {"collator": {"use_delay_pattern": True}}}, "use_delay_pattern") is True
    assert P.find_key({"a": [1, {"x": 2}]}, "x") == 2
    assert P.find_key({}, "x") is None


REF_LAYOUT = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nGenerate audio.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nReference words.<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|><|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nTarget words.<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|><|eot_id|>")
CUSTOM_LAYOUT = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
                 "<|start_header_id|>user<|end_header_id|>\n\nReference words.<|audio_bos|><|AUDIO|><|audio_eos|>"
                 "Target words.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
                 "<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|><|eot_id|>")


def test_prompt_transcripts_read_both_layouts_alike():
    want = {"target_transcript": "Target words.", "reference_transcript": "Reference words."}
    assert P.prompt_transcripts(REF_LAYOUT) == want
    assert P.prompt_transcripts(CUSTOM_LAYOUT) == want
    assert P.prompt_transcripts("no turns") == {"target_transcript": None, "reference_transcript": None}
