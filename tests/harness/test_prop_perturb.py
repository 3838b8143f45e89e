"""The harness pinpoints any single-element corruption of any stage's output.

`RunOptions.perturb` corrupts ONE element of one field of the custom side's output of one stage;
the report must then name that stage as the first divergence, and list an unexpected FieldDiff
for that field (or the projection computed from it) whose `first_index` is the corrupted
element.  One short real sample, no DDP check, stages only up to the corrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from harness.compare import select_records
from harness.report import Report
from harness.engine.runner import STAGES, Comparison, RunOptions

pytestmark = pytest.mark.property

# field -> the fields derived from it (projections, declaration checks) that may report the
# corruption instead of the raw field
FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "dataset": {"audio_ids_concat": ("target_audio_codes", "reference_audio_codes", "audio_ids_concat@custom")},
    "collator": {"audio_out_ids": ("delay_pattern@custom",),
                 "label_audio_ids": ("supervised_audio_codes", "audio_label_layout@custom"),
                 "input_ids": ("mask_audio_out_token_label@custom",), "attention_mask": ()},
    "forward": {"logits": (), "audio_logits": ()},
    "loss": {"text": ("text@custom",), "audio_token_ce": ("audio_ce_common", "audio_token_ce@custom"),
             "text_token_ce": ("text_ce_common", "text_token_ce@custom")},
    "backward": {"grad": ()},
    "step": {"update": ()},
}
# At most ~1 s per example (the step stage runs every stage before it); the ci profile's budget.
PERTURB_SETTINGS = settings(max_examples=max(6, settings.default.max_examples), deadline=None,
                            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@dataclasses.dataclass
class Perturbation:
    """What to corrupt (drawn) and, once done, where (filled in by the hook)."""

    stage: str
    field: str
    u_element: float            # which element, as a fraction of the field's candidates
    u_name: float               # which parameter (backward / step)
    done_field: str | None = None
    done_index: list[int] | None = None
    calls: int = 0

    def _pick(self, n: int, u: float) -> int:
        return min(int(u * n), n - 1)

    def _corrupt(self, t: torch.Tensor, *, codebook_size: int, vocab: int) -> tuple[torch.Tensor, list[int]]:
        """A clone of `t` with one element changed; returns (tensor, its index)."""
        t = t.detach().clone()
        if t.is_floating_point():
            finite = torch.isfinite(t).reshape(-1).nonzero().squeeze(1)   # NaN means "unsupervised" there
            flat = int(finite[self._pick(finite.numel(), self.u_element)])
        else:
            flat = self._pick(t.numel(), self.u_element)
        idx = list(torch.unravel_index(torch.tensor(flat), t.shape)) if t.dim() else []
        idx = [int(i) for i in idx]
        view = t.reshape(-1)
        v = view[flat].item()
        if t.is_floating_point():
            view[flat] = v + 1.0
        elif self.field == "attention_mask":
            view[flat] = 1 - v
        elif self.field == "input_ids":
            view[flat] = (v + 1) % vocab
        elif v < 0:                                   # -100: an unsupervised label becomes a code
            view[flat] = 0
        else:                                         # codes and stream BOS/EOS (K, K+1)
            view[flat] = (v + 1) % (codebook_size + 2) if self.field != "audio_ids_concat" else (v + 1) % codebook_size
        return t, idx

    def __call__(self, stage: str, side: str, output: Any, *, codebook_size: int, vocab: int) -> Any:
        if stage != self.stage or side != "custom":
            return output
        self.calls += 1
        kw = dict(codebook_size=codebook_size, vocab=vocab)
        if stage == "dataset":
            items = copy.deepcopy(output)
            sample = items[0].sample
            sample.audio_ids_concat, self.done_index = self._corrupt(sample.audio_ids_concat, **kw)
            self.done_field = "audio_ids_concat"
            return items
        if stage == "collator":
            new, self.done_index = self._corrupt(getattr(output, self.field), **kw)
            setattr(output, self.field, new)
            self.done_field = self.field
            return output
        if stage in ("forward", "loss"):     # ForwardOutputs / LossBreakdown dataclasses
            new, self.done_index = self._corrupt(getattr(output, self.field), **kw)
            self.done_field = self.field
            return dataclasses.replace(output, **{self.field: new})
        # backward / step: a mapping name -> tensor
        if stage == "step" and self.calls > 1:        # corrupt the first step only
            return output
        names = sorted(output)
        name = names[self._pick(len(names), self.u_name)]
        out = dict(output)
        out[name], idx = self._corrupt(output[name], **kw)
        if stage == "step":   # the step stage compares updates of all parameters flattened, per step
            offset = sum(output[n].numel() for n in names[:names.index(name)])
            self.done_field, self.done_index = "update/step1", [offset + _ravel(idx, output[name].shape)]
        else:
            self.done_field, self.done_index = f"{self.field}/{name}", idx
        return out


def _ravel(index: list[int], shape: torch.Size) -> int:
    flat = 0
    for i, d in zip(index, shape):
        flat = flat * d + i
    return flat


@st.composite
def perturbations(draw, stages=tuple(FIELDS), fields=FIELDS):
    stage = draw(st.sampled_from(stages))
    field = draw(st.sampled_from(sorted(fields[stage])))
    return Perturbation(stage, field, draw(st.floats(0, 1, exclude_max=True)), draw(st.floats(0, 1, exclude_max=True)))


def run_perturbed(ctx, records, perturbation: Perturbation, work_dir: Path) -> Report:
    cfg = ctx.model_config
    hook = lambda stage, side, out: perturbation(stage, side, out, codebook_size=int(cfg.audio_codebook_size),  # noqa: E731
                                                 vocab=len(ctx.text_tokenizer))
    upto = STAGES[: STAGES.index(perturbation.stage) + 1]
    comparison = Comparison(records, ctx, [], work_dir, RunOptions(stages=upto, ddp_world_size=0, perturb=hook))
    results = comparison.run()
    return Report(run_name="prop-perturb", mode="isolated", stages_requested=list(upto), stages=results)


def assert_pinpointed(report: Report, p: Perturbation) -> None:
    assert p.calls >= 1 and p.done_field is not None, "the perturbation hook never fired"
    first = report.first_divergence()
    what = f"corrupted {p.stage}:{p.done_field}{p.done_index}"
    assert first is not None, f"{what} went unreported"
    assert first["stage"] == p.stage, f"{what}, but the first divergence is {first}"
    stage = report.stage(p.stage)
    base = p.done_field
    accepted = {base, *FIELDS[p.stage].get(p.field, ())}
    hits = [f for f in stage.fields if f.unexpected and f.field in accepted]
    assert hits, f"{what}: no unexpected diff for {accepted} in {[(f.field, f.status, f.expected) for f in stage.fields]}"
    raw = [f for f in hits if f.field == base]
    if raw:
        if p.done_index:
            assert list(raw[0].first_index) == p.done_index, f"{raw[0].first_index} != {p.done_index}"


@pytest.fixture(scope="module")
def one_record(records):
    return select_records(records, 1)


def _every_field(test):
    """Explicit examples: every (stage, field) pair is corrupted at least once, whatever the draw."""
    for stage, fields in FIELDS.items():
        for name in fields:
            test = example(p=Perturbation(stage, name, 0.5, 0.5))(test)
    return test


@PERTURB_SETTINGS
@_every_field
@given(p=perturbations())
def test_any_single_element_corruption_is_pinpointed(ctx, one_record, tmp_path_factory, p):
    event(f"corrupted {p.stage}:{p.field}")
    report = run_perturbed(ctx, one_record, p, tmp_path_factory.mktemp("perturb"))
    assert_pinpointed(report, p)


def test_unperturbed_run_has_no_unexpected_divergence(ctx, one_record, tmp_path):
    """The baseline the property relies on: without a corruption nothing unexpected diverges."""
    comparison = Comparison(one_record, ctx, [], tmp_path, RunOptions(ddp_world_size=0, perturb=lambda s, sd, o: o))
    results = comparison.run()
    report = Report(run_name="prop-baseline", mode="isolated", stages_requested=list(STAGES), stages=results)
    assert [r.stage for r in results] == list(STAGES)
    assert report.first_divergence() is None


LOSS_SUMMARY_TERMS = ("audio", "total", "per_codebook")


@pytest.mark.parametrize("field", LOSS_SUMMARY_TERMS)
def test_corrupted_reduced_audio_loss_is_pinpointed(ctx, one_record, tmp_path, field):
    p = Perturbation("loss", field, 0.0, 0.0)
    report = run_perturbed(ctx, one_record, p, tmp_path)
    # The catalogue derives the custom reduction from the reference's per-position CE, so a corrupted
    # reduced term is an unexpected divergence at that field and index.
    assert_pinpointed(report, p)
