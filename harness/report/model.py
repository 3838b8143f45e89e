"""The run report: data model, verdict/first-divergence logic and the JSON form (renderers: `render`).

Determinism contract: `report.json` is byte-identical across two runs with the same inputs
*apart from the top-level ``"volatile"`` object*, which holds everything that changes from run to
run (``generated_at`` and the per-stage ``timing``).  Nothing else in the JSON may contain
wall-clock times, memory addresses or unrounded floats (floats are rounded to 6 significant
digits by `harness.engine.diff.jsonable`).  To compare two reports: drop ``"volatile"`` and compare the
rest.  `report.md` follows the same rule (its timing lives in one final "Timing" section);
`report.html` is for people and carries no such promise.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from harness.engine.diff import FieldDiff, jsonable, round_float
from harness.report.json_text import report_json_text  # noqa: F401  (re-exported)

# The order stages run in; `first_divergence` walks stages in this order (unknown stage names
# keep their listed order, after the known ones).
PIPELINE_ORDER = ("dataset", "collator", "forward", "loss", "backward", "step", "config")
# Stages whose fields are the loss (and its terms), the gradients or the parameter updates: a
# divergence there changes training; one elsewhere matters through them (Report.headline).
TRAINING_STAGES = ("loss", "backward", "step")
STAGE_STATUSES = ("ok", "expected", "diverged", "error", "skipped")
VOLATILE_KEY = "volatile"
# report.json format (harness/schemas/report.schema.json).  2.0.0: a field's "diverged" means an
# UNEXPECTED divergence ("differs" is the raw inequality), every "cause" is one object type (`CAUSE_KEYS`),
# "verdict_reason" says why the verdict is what it is.
SCHEMA_VERSION = "2.0.0"
CAUSE_KEYS = ("mechanism", "evidence", "rule", "location")


def cause_object(cause: dict | None) -> dict | None:
    """The one JSON form of a cause: {"mechanism", "evidence", "rule", "location"} (missing keys None).

    mechanism: what to fix, in words; evidence: what the run measured that supports it; rule: the
    `harness.explain.causes` rule that fired; location: ``path:line`` where it acts, when known."""
    if not cause:
        return None
    return {k: cause.get(k) for k in CAUSE_KEYS}

def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class StageResult:
    stage: str
    status: str                          # one of STAGE_STATUSES
    fields: list[FieldDiff] = field(default_factory=list)
    seconds_compute: float = 0.0
    seconds_diff: float = 0.0
    error: str | None = None
    note: str | None = None

    @property
    def n_diverged(self) -> int:
        return sum(1 for f in self.fields if f.diverged and not f.expected)

    @property
    def n_expected(self) -> int:
        return sum(1 for f in self.fields if f.diverged and f.expected)

    @property
    def n_equal(self) -> int:
        return sum(1 for f in self.fields if not f.diverged)

    def first_unexpected(self) -> FieldDiff | None:
        return next((f for f in self.fields if f.diverged and not f.expected), None)

    def refresh_status(self) -> str:
        """Recompute `status` from the fields (call after the catalogue marked expected ones).

        "error"/"skipped" are kept: they say the stage did not produce comparable output.
        """
        if self.status not in ("error", "skipped"):
            self.status = stage_status(self.fields)
        return self.status

    def to_json(self) -> dict:
        return {
            "stage": self.stage,
            "status": self.status,
            "error": self.error,
            "note": self.note,
            # fields = equal + expected + diverged, the same three classes each field's JSON carries
            "counts": {"fields": len(self.fields), "equal": self.n_equal, "diverged": self.n_diverged,
                       "expected": self.n_expected},
            "fields": [_field_json(f) for f in self.fields],
        }


def _field_json(f: FieldDiff) -> dict:
    out = f.to_json()
    out["cause"] = cause_object(f.cause)
    return out


def stage_status(fields: list[FieldDiff]) -> str:
    """"diverged" if any unexpected divergence, "expected" if only catalogued ones, else "ok"."""
    if any(f.diverged and not f.expected for f in fields):
        return "diverged"
    if any(f.diverged for f in fields):
        return "expected"
    return "ok"


@dataclass
class Diagnosis:
    """One entry of the report's diagnosis list: a cause (in words), its evidence, where it was seen."""

    cause: str
    evidence: str
    stage: str | None = None
    field: str | None = None
    rule: str | None = None
    location: str | None = None

    def to_json(self) -> dict:
        """{"cause": {mechanism, evidence, rule, location}, "stage", "field"}: the cause has the one
        cause type of the report (`cause_object`)."""
        return {"cause": cause_object({"mechanism": self.cause, "evidence": self.evidence, "rule": self.rule,
                                       "location": self.location}),
                "stage": self.stage, "field": self.field}


