"""report.json says one thing one way: a field is equal, expected (declared) or diverged, never two of
them; the stage counts count exactly those; every cause is the same object type; the relation counts
the comparison's own mismatches; a gradient's cause never contradicts its own relation."""

from __future__ import annotations

import torch

from harness.engine.diff import FieldDiff
from harness.engine.fields import FieldComparer, FieldSpec
from harness.engine.tolerance import Tolerance
from harness.explain.causes import Facts, cause_of, diagnoses
from harness.report.model import CAUSE_KEYS, SCHEMA_VERSION, Diagnosis, Report, StageResult, stage_status
from harness.schemas import validate_report
from harness.semantics.expectations import Catalogue, Expected


SYMPTOM = {"kind": "zero_loss", "text": "audio loss is exactly 0.0 on a batch with target audio",
           "mechanism": "no audio position is supervised: every audio label is -100", "stage": "loss",
           "field": "audio_loss", "steps": [], "location": None, "run": "custom (custom)"}


def _report() -> Report:
    declared = FieldDiff("collator", "label_ids", "mismatch", expected=True, expected_reason="[bos] by design",
                         numel=4, mismatches=1, first_index=[0], reference=1, custom=-100)
    found = FieldDiff("loss", "audio_ce_common", "mismatch", numel=4, mismatches=2, first_index=[1], reference=1.0,
                      custom=2.0, axes=["frame", "codebook"],
                      cause={"mechanism": "no next-token shift", "evidence": "matches unshifted", "rule": "no_shift_audio",
                             "location": "custom_impl/loss.py:138"})
    stages = [StageResult("collator", "", [FieldDiff("collator", "input_ids", "equal", numel=4), declared]),
              StageResult("loss", "", [found, FieldDiff("loss", "text", "equal", numel=1)])]
    for st in stages:
        st.refresh_status()
    return Report("t", "isolated", ["all"], stages, generated_at="2025-01-01T00:00:00+00:00",
                  diagnoses=[Diagnosis("no next-token shift", "matches unshifted", "loss", "audio_ce_common",
                                       rule="no_shift_audio", location="custom_impl/loss.py:138")],
                  symptoms=[SYMPTOM])


def test_each_field_is_exactly_one_of_equal_expected_diverged_and_counts_agree():
    j = _report().to_json()
    validate_report(j)
    assert j["schema_version"] == SCHEMA_VERSION and SCHEMA_VERSION.startswith("2.")
    for st in j["stages"]:
        classes = {"equal": 0, "expected": 0, "diverged": 0}
        for f in st["fields"]:
            assert f["diverged"] == (f["differs"] and not f["expected"]), f
            assert not (f["expected"] and not f["differs"]), f
            classes["equal" if not f["differs"] else "expected" if f["expected"] else "diverged"] += 1
        assert st["counts"] == {"fields": len(st["fields"]), **classes}, st["stage"]
    declared = j["stages"][0]["fields"][1]
    assert (declared["differs"], declared["expected"], declared["diverged"]) == (True, True, False)


def test_one_cause_type_everywhere():
    j = _report().to_json()
    causes = [j["first_divergence"]["cause"], j["stages"][1]["fields"][0]["cause"], j["diagnoses"][0]["cause"]]
    assert all(isinstance(c, dict) and tuple(sorted(c)) == tuple(sorted(CAUSE_KEYS)) for c in causes), causes
    assert causes[0] == causes[1] == causes[2]
    assert causes[0]["location"] == "custom_impl/loss.py:138"
    assert "cause_evidence" not in j["first_divergence"]
    assert j["symptoms"] == [SYMPTOM]
    assert j["first_divergence"]["axes"] == ["frame", "codebook"]


