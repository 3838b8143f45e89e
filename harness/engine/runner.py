"""Run two pipeline adapters stage by stage and diff what each stage produced.

Modes
-----
`isolated` (default): every stage of both sides gets the SAME input — the custom side's output of
the previous stage — so a difference is attributed to the stage that made it.  The custom side
(the pipeline under test) supplies the common input so that its code runs on the layouts it was
written for.  `propagated`: each side runs end to end on its own outputs, showing how an early
divergence spreads.

Stages (isolated mode; details in each stage module)
----------------------------------------------------
dataset   canonical records -> each side's native format -> its own loader.  Cross-side: layout-free
          projections (codes, transcripts, supervised text by turn); per side: the token ids,
          codes and transcripts its declared conventions say it must produce (`stage_data`).
collator  the custom items through both collators; raw fields against convention-derived
          transforms, and each side against its declared delay pattern / label layout / masking.
forward   the custom batch through both models (train mode, same weights, LoRA B non-zero).
loss      the custom forward's outputs through both loss functions, and each side against an
          independent implementation of its declared loss (`harness.semantics.loss_oracle`).
backward  each side's own loss on its own model; the expected gradient of each side is the
          declared loss of that side back-propagated through the OTHER side's model; plus
          gradient accumulation (k micro-batches vs one batch) and DDP ranks vs one process.
step      N optimizer steps fed identical gradients: updates, optimizer state, learning rate of
          every step; each side's own optimizer and schedule against an independent AdamW and
          schedule formula built from what its effective_config declares.
config    the two effective configurations key by key, against the declarations.

Everything the stages share lives on `Comparison`; the stage code is in `stage_*.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from harness.engine.batches import to_device  # noqa: F401  (re-exported: callers of the old location)
from harness.engine.common_config import COMPARE_PRECISION, common_train_config
from harness.engine.fields import FieldComparer
from harness.engine.sides import Side, load_sides
from harness.explain.decode import Decoder
from harness.report.model import StageResult
from harness.semantics.expectations import Catalogue, derive
from harness.semantics.overrides import overrides_for
from harness.semantics.prompt import SpecialIds
from higgs_common.stages import SampleError, StageContext, TrainConfig, UnknownFaultError

log = logging.getLogger("harness")

# Whose previous-stage output every stage gets in isolated mode (see the module docstring).
ISOLATED_SOURCE = "custom"
STAGES: tuple[str, ...] = ("dataset", "collator", "forward", "loss", "backward", "step", "config")
# LoRA B starts at zero (peft), which hides the LoRA path from the forward stage; the harness sets it
# to small identical values on both sides: N(0, LORA_B_STD^2), seeded per parameter name.
LORA_B_STD = 0.02


@dataclass
class RunOptions:
    stages: tuple[str, ...] = STAGES
    mode: str = "isolated"
    ddp_world_size: int = 2           # 0 disables the multi-process DDP check (accumulation still runs)
    ddp_grad_accum: int = 2
    ddp_steps: int = 3                # optimizer steps of the DDP check (loss compared at each)
    optimizer_steps: int = 3          # optimizer steps of the step stage (each on a different batch)
    tolerances: dict[str, tuple[float, float]] = field(default_factory=dict)   # field -> (rtol, atol)
    precision: str = COMPARE_PRECISION
    progress: Callable[[str], None] | None = None
    # Test hooks.  perturb(stage, side, output) -> output, applied to every stage output of both sides;
    # grad_noise: relative noise on the DDP/accumulation check's reduced gradients.
    perturb: Callable[[str, str, Any], Any] | None = None
    grad_noise: float = 0.0


@dataclass
class SideState:
    """What one side produced so far."""

    side: Side
    ctx: StageContext
    items: list | None = None
    batch: Any = None
    model: torch.nn.Module | None = None
    outputs: Any = None
    loss: Any = None
    grads: dict[str, torch.Tensor | None] | None = None
    effective: dict | None = None


class Comparison:
    """One differential run over a list of canonical records."""

    def __init__(self, records: Sequence[Any], ctx: StageContext, faults: Sequence[str], work_dir: Path,
                 options: RunOptions, sides: dict[str, Side] | None = None,
                 dataset_records: Sequence[Any] | None = None) -> None:
        self.records = list(records)
        self.side_errors: dict[tuple[str, str], str] = {}   # (stage, role) -> what the side's own code raised
        # the dataset stage may check more records than the later stages run on (a superset whose
        # first len(records) entries are `records`)
        self.dataset_records = list(dataset_records) if dataset_records else list(records)
        self.options = options
        self.work_dir = Path(work_dir)
        self.sides = sides or load_sides()
        self.train: TrainConfig = common_train_config(ctx.device, options.precision)
        self.side: dict[str, SideState] = {
            "reference": SideState(self.sides["reference"], dataclasses.replace(ctx, faults=frozenset())),
            "custom": SideState(self.sides["custom"], dataclasses.replace(ctx, faults=frozenset(faults))),
        }
        cfg = ctx.model_config
        self.model_config = cfg
        self.bos = int(cfg.audio_stream_bos_id)
        self.eos = int(cfg.audio_stream_eos_id)
        self.num_codebooks = int(cfg.audio_num_codebooks)
        self.audio_out_token_id = int(cfg.audio_out_token_idx)
        self.tokenizer = ctx.text_tokenizer
        self.ids = SpecialIds.from_tokenizer(ctx.text_tokenizer, cfg)
        self.decoder = Decoder(ctx.text_tokenizer)
        for state in self.side.values():
            mod = state.side.module
            state.effective = mod.effective_config(state.ctx, mod.DEFAULT_TRAIN)
        # values a pipeline decides at run time (FromConfig) are read from its effective configuration
        self.conv = {role: s.conventions.resolved(self.side[role].effective or {}) for role, s in self.sides.items()}
        self.delayed = {role: c.delay_pattern_for(cfg) for role, c in self.conv.items()}
        entries = derive(self.conv["reference"], self.conv["custom"], model_config=cfg)
        entries += overrides_for(self.sides["reference"].name, self.sides["custom"].name)
        self.catalogue = Catalogue(entries)
        self.fields = FieldComparer(self.catalogue, options.tolerances)
        self.evidence: dict[str, Any] = {}
        self.extras: dict[str, Any] = {}
        self.initial_trainable: dict[str, torch.Tensor] | None = None
        self.lora_b_init: dict[str, Any] | None = None

    # ------------------------------------------------------------------ helpers

    def say(self, msg: str) -> None:
        """Progress: to the caller's channel when it gave one, else to the log (never both)."""
        if self.options.progress:
            self.options.progress(msg)
        else:
            log.info(msg)

    def gather(self, what: str, fn: Callable[[], Any]) -> Any:
        """Evidence for explanations, best effort: an explanation must never cost the comparison its
        result, so a failure here is logged and recorded (as {"error": ...}) instead of raised."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - logged and kept in the evidence, never silent
            log.warning("could not gather %s: %s: %s", what, type(exc).__name__, exc)
            return {"error": f"{what}: {type(exc).__name__}: {exc}"}

    def not_compared(self, stage: str, name: str, missing: Sequence[tuple[str, str]],
                     stage_of_output: str | None = None) -> None:
        """Record field `name` of `stage` as not compared: a side left an optional output None
        (`higgs_common.stages.OPTIONAL_OUTPUTS`); never a divergence.  Listed in the stage note and in
        the report's extras["not_compared"]."""
        reason = "; ".join(f"the {role} side does not provide the optional {stage_of_output or stage} output {out!r}"
                           for role, out in missing)
        self.extras.setdefault("not_compared", []).append(
            {"stage": stage, "field": name, "sides": sorted({r for r, _ in missing}),
             "outputs": sorted({o for _, o in missing}), "reason": reason})

    def not_compared_note(self, stage: str) -> str | None:
        """One line for the stage note: which fields were not compared and why (None: all were)."""
        rows = [r for r in self.extras.get("not_compared", []) if r["stage"] == stage]
        if not rows:
            return None
        why = sorted({f"{side}: {out}" for r in rows for side in r["sides"] for out in r["outputs"]})
        return (f"not compared ({len(rows)} field(s), optional outputs a side does not provide: {', '.join(why)}): "
                + ", ".join(r["field"] for r in rows))

    def mod(self, role: str) -> Any:
        return self.side[role].side.module

    def input_for(self, role: str, attr: str) -> Any:
        """Isolated: the custom side's output (see module docstring); propagated: the side's own."""
        source = ISOLATED_SOURCE if self.options.mode == "isolated" else role
        return getattr(self.side[source], attr)

    def perturbed(self, stage: str, role: str, output: Any) -> Any:
        """Apply the test hook `RunOptions.perturb` to a stage output (identity by default)."""
        if self.options.perturb is None:
            return output
        return self.options.perturb(stage, role, output)

    def timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        # CUDA work is asynchronous: without the syncs, a stage's kernels would still be running
        # when its diff starts, and their time would be billed to diffing.
        sync(self.side["reference"].ctx.device)
        t0 = time.perf_counter()
        out = fn()
        sync(self.side["reference"].ctx.device)
        return out, time.perf_counter() - t0

    @property
    def device(self) -> torch.device:
        return self.side["reference"].ctx.device

    def scale_sources(self) -> dict[str, float]:
        """Quantities a scale factor between two diverged values may match (relations)."""
        items = self.side["custom"].items or []
        out = {"num_codebooks": float(self.num_codebooks), "samples": float(max(len(items), 1)),
               "grad_accum": float(max(2, self.options.ddp_grad_accum)),
               "world_size": float(max(self.options.ddp_world_size, 1)),
               "lora_alpha/r": float(self.train.lora_alpha) / float(self.train.lora_r)}
        batch = self.side["custom"].batch
        starts = getattr(batch, "audio_out_ids_start", None) if batch is not None else None
        if starts is not None and starts.numel():
            out["segments"] = float(starts.numel())
        return {k: v for k, v in out.items() if v not in (0.0, 1.0)}

    # ------------------------------------------------------------------ models

    def build_models(self) -> None:
        """Both sides from the same checkpoint in train() mode; trainable params equal on both sides,
        LoRA B set to small identical non-zero values (recorded in the report)."""
        if self.side["reference"].model is not None:
            return
        from harness.engine import model_ops

        self.initial_lora_b: dict[str, list[str]] = {}
        values: dict[str, dict[str, torch.Tensor]] = {}
        for role, state in self.side.items():
            torch.manual_seed(state.ctx.seed)
            state.model = self.mod(role).build_model(state.ctx, self.train)
            model_ops.move(state.model, state.ctx.device)
            model_ops.set_mode(state.model, True)
        self.align_names({role: model_ops.summary(st.model)["names"] for role, st in self.side.items()})
        for role, state in self.side.items():
            values[role] = self.in_ref_names(role, model_ops.trainable_values(state.model))
            # LoRA must start as the identity (B = 0: the step-0 model IS the checkpoint); recorded
            # before the harness sets B below, compared at the forward stage.
            self.initial_lora_b[role] = sorted(n for n, v in values[role].items()
                                               if "lora_B" in n and bool((v != 0).any()))
        ref_trainable = values["reference"]
        set_lora_b(ref_trainable, std=LORA_B_STD, seed=self.side["reference"].ctx.seed)
        self.lora_b_init = {"distribution": f"normal(0, {LORA_B_STD}^2)", "seed": self.side["reference"].ctx.seed,
                            "parameters": sum(1 for n in ref_trainable if "lora_B" in n)}
        for role in self.side:
            model_ops.load_values(self.side[role].model, self.in_side_names(role, ref_trainable))
        self.initial_trainable = {n: p.detach().clone() for n, p in ref_trainable.items()}
        from harness.engine.evidence import parameter_evidence
        self.evidence["parameters"] = parameter_evidence(self.side, self.side["reference"].ctx.model_path)
        self.evidence["parameters"]["trainable"] = {
            role: [self.to_ref[role].get(n, n) for n in names]
            for role, names in self.evidence["parameters"]["trainable"].items()}

    def mark_intended(self, result: StageResult) -> None:
        """Mark the unexpected fields an adapter declares intended (`INTENDED_DIFFERENCES`) as expected,
        with the adapter's reason."""
        import fnmatch

        for role, state in self.side.items():
            for pattern, reason in state.side.intended_differences():
                for f in result.fields:
                    if f.unexpected and (fnmatch.fnmatchcase(f"{f.stage}/{f.field}", pattern)
                                         or fnmatch.fnmatchcase(f.field, pattern)):
                        f.expected = True
                        f.expected_reason = f"[intended by the {role} adapter {state.side.name}] {reason}"

    # ------------------------------------------------------------------ parameter names

    def align_names(self, names: dict[str, list[str]]) -> None:
        """Line up the two sides' parameter names: canonical names (`higgs_common.param_names`: DDP,
        torch.compile and peft wrappers, adapter keys) minus the wrapper attribute one side adds
        (`common_prefix_alignment`, e.g. "model.").  Every name-keyed value the harness compares is
        keyed by the REFERENCE side's name; `to_ref[role]` maps a side's names there."""
        from higgs_common.param_names import canonical_name, common_prefix_alignment

        prefix = dict(zip(("reference", "custom"), common_prefix_alignment(names["reference"], names["custom"])))

        def key(name: str, role: str) -> str:
            k = canonical_name(name)
            return k[len(prefix[role]):] if k.startswith(prefix[role]) else k

        ref_by_key = {key(n, "reference"): n for n in names["reference"]}
        self.name_prefixes = prefix
        self.to_ref: dict[str, dict[str, str]] = {
            role: {n: ref_by_key.get(key(n, role), n) for n in names[role]} for role in ("reference", "custom")}
        self.from_ref: dict[str, dict[str, str]] = {role: {v: k for k, v in m.items()} for role, m in self.to_ref.items()}

    def in_ref_names(self, role: str, values: dict[str, Any] | None) -> dict[str, Any] | None:
        """`values` keyed by `role`'s parameter names -> keyed by the reference side's names."""
        if values is None or not hasattr(self, "to_ref"):
            return values
        m = self.to_ref[role]
        return {m.get(k, k): v for k, v in values.items()}

    def in_side_names(self, role: str, values: dict[str, Any] | None) -> dict[str, Any] | None:
        """Inverse of `in_ref_names`."""
        if values is None or not hasattr(self, "from_ref"):
            return values
        m = self.from_ref[role]
        return {m.get(k, k): v for k, v in values.items()}

    # ------------------------------------------------------------------ driver

    def run(self) -> list[StageResult]:
        """Run the requested stages in pipeline order; a stage that raises is reported, not fatal.

        Bad input (`SampleError`, `UnknownFaultError`) propagates: it is the user's to fix (exit 2).
        """
        from harness.engine import stage_config, stage_data, stage_model, stage_step

        runners = {"dataset": stage_data.run_dataset, "collator": stage_data.run_collator,
                   "forward": stage_model.run_forward, "loss": stage_model.run_loss,
                   "backward": stage_model.run_backward, "step": stage_step.run_step,
                   "config": stage_config.run_config}
        wanted = set(self.options.stages)
        flow = [s for s in STAGES if s != "config"]
        last = max((flow.index(s) for s in wanted if s in flow), default=-1)
        order = flow[: last + 1] + (["config"] if "config" in wanted else [])
        results: list[StageResult] = []
        failed = False
        for stage in order:
            if failed and stage != "config":
                continue      # the data flow is broken; config (not in the flow) still explains the run
            self.say(f"stage {stage}")
            try:
                res = runners[stage](self)
            except FATAL_INPUT_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - reported in the stage result, with type and message
                cause = input_error_in_chain(exc)
                if cause is not None:   # the stage failed because of its input: bad input, exit 2
                    raise cause from exc
                log.exception("stage %s failed", stage)
                where, ours = raised_where(exc)
                results.append(StageResult(stage, "error", [], error=f"{type(exc).__name__}: {exc}",
                                           note=(f"raised in the harness's own code at {where}: a bug in higgs-diff, "
                                                 "please report it" if ours else f"raised at {where}") if where else None))
                failed = True
                continue
            self.mark_intended(res)
            res.refresh_status()
            if stage in wanted:
                results.append(res)
        return results