@dataclass
class Report:
    run_name: str
    mode: str
    stages_requested: list[str]
    stages: list[StageResult]
    config: dict = field(default_factory=dict)           # device, seed, faults, paths, samples
    config_diff: list[dict] = field(default_factory=list)  # {"setting","reference","custom","same"}
    catalogue: list[dict] = field(default_factory=list)  # declared expected differences
    diagnoses: list[Diagnosis] = field(default_factory=list)
    generated_at: str = field(default_factory=_utc_now)  # the ONLY timestamp
    extras: dict = field(default_factory=dict)           # e.g. {"per_codebook": {...}}
    # What a user sees in training (harness.trace.symptoms.Symptom.to_json() or harness.engine.symptoms),
    # most consequential first; reports open with them.
    symptoms: list[dict] = field(default_factory=list)
    skipped: Any = field(default=None, repr=False, compare=False)   # higgs_common.skipping.SkipLog (not in JSON)

    def ordered_stages(self) -> list[StageResult]:
        """Stages in pipeline order (stable for unknown names)."""
        def key(item: tuple[int, StageResult]) -> tuple[int, int]:
            pos, st = item
            rank = PIPELINE_ORDER.index(st.stage) if st.stage in PIPELINE_ORDER else len(PIPELINE_ORDER)
            return (rank, pos)
        return [st for _, st in sorted(enumerate(self.stages), key=key)]

    def to_markdown(self) -> str:
        from harness.report.render import render_markdown
        return render_markdown(self)

    def to_html(self) -> str:
        from harness.report.render import render_html
        return render_html(self)

    def write(self, out_dir: Any) -> dict:
        """Write report.json, report.md and report.html into `out_dir`; returns their paths."""
        from harness.report.render import write_report
        return write_report(self, out_dir)

    def stage(self, name: str) -> StageResult | None:
        return next((s for s in self.stages if s.stage == name), None)

    def _first_unexpected(self) -> tuple[StageResult, FieldDiff] | None:
        if self.propagation_origin() is not None:
            return None
        for st in self.ordered_stages():
            f = st.first_unexpected()
            if f is not None:
                return st, f
        return None

    def first_divergence_field(self) -> FieldDiff | None:
        """The field behind `first_divergence` (None when there is none)."""
        found = self._first_unexpected()
        return None if found is None else found[1]

    def first_divergence(self) -> dict | None:
        """The first unexpected divergence, walking stages in pipeline order, fields in order, with
        the relation between the two values and the mechanism that explains it (if a rule does).

        In propagated mode, divergences after a stage whose differences are all declared are that
        difference spreading (`propagation_origin`), not a first divergence: then None."""
        found = self._first_unexpected()
        return None if found is None else _describe(*found)

    def propagation_origin(self) -> str | None:
        """Propagated mode only: the first stage where the pipelines differ at all, when every
        difference there is declared.  Later divergences are then that difference spreading (each side
        runs on its own outputs), which the mode exists to show; they are not failures.  None otherwise
        (isolated mode, nothing differs, or the first differing stage has an undeclared divergence)."""
        if self.mode != "propagated":
            return None
        for st in self.ordered_stages():
            if st.status == "error":
                return None
            if not any(f.diverged for f in st.fields):
                continue
            return st.stage if st.first_unexpected() is None else None
        return None

    def spread(self) -> list[tuple[str, int]]:
        """(stage, number of undeclared divergences) of every stage after `propagation_origin`."""
        origin = self.propagation_origin()
        if origin is None:
            return []
        stages = self.ordered_stages()
        after = stages[[s.stage for s in stages].index(origin) + 1:]
        return [(s.stage, s.n_diverged) for s in after if s.n_diverged]

    def headline(self) -> dict | None:
        """The divergence to lead with, chosen by consequence: the first unexpected divergence in a
        stage that compares the loss, the gradients or the updates (`TRAINING_STAGES`); when none
        diverged there, the first divergence, with what is known of its consequence: in propagated
        mode (each side on its own outputs) agreeing training stages show it changes neither; in
        isolated mode they got the same input on both sides, so the consequence is not measured.  `first_in_pipeline_order` points at the first divergence, and
        `other_divergences` lists the unexpected ones outside the training stages (stage/field)."""
        first = self.first_divergence()
        if first is None:
            return None
        ordered = self.ordered_stages()
        others: list[dict] = []
        for st in ordered:
            for f in st.fields:
                entry = {"stage": st.stage, "field": f.field}
                if st.stage not in TRAINING_STAGES and f.unexpected and entry not in others:
                    others.append(entry)
        pointer = {"stage": first["stage"], "field": first["field"]}
        for st in ordered:
            f = st.first_unexpected() if st.stage in TRAINING_STAGES else None
            if f is not None:
                return {**_describe(st, f), "consequence": "changes the loss or the gradients",
                        "first_in_pipeline_order": pointer, "other_divergences": others}
        ran = {st.stage for st in ordered if st.status != "error"} & set(TRAINING_STAGES)
        if not ran:
            consequence = "unknown: no loss, backward or step stage ran"
        elif self.mode == "propagated":
            consequence = ("changes neither the loss nor the gradients (each side ran end to end on its own outputs "
                           "and the loss, backward and step stages agree)")
        else:   # isolated: later stages got the same input on both sides, so they cannot show its effect
            consequence = ("not measured: in isolated mode the loss, backward and step stages get the same input on "
                           "both sides and agree; run with --mode propagated to see whether it changes the loss or "
                           "the gradients")
        return {**first, "consequence": consequence, "first_in_pipeline_order": pointer, "other_divergences": others}

    @property
    def verdict(self) -> str:
        """"pass" | "diverged" | "error".

        "diverged" wins when an unexpected divergence shows up at or before the first stage that
        errored (the divergence is then the more useful finding); otherwise any error makes the
        verdict "error"; otherwise "pass" (expected differences do not fail a run, nor, in propagated
        mode, declared differences spreading: `propagation_origin`).
        """
        origin = self.propagation_origin()
        for st in self.ordered_stages():
            if origin is None and (st.first_unexpected() is not None or st.status == "diverged"):
                return "diverged"
            if st.status == "error":
                return "error"
        return "pass"

    def verdict_reason(self) -> str:
        """One or two sentences saying why the verdict is what it is (terminal panel, HTML, JSON)."""
        v = self.verdict
        n_expected = sum(st.n_expected for st in self.stages)
        errored = next((st for st in self.ordered_stages() if st.status == "error"), None)
        if v == "error" and errored is not None:
            return (f"Stage {errored.stage} could not run ({errored.error}); nothing diverged before it, and later "
                    "stages were not compared.")
        origin = self.propagation_origin()
        if origin is not None:
            spread = self.spread()
            total = sum(n for _, n in spread)
            where = ", ".join(f"{stage} {n}" for stage, n in spread)
            return (f"Propagated mode shows how differences spread; it does not judge the later stages. The declared "
                    f"differences at stage {origin} spread to {total} undeclared difference(s) downstream"
                    + (f" ({where})" if where else "") + ". That is not a failure: run --mode isolated for a "
                    "verdict on each stage.")
        fd = self.first_divergence_field()
        if fd is not None:
            text = (f"First undeclared divergence: {fd.stage}.{fd.field}"
                    + (f" (sample {fd.sample})" if fd.sample else "") + ".")
            if self.mode == "propagated":
                text += " In propagated mode, divergences after it may be its consequences."
            return text
        return (f"No undeclared divergence: every difference between the two pipelines is declared "
                f"({n_expected} expected difference(s)).")

    def summary(self) -> str:
        """The report's first line: the verdict and what a user sees (the first symptom of each kind of
        consequence: a dead loss term, parameters that do not train), else the first divergence."""
        parts, seen = [], set()
        for s in self.symptoms:
            group = "loss" if s.get("stage") in ("loss", "forward") else s.get("stage")
            if group in seen:
                continue
            seen.add(group)
            parts.append(str(s.get("text")))
            if len(parts) == 3:
                break
        if not parts:
            fd = self.first_divergence()
            if fd is not None:
                parts.append(f"first divergence at {fd['stage']}: {fd['field']}")
        return f"{self.verdict}" + (": " + "; ".join(parts) if parts else "")

    def timing(self) -> dict:
        return {st.stage: {"compute_s": round_float(st.seconds_compute),
                           "diff_s": round_float(st.seconds_diff)} for st in self.stages}

    def to_json(self) -> dict:
        """Plain JSON; everything run-dependent is under ``"volatile"`` (see module docstring)."""
        out = {
            "schema_version": SCHEMA_VERSION,   # report.json format (harness/schemas/report.schema.json; README)
            "run_name": self.run_name,
            "mode": self.mode,
            "stages_requested": list(self.stages_requested),
            "verdict": self.verdict,
            "verdict_reason": self.verdict_reason(),
            "propagation_origin": self.propagation_origin(),
            "summary": self.summary(),
            "first_divergence": self.first_divergence(),
            "headline": self.headline(),
            "stages": [st.to_json() for st in self.ordered_stages()],
            "config": self.config,
            "config_diff": self.config_diff,
            "catalogue": self.catalogue,
            "diagnoses": [d.to_json() for d in self.diagnoses],
            "symptoms": self.symptoms,
            "extras": self.extras,
            VOLATILE_KEY: {"generated_at": self.generated_at, "timing": self.timing()},
        }
        return _sorted(jsonable(out))


def _describe(st: StageResult, f: FieldDiff) -> dict:
    """One divergence as the report's first_divergence / headline dict (its cause: `cause_object`)."""
    rel = f.relation or {}
    return {
        "stage": st.stage,
        "field": f.field,
        "check": f.check,
        "side": f.side,
        "status": f.status,
        "sample": f.sample,
        "index": f.first_index,
        "reference": f.reference,
        "custom": f.custom,
        "decoded": f.decoded,
        "relation": rel.get("words"),
        "relation_detail": rel or None,
        "cause": cause_object(f.cause),
        "window": f.window,
        "axes": f.axes,
        "mismatches": f.mismatches,
        "numel": f.numel,
    }


def _sorted(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _sorted(x[k]) for k in sorted(x)}
    if isinstance(x, list):
        return [_sorted(v) for v in x]
    return x