def test_every_schema_property_has_a_description():
    from harness.schemas import load_report_schema

    schema = load_report_schema()
    missing = []

    def described(sub: dict) -> bool:   # its own description, or that of the definition it refers to
        ref = sub.get("$ref", "")
        return "description" in sub or (ref.startswith("#/$defs/") and "description" in schema["$defs"][ref[8:]])

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for key, sub in (node.get("properties") or {}).items():
                if isinstance(sub, dict) and not described(sub):
                    missing.append(f"{path}.{key}")
                walk(sub, f"{path}.{key}")
            for key, sub in node.items():
                if key != "properties":
                    walk(sub, f"{path}.{key}" if key not in ("$defs",) else path)
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{path}[{i}]")

    walk(schema, "$")
    assert missing == []


def test_relation_counts_the_comparisons_own_mismatches():
    """A difference inside the relation fitter's tolerance but outside the field's is counted once, the same way."""
    ref = torch.ones(4, 8)
    cus = ref.clone()
    cus[0, :3] += 1e-6          # outside rtol=atol=1e-8, inside the fitter's 1e-5
    cus[2, 5] = 3.0
    comparer = FieldComparer(Catalogue([]))
    d = comparer.compare("loss", "audio_ce_common", ref, cus,
                         FieldSpec(tol=Tolerance(1e-8, 1e-8, "test"), axes=("frame", "codebook")))
    assert d.mismatches == 4
    assert d.relation["kind"] == "none", d.relation
    assert d.relation["details"]["count"] == d.mismatches
    assert f"{d.mismatches} of {d.numel}" in d.relation["words"]
    assert d.mismatch_mask is None             # kept only where the spec asks (heatmaps)
    assert d.axes == ["frame", "codebook"]


def test_declared_difference_by_transform_is_expected_not_diverged():
    ref = torch.tensor([1, 2, 3])
    entry = Expected("plus1", "collator", "ids", "custom adds one", transform=lambda r, info: r + 1)
    d = FieldComparer(Catalogue([entry])).compare("collator", "ids", ref, ref + 1)
    j = StageResult("collator", stage_status([d]), [d]).to_json()
    assert j["counts"] == {"fields": 1, "equal": 0, "expected": 1, "diverged": 0}
    assert j["fields"][0]["expected"] and not j["fields"][0]["diverged"] and j["fields"][0]["differs"]


def _grad(kind: str, words: str, details: dict | None = None) -> FieldDiff:
    return FieldDiff("backward", "grad/layer.lora_A.weight", "mismatch", numel=2048, mismatches=2044,
                     relation={"kind": kind, "words": words, "axis": None, "details": details or {}})


def test_gradient_cause_follows_the_loss_divergence_and_never_claims_a_scaled_copy_the_relation_denies():
    grad = _grad("none", "no simple relation fits: 2044 of 2048 element(s) differ")
    loss = FieldDiff("loss", "audio_ce_common", "mismatch", numel=10, mismatches=9)
    stages = {"loss": StageResult("loss", "diverged", [loss]), "backward": StageResult("backward", "diverged", [grad])}
    facts = Facts({"backward": {"custom": {"ratio": 0.4723}}}, stages, {})
    cause = cause_of(grad, facts)
    assert cause is not None
    assert "loss.audio_ce_common" in cause["mechanism"]
    assert "x what its declared loss gives" not in cause["mechanism"] and "scaled" not in cause["mechanism"]
    # the relation's words are the evidence: the cause and its field's relation say the same thing
    assert "no simple relation fits" in cause["evidence"]


def test_gradient_scale_cause_only_when_the_relation_is_a_scale():
    scaled = _grad("scale", "the custom value is 0.5 x the reference value", {"factor": 0.5})
    stages = {"backward": StageResult("backward", "diverged", [scaled])}
    cause = cause_of(scaled, Facts({"backward": {"custom": {"ratio": 0.5}}}, stages, {}))
    assert "0.5x what its declared loss gives" in cause["mechanism"]
    scaled.cause = cause
    diag = diagnoses(list(stages.values()), {})
    assert diag[0].cause == cause["mechanism"]