# Bad input (a broken sample, an unknown fault) is the user's to fix: it aborts with exit 2.
FATAL_INPUT_ERRORS = (SampleError, UnknownFaultError)


_HARNESS_DIR = str(Path(__file__).resolve().parents[1])


def raised_where(exc: BaseException) -> tuple[str | None, bool]:
    """(``file:line in function`` of the innermost frame of project code, True when that is the harness's own
    code): a stage error raised by a pipeline's code is that side's finding; one raised by the harness is a bug."""
    import traceback as _tb
    import site
    import sysconfig

    while exc.__cause__ is not None:     # a wrapper (`raise ... from exc`): where the original was raised
        exc = exc.__cause__
    libs = tuple(p for p in {sysconfig.get_paths().get("purelib"), sysconfig.get_paths().get("stdlib"),
                             *getattr(site, "getsitepackages", lambda: [])()} if p)
    frames = [f for f in _tb.extract_tb(exc.__traceback__) if not f.filename.startswith(libs)
              and "<frozen" not in f.filename]
    if not frames:
        return None, False
    f = frames[-1]
    return f"{f.filename}:{f.lineno} in {f.name}", f.filename.startswith(_HARNESS_DIR)


def input_error_in_chain(exc: BaseException) -> SampleError | None:
    """The SampleError that `exc` was raised from or while handling (`__cause__`/`__context__`), if any.

    A stage that fails *because of* a bad sample (e.g. a library error re-raised around it) is bad
    input too, not a finding about the stage.
    """
    seen: set[int] = set()
    link = exc.__cause__ or exc.__context__
    while link is not None and id(link) not in seen:
        if isinstance(link, SampleError):
            return link
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return None


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def set_lora_b(named: dict[str, torch.Tensor], *, std: float, seed: int) -> None:
    """Fill every `lora_B` parameter with N(0, std^2), seeded by (seed, name): the same values
    wherever the same parameter name appears."""
    import zlib

    with torch.no_grad():
        for name, p in named.items():
            if "lora_B" not in name:
                continue
            g = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).mul_(std).to(p.device, p.dtype))


__all__ = ["Comparison", "RunOptions", "STAGES", "SideState", "to_device", "sync"]
