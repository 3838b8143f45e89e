"""The ten kinds of bug the coverage issue found slipping through, one test each (all pass silently
on the harness before the redesign).  Each test puts a realistic bug into a pipeline in-process
(monkeypatch), runs `harness.compare`, and requires exit "diverged" with the first divergence at
the stage where the bug runs.
"""

from __future__ import annotations

import pytest
import torch

from harness import compare

pytestmark = pytest.mark.slow


def _first(**kwargs):
    report = compare(stage="all", samples=2, ddp_world_size=0, **kwargs)
    fd = report.first_divergence()
    assert report.verdict == "diverged" and fd is not None, "the bug went unreported"
    return fd


def test_1_text_labels_prompt_trained(monkeypatch):
    import custom_impl.dataset as D

    real = D.prepare_chatml_sample

    def trains_the_prompt(sample, tokenizer):
        inputs, labels, audios, speaker = real(sample, tokenizer)
        return inputs, list(inputs), audios, speaker          # label_ids = input_ids

    monkeypatch.setattr(D, "prepare_chatml_sample", trains_the_prompt)
    fd = _first()
    assert fd["stage"] == "dataset" and "prompt is trained" in fd["cause"]["mechanism"]


def test_2_transcript_final_period_dropped(monkeypatch):
    import custom_impl.dataset as D

    real = D.prepare_chatml_sample

    def strip_period(sample, tokenizer):
        for m in sample["messages"]:
            for it in m["content"] if isinstance(m["content"], list) else []:
                if isinstance(it, dict) and it.get("type") == "text":
                    it["text"] = it["text"].rstrip(".")
        return real(sample, tokenizer)

    monkeypatch.setattr(D, "prepare_chatml_sample", strip_period)
    fd = _first()
    assert fd["stage"] == "dataset" and "transcript" in fd["field"] and "final period" in fd["cause"]["mechanism"]


def test_3_training_mode_only_dropout(monkeypatch):
    import custom_impl.model as M

    real = M.forward

    def dropout_in_training(model, batch, ctx, **kw):
        out = real(model, batch, ctx, **kw)
        if model.training:
            out.logits = torch.nn.functional.dropout(out.logits, p=0.1, training=True)
        return out

    monkeypatch.setattr(M, "forward", dropout_in_training)
    fd = _first()
    assert fd["stage"] == "forward" and "train() mode" in fd["cause"]["mechanism"]


def test_4_custom_loss_detached_audio_term(monkeypatch):
    import custom_impl.loss as L

    real = L.audio_terms

    def detached(*a, **k):
        sums, counts, ce_map = real(*a, **k)
        return sums.detach(), counts, ce_map

    monkeypatch.setattr(L, "audio_terms", detached)
    fd = _first()
    assert fd["stage"] == "backward" and "audio term sends no gradient" in fd["cause"]["mechanism"]


@pytest.mark.parametrize("bug", ["halved-gradient", "no-clipping", "weight-decay-1e-5"])
def test_5_step_bugs_the_first_adam_step_hides(monkeypatch, bug):
    import custom_impl.stages as S

    real_step, real_opt = S.step, S.make_optimizer

    def step(model, optimizer, ctx, train):
        if bug == "halved-gradient":
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(0.5)
        return real_step(model, optimizer, ctx, train.replace(max_grad_norm=0.0) if bug == "no-clipping" else train)

    def make_optimizer(model, train):
        return real_opt(model, train.replace(weight_decay=1e-5) if bug == "weight-decay-1e-5" else train)

    monkeypatch.setattr(S, "step", step)
    monkeypatch.setattr(S, "make_optimizer", make_optimizer)
    fd = _first()
    assert fd["stage"] == "step", fd


def test_6_own_schedule_and_undeclared_config(monkeypatch):
    import custom_impl.stages as S
    from transformers import get_cosine_schedule_with_warmup

    real_opt = S.make_optimizer

    def off_by_one_warmup(model, train):
        opt, sched = real_opt(model, train)
        if train.schedule == "cosine":
            sched = get_cosine_schedule_with_warmup(opt, train.warmup_steps + 1, train.max_steps)
        return opt, sched

    monkeypatch.setattr(S, "make_optimizer", off_by_one_warmup)
    fd = _first()
    assert fd["stage"] == "step" and "schedule" in fd["cause"]["mechanism"]
    monkeypatch.undo()

    real_cfg = S.effective_config

    def undeclared(ctx, train):
        cfg = real_cfg(ctx, train)
        cfg["collator"]["round_to"] = 16            # differs from the reference and from nothing declared
        return cfg

    monkeypatch.setattr(S, "effective_config", undeclared)
    fd = _first()
    assert (fd["stage"], fd["field"]) == ("config", "collator.round_to")


def test_7_accumulation_normalised_per_micro_batch_without_ddp(monkeypatch):
    import custom_impl.distributed as Dist
    import custom_impl.loss as L

    real = L.global_objective
    monkeypatch.setattr(Dist, "global_objective",
                        lambda terms, text_total, cb_totals, world: real(terms, terms.text_count, terms.audio_counts, world))
    fd = _first()
    assert fd["stage"] == "backward" and fd["field"].startswith("accum_grad/") and "accumulation" in fd["cause"]["mechanism"]


def test_8_lora_scaling_visible_because_b_is_non_zero(monkeypatch):
    import custom_impl.model as M

    real = M.lora_config
    monkeypatch.setattr(M, "lora_config", lambda train: real(train.replace(lora_alpha=2 * train.lora_alpha)))
    fd = _first()
    assert fd["stage"] == "forward" and "LoRA scaling" in fd["cause"]["mechanism"]


def test_9_codes_through_bfloat16_with_the_released_code_range(monkeypatch, ctx):
    import custom_impl.dataset as D

    assert ctx.model_config.audio_codebook_size == 1024     # below 256 a bf16 round trip would be exact
    real = D.ChatMLDatasetSample

    def sample(**fields):
        fields["audio_ids_concat"] = fields["audio_ids_concat"].to(torch.bfloat16).long()   # "cast to the model dtype"
        return real(**fields)

    monkeypatch.setattr(D, "ChatMLDatasetSample", sample)
    fd = _first()
    assert fd["stage"] == "dataset" and "bfloat16" in fd["cause"]["mechanism"]


def test_10_reference_reduced_loss_is_checked(monkeypatch):
    import reference_impl.loss as RL

    real = RL.reference_losses

    def four_times(*a, **k):
        out = real(*a, **k)
        out["audio_loss"] = out["audio_loss"] * 4
        return out

    monkeypatch.setattr(RL, "reference_losses", four_times)
    import reference_impl.stages as RS
    monkeypatch.setattr(RS, "reference_losses", four_times)
    fd = _first()
    assert (fd["stage"], fd["field"]) == ("loss", "audio@reference") and "4.0x" in fd["cause"]["mechanism"]
