"""Run both pipelines stage by stage and diff what each stage produced.

Modes
-----
`isolated` (default): every stage of both sides gets the SAME input — the custom side's output of
the previous stage, with the reference stage run as a shadow module on it — so a difference is
attributed to the stage that made it.  The custom side (the pipeline under test) supplies the
common input so that its stage code runs on the layouts it was written for: a fault that only
shows on its own layout (e.g. labels looked up by the wrong audio index) must not be masked by
feeding it the reference's layout.  `propagated`: each side runs end to end on its own outputs,
showing how an early divergence spreads.

Stage inputs in isolated mode
-----------------------------
dataset   canonical records, written into each side's native format, read by its own loader
collator  the custom dataset's items
forward   the custom collator's batch, same checkpoint weights on both sides
loss      the custom forward's outputs + the custom batch
backward  each side's model on the common batch, one loss function for both (the reference's,
          which always keeps a graph); plus the custom side's DDP micro-step over 2 gloo/NCCL
          ranks vs its own single-process gradients
step      the custom gradients loaded into both sides' models, one optimizer step each under
          the declared common configuration
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from harness import projections as P
from harness.catalogue import CATALOGUE, lookup
from harness.common_config import COMPARE_PRECISION, common_train_config, tolerance_for
from harness.decode import Decoder
from harness.diff import FieldDiff, default_tolerance, diff_scalars, diff_tensors
from harness.report import StageResult
from harness.sides import canonical_transcript, stages_of
from higgs_common.stages import StageContext, TrainConfig

log = logging.getLogger("harness")

# Whose previous-stage output every stage gets in isolated mode (see the module docstring).
ISOLATED_SOURCE = "custom"

STAGES: tuple[str, ...] = ("dataset", "collator", "forward", "loss", "backward", "step")


# See Comparison._ddp_step_fields: the share of a parameter tensor that may move differently after
# AdamW's first step in a synchronised DDP run (measured on the full model, 2 x H100: 0.007%).
DDP_STEP_AMPLIFIED_FRACTION = 1e-3


@dataclass
class RunOptions:
    stages: tuple[str, ...] = STAGES
    mode: str = "isolated"
    ddp_world_size: int = 2           # 0 disables the distributed backward check
    ddp_grad_accum: int = 2
    ddp_steps: int = 3                # optimizer steps of the DDP check (loss compared at each)
    tolerances: dict[str, tuple[float, float]] = field(default_factory=dict)   # field -> (rtol, atol)
    precision: str = COMPARE_PRECISION    # of the common configuration; see harness.common_config
    progress: Callable[[str], None] | None = None
    # Test hook: (stage, side, output) -> output, applied to every stage output of both sides.
    # Property tests use it to corrupt one element and check the report points at it.
    perturb: Callable[[str, str, Any], Any] | None = None


@dataclass
class SideState:
    """What one side produced so far."""

    ctx: StageContext
    items: list | None = None
    batch: Any = None
    model: torch.nn.Module | None = None
    outputs: Any = None
    loss: Any = None
    grads: dict[str, torch.Tensor] | None = None
    params: dict[str, torch.Tensor] | None = None
    delayed: bool = False
    effective: dict | None = None


class Comparison:
    """One differential run over a list of canonical records."""

    def __init__(self, records: Sequence[Any], ctx: StageContext, faults: Sequence[str],
                 work_dir: Path, options: RunOptions) -> None:
        self.records = list(records)
        self.options = options
        self.work_dir = Path(work_dir)
        self.train: TrainConfig = common_train_config(ctx.device, options.precision)
        self.side: dict[str, SideState] = {
            "reference": SideState(dataclasses.replace(
                ctx, faults=frozenset(),
                options={"task_type": "zero_shot_voice_cloning", **ctx.options})),
            "custom": SideState(dataclasses.replace(ctx, faults=frozenset(faults))),
        }
        cfg = ctx.model_config
        self.bos = int(cfg.audio_stream_bos_id)
        self.eos = int(cfg.audio_stream_eos_id)
        self.audio_out_token_id = int(cfg.audio_out_token_idx)
        self.decoder = Decoder(ctx.text_tokenizer)
        self.evidence: dict[str, Any] = {}
        self.extras: dict[str, Any] = {}
        for name, state in self.side.items():
            state.effective = stages_of(name).effective_config(state.ctx, stages_of(name).DEFAULT_TRAIN)
            state.delayed = bool(P.find_key(state.effective, "use_delay_pattern"))

    # ------------------------------------------------------------------ helpers

    def _say(self, msg: str) -> None:
        if self.options.progress:
            self.options.progress(msg)
        log.info(msg)

    def _tol(self, name: str) -> tuple[float | None, float | None]:
        return tolerance_for(name, self.options.tolerances, self.side["reference"].ctx.device)

    def _compare(self, stage: str, name: str, ref: Any, cus: Any, info: dict | None = None, *,
                 sample: str | None = None, decode=None, sample_of=None, keep_mask: bool = False) -> FieldDiff:
        """Diff one field, consulting the expected-difference catalogue."""
        info = info or {}
        rtol, atol = self._tol(name)

        def raw_diff(a: Any, b: Any) -> FieldDiff:
            if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
                d = diff_tensors(a, b, stage=stage, field=name, rtol=rtol, atol=atol, decode=decode,
                                 sample_of=sample_of, keep_mask=keep_mask)
            else:
                d = diff_scalars(a, b, stage=stage, field=name, rtol=rtol, atol=atol)
            if sample is not None and d.sample is None:
                d.sample = sample
            return d

        entry = lookup(stage, name)
        if entry is None:
            return raw_diff(ref, cus)
        if entry.transform is not None:
            want = entry.transform(ref, info)
            against = raw_diff(want, cus)
            if not against.diverged:
                d = raw_diff(ref, cus)
                d.expected = d.diverged
                d.expected_reason = f"[{entry.id}] {entry.reason}" if d.diverged else None
                return d
            against.note = (f"custom differs from the catalogued expectation [{entry.id}]: the "
                            f"'reference' column shows the reference value transformed as the catalogue says")
            return against
        d = raw_diff(ref, cus)
        if d.diverged and (entry.holds is None or entry.holds(ref, cus, info)):
            d.expected = True
            d.expected_reason = f"[{entry.id}] {entry.reason}"
        elif d.diverged:
            d.note = f"differs, but not as catalogued [{entry.id}]: {entry.reason}"
        return d

    def _transcripts(self, item: Any) -> dict[str, str | None]:
        prompt = self.decoder.tokenizer.decode(item.sample.input_ids.tolist())
        out = P.prompt_transcripts(prompt)
        return {k: (None if v is None else canonical_transcript(v)) for k, v in out.items()}

    def _input_for(self, side: str, attr: str) -> Any:
        """Isolated: the custom side's output (see module docstring); propagated: the side's own."""
        source = ISOLATED_SOURCE if self.options.mode == "isolated" else side
        return getattr(self.side[source], attr)

    def _perturbed(self, stage: str, side: str, output: Any) -> Any:
        """Apply the test hook `RunOptions.perturb` to a stage output (identity by default)."""
        if self.options.perturb is None:
            return output
        return self.options.perturb(stage, side, output)

    def _timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        # CUDA work is asynchronous: without the syncs, a stage's kernels would still be running
        # when its diff starts, and their time would be billed to diffing.
        _sync(self.side["reference"].ctx.device)
        t0 = time.perf_counter()
        out = fn()
        _sync(self.side["reference"].ctx.device)
        return out, time.perf_counter() - t0

    # ------------------------------------------------------------------ stages

    def run_dataset(self) -> StageResult:
        compute = 0.0
        for name, state in self.side.items():
            mod = stages_of(name)
            native = mod.write_native(self.records, self.work_dir / "native" / name)
            state.items, dt = self._timed(lambda: mod.dataset(native, state.ctx))
            state.items = self._perturbed("dataset", name, state.items)
            compute += dt
        t0 = time.perf_counter()
        ref_items, cus_items = self.side["reference"].items, self.side["custom"].items
        fields: list[FieldDiff] = []
        fields.append(self._compare("dataset", "sample_ids", [i.sample_id for i in ref_items],
                                    [i.sample_id for i in cus_items]))
        projected = [(r.sample_id, P.dataset_projection(r), P.dataset_projection(c), r, c)
                     for r, c in zip(ref_items, cus_items)]
        for key in ("target_audio_codes", "reference_audio_codes", "target_is_reference_clip",
                    "reference_audio_is_label", "label_audio_count"):
            for sid, pr, pc, _, _ in projected:
                fields.append(self._compare("dataset", key, pr[key], pc[key], sample=sid,
                                            decode=self.decoder.codes(sid), keep_mask=True))
        # Transcripts as the model reads them, in the reference's normal form (it normalises target
        # transcripts, the custom pipeline does not; normalising is idempotent).
        texts = [(sid, self._transcripts(r), self._transcripts(c)) for sid, _, _, r, c in projected]
        for key in ("target_transcript", "reference_transcript"):
            for sid, tr, tc in texts:
                fields.append(self._compare("dataset", key, tr[key], tc[key], sample=sid))
        for key in ("audio_ids_concat", "audio_ids_start", "input_ids", "label_ids"):
            for sid, _, _, r, c in projected:
                fields.append(self._compare("dataset", key, getattr(r.sample, key), getattr(c.sample, key),
                                            sample=sid, decode=self.decoder.for_field(key, [sid])))
        self.evidence["dataset"] = {sid: (pr, pc) for sid, pr, pc, _, _ in projected}
        return StageResult("dataset", "ok", fields, compute, time.perf_counter() - t0)

    def run_collator(self) -> StageResult:
        compute = 0.0
        for name, state in self.side.items():
            items = self._input_for(name, "items")
            state.batch, dt = self._timed(lambda: stages_of(name).collate(items, state.ctx))
            state.batch = self._perturbed("collator", name, state.batch)
            compute += dt
        t0 = time.perf_counter()
        rb, cb = self.side["reference"].batch, self.side["custom"].batch
        ids = [i.sample_id for i in self._input_for("custom", "items")]
        info = {"ref_audio_out_ids": P.batch_field(rb, "audio_out_ids"),
                "ref_audio_out_ids_start": P.batch_field(rb, "audio_out_ids_start"),
                "ref_audio_in_ids": P.batch_field(rb, "audio_in_ids"),
                "ref_audio_in_ids_start": P.batch_field(rb, "audio_in_ids_start"),
                "custom_delayed": self.side["custom"].delayed, "bos": self.bos, "eos": self.eos,
                "input_ids": P.batch_field(rb, "input_ids"), "audio_out_token_id": self.audio_out_token_id}
        fields: list[FieldDiff] = []
        sup = {}
        for name, b in (("reference", rb), ("custom", cb)):
            sup[name] = P.supervised_audio_codes(P.batch_field(b, "label_audio_ids"),
                                                 P.batch_field(b, "audio_out_ids_start"),
                                                 delayed=self.side[name].delayed, bos=self.bos, eos=self.eos)
        fields.append(self._compare("collator", "supervised_audio_codes", sup["reference"], sup["custom"],
                                    decode=self.decoder.codes("batch"), keep_mask=True))
        for name_, b in (("reference", rb), ("custom", cb)):
            lab = P.batch_field(b, "label_audio_ids")
            self.evidence.setdefault("collator", {})[name_] = {
                "label_audio_all_ignored": lab is None or lab.numel() == 0 or bool((lab == P.IGNORE).all()),
                "label_audio_has_bos": lab is not None and lab.numel() > 0 and bool((lab == self.bos).any()),
            }
        for key in ("input_ids", "attention_mask", "label_ids", "audio_in_ids", "audio_in_ids_start",
                    "audio_out_ids", "audio_out_ids_start", "label_audio_ids"):
            fields.append(self._compare("collator", key, P.batch_field(rb, key), P.batch_field(cb, key), info,
                                        decode=self.decoder.for_field(key, ids), keep_mask="audio" in key,
                                        sample_of=self.decoder.row_sample(ids) if key in ("input_ids", "attention_mask", "label_ids") else None))
        return StageResult("collator", "ok", fields, compute, time.perf_counter() - t0)

    def _build_models(self) -> None:
        """Both sides from the same checkpoint; trainable (LoRA) params copied reference -> custom."""
        if self.side["reference"].model is not None:
            return
        for name, state in self.side.items():
            torch.manual_seed(self.side[name].ctx.seed)
            state.model = stages_of(name).build_model(state.ctx, self.train).to(state.ctx.device)
            state.model.eval()   # no dropout anywhere: both sides must be deterministic
        ref_trainable = {n: p for n, p in self.side["reference"].model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            for n, p in self.side["custom"].model.named_parameters():
                if p.requires_grad and n in ref_trainable and ref_trainable[n].shape == p.shape:
                    p.copy_(ref_trainable[n])
        self.evidence["parameters"] = _parameter_evidence(self.side, self.side["reference"].ctx.model_path)

    def run_forward(self) -> StageResult:
        self._build_models()
        compute = 0.0
        for name, state in self.side.items():
            batch = _to_device(self._input_for(name, "batch"), state.ctx.device)
            with torch.no_grad():
                state.outputs, dt = self._timed(lambda: stages_of(name).forward(state.model, batch, state.ctx))
                state.outputs = self._perturbed("forward", name, state.outputs)
            compute += dt
        t0 = time.perf_counter()
        ro, co = self.side["reference"].outputs, self.side["custom"].outputs
        ids = [i.sample_id for i in self._input_for("custom", "items")]
        fields = []
        for key in ("expanded_input_ids", "expanded_labels", "logits", "audio_logits"):
            fields.append(self._compare("forward", key, getattr(ro, key), getattr(co, key),
                                        decode=self.decoder.for_field(key, ids),
                                        sample_of=self.decoder.row_sample(ids) if key != "audio_logits" else None))
        trainable = self.evidence["parameters"]["trainable"]
        only_ref = sorted(set(trainable["reference"]) - set(trainable["custom"]))
        only_cus = sorted(set(trainable["custom"]) - set(trainable["reference"]))
        # Compared as "the first name only one side has", which is what a reader needs.
        fields.append(self._compare("forward", "trainable_parameters_only_on_one_side",
                                    only_ref[0] if only_ref else None, only_cus[0] if only_cus else None))
        fields[-1].note = f"{len(only_ref)} only in reference, {len(only_cus)} only in custom" if (only_ref or only_cus) else None
        return StageResult("forward", "ok", fields, compute, time.perf_counter() - t0)

    def run_loss(self) -> StageResult:
        if self.side["reference"].outputs is None:
            self.run_forward()
        compute = 0.0
        for name, state in self.side.items():
            outputs = self._input_for(name, "outputs")
            batch = _to_device(self._input_for(name, "batch"), state.ctx.device)
            state.loss, dt = self._timed(lambda: stages_of(name).loss(outputs, batch, state.ctx))
            state.loss = self._perturbed("loss", name, state.loss)
            compute += dt
        t0 = time.perf_counter()
        rl, cl = self.side["reference"].loss, self.side["custom"].loss
        batch = self._input_for("custom", "batch")
        starts = P.batch_field(batch, "audio_out_ids_start")
        n_seg = 0 if starts is None else int(starts.numel())
        c = int(self.side["reference"].ctx.model_config.audio_num_codebooks)
        info = {"cross_segment_targets": max(n_seg - 1, 0) * c, "ref_audio_ce": rl.audio_token_ce,
                "cus_audio_ce": cl.audio_token_ce, "ref_text": rl.text.detach()}
        ref_ce, cus_ce = P.common_positions(rl.audio_token_ce, cl.audio_token_ce)
        fields = [
            self._compare("loss", "has_target_audio", rl.has_target_audio, cl.has_target_audio),
            self._compare("loss", "audio_ce_common", ref_ce, cus_ce, decode=self.decoder.frames(),
                          keep_mask=True),
            self._compare("loss", "text_ce_common", *P.common_positions(rl.text_token_ce, cl.text_token_ce)),
            self._compare("loss", "text", rl.text.detach(), cl.text.detach()),
            self._compare("loss", "text_supervised_tokens", rl.text_supervised_tokens, cl.text_supervised_tokens),
            self._compare("loss", "audio_supervised_tokens", rl.audio_supervised_tokens,
                          cl.audio_supervised_tokens, info),
            self._compare("loss", "audio", rl.audio.detach(), cl.audio.detach(), info),
            self._compare("loss", "per_codebook", rl.per_codebook.detach(), cl.per_codebook.detach(), info),
            self._compare("loss", "total", rl.total.detach(), cl.total.detach(), info),
        ]
        self.extras["per_codebook"] = {"reference": [float(x) for x in rl.per_codebook.detach().cpu()],
                                       "custom": [float(x) for x in cl.per_codebook.detach().cpu()]}
        outputs = self._input_for("custom", "outputs")
        self.evidence["loss"] = _loss_evidence(rl, cl, outputs, batch)
        return StageResult("loss", "ok", fields, compute, time.perf_counter() - t0)

    def run_backward(self) -> StageResult:
        self._build_models()
        compute = 0.0
        ref_mod = stages_of("reference")
        for name, state in self.side.items():
            mod = stages_of(name)
            batch = _to_device(self._input_for(name, "batch"), state.ctx.device)
            state.model.zero_grad(set_to_none=True)

            def work() -> dict[str, torch.Tensor]:
                out = mod.forward(state.model, batch, state.ctx)
                # Isolated: one loss FUNCTION for both (the reference's), so only backward differs.
                loss_fn = ref_mod.loss if self.options.mode == "isolated" else mod.loss
                return mod.backward(loss_fn(out, batch, state.ctx), state.model)

            state.grads, dt = self._timed(work)
            state.grads = self._perturbed("backward", name, state.grads)
            compute += dt
        t0 = time.perf_counter()
        fields = self._compare_mapping("backward", "grad", self.side["reference"].grads, self.side["custom"].grads)
        self._ddp_compute_s = 0.0
        fields += self._ddp_fields()
        diff_s = time.perf_counter() - t0 - self._ddp_compute_s
        return StageResult("backward", "ok", fields, compute + self._ddp_compute_s, diff_s)

    def _ddp_fields(self) -> list[FieldDiff]:
        """Custom side's real DDP run vs one process on the same global batch: step-1 gradients.

        The same run's parameters after step 1 and losses over `ddp_steps` steps are compared at the
        step stage (`_ddp_step_fields`).  On CUDA with enough GPUs the ranks run NCCL, one GPU each,
        and the single process runs on one GPU; otherwise gloo ranks on the CPU.
        """
        world = self.options.ddp_world_size
        mod = stages_of("custom")
        self._ddp = None
        if world < 2 or not hasattr(mod, "ddp_run"):
            return []
        state = self.side["custom"]
        items = self._input_for("custom", "items")
        # Every rank gets `accum` micro-batches of one sample (>= 2, so that a no_sync mistake on
        # either the first or the last micro-batch shows).  ddp_run gives rank r the contiguous
        # shard r; sample (r + m * world) % n goes to rank r's micro-batch m, so ranks see different
        # samples whenever there are at least 2 (with 1 sample, unsynchronised ranks look synced).
        accum = max(2, self.options.ddp_grad_accum)
        n = len(items)
        items = [items[(r + m * world) % n] for r in range(world) for m in range(accum)]
        steps = max(1, self.options.ddp_steps)
        on_gpus = state.ctx.device.type == "cuda" and torch.cuda.device_count() >= world
        backend = f"NCCL on {world} GPUs ({torch.cuda.get_device_name(0)})" if on_gpus else f"gloo, {world} CPU processes"
        self._say(f"backward: DDP check, {backend}, {accum} micro-batches per rank, {steps} steps")
        t0 = time.perf_counter()
        with self._models_off_gpu(on_gpus):
            single = mod.ddp_run(state.ctx, self.train, items, world_size=1, grad_accum=1, steps=steps)[0]
            ranks = mod.ddp_run(state.ctx, self.train, items, world_size=world, grad_accum=accum, steps=steps)
        self._ddp_compute_s = time.perf_counter() - t0   # pipeline work (process start-up included), not diffing
        self._ddp = (single, ranks)
        fields: list[FieldDiff] = []
        unsynced = []
        for r, res in enumerate(ranks):
            rank_fields = self._compare_mapping("backward", f"ddp_rank{r}_grad", single.grads, res.grads)
            if any(f.diverged for f in rank_fields):
                unsynced.append(r)
            fields += rank_fields
        ranks_agree = all(_same_mapping(ranks[0].grads, g.grads) for g in ranks[1:])
        rtol, atol = tolerance_for("ddp_rank0_grad", self.options.tolerances, state.ctx.device)
        self.evidence["ddp"] = {"world_size": world, "ranks_agree": ranks_agree, "unsynced_ranks": unsynced,
                                "backend": backend, "grad_accum": accum, "steps": steps,
                                "global_batch": len(items), "rtol": rtol, "atol": atol}
        return fields

    def _ddp_step_fields(self) -> list[FieldDiff]:
        """After optimizer step 1 and over `ddp_steps` steps, each rank vs one process and vs rank 0.

        * `ddp_rank{r}_loss/per_step`: the global loss of every step, within tolerance.
        * `ddp_equal_rank{r}_param/...` (r >= 1): parameters after step 1 bit-identical to rank 0's
          (synchronised ranks apply the same all-reduced gradient with the same optimizer).
        * `ddp_rank{r}_param/...`: parameters after step 1 vs the single process.  AdamW's first
          step moves every weight by lr * g / (|g| + eps), ~lr * sign(g): where a gradient is within
          rounding of 0 (|g| ~ eps = 1e-8) the last-bit differences that the gradient check allows
          become visible parameter differences, up to 2 * lr.  So a field whose mismatching
          elements are at most `DDP_STEP_AMPLIFIED_FRACTION` of it is marked expected, with that
          reason and the count; a missed all-reduce changes a large share of every tensor (the
          rank-vs-rank check above and the gradient check catch it regardless).
        """
        if getattr(self, "_ddp", None) is None:
            return []
        single, ranks = self._ddp
        fields: list[FieldDiff] = []
        unsynced = []
        amplified = 0
        for r, res in enumerate(ranks):
            vs_single = self._compare_mapping("step", f"ddp_rank{r}_param", single.params, res.params)
            for f in vs_single:
                if (f.status == "mismatch" and f.numel and f.mismatches <= DDP_STEP_AMPLIFIED_FRACTION * f.numel):
                    f.expected = True
                    f.expected_reason = (f"AdamW step-1 amplification of near-zero gradients: {f.mismatches} of "
                                         f"{f.numel} elements (<= {DDP_STEP_AMPLIFIED_FRACTION:.1%}) moved differently; "
                                         "gradients agree (backward stage)")
                    amplified += f.mismatches if r == 0 else 0
            rank_fields = vs_single + self._compare_mapping(
                "step", f"ddp_rank{r}_loss", {"per_step": single.losses}, {"per_step": res.losses})
            if r > 0:
                rank_fields += self._compare_mapping("step", f"ddp_equal_rank{r}_param", ranks[0].params, res.params)
            if any(f.unexpected for f in rank_fields):
                unsynced.append(r)
            fields += rank_fields
        ev = self.evidence.setdefault("ddp", {})
        ev["step_unsynced_ranks"] = unsynced
        ev["step_amplified_elements"] = amplified
        ev["step_param_elements"] = int(sum(t.numel() for t in single.params.values()))
        ev["single_losses"] = [round(float(v), 6) for v in single.losses]
        ev["rank0_losses"] = [round(float(v), 6) for v in ranks[0].losses]
        return fields

    @contextlib.contextmanager
    def _models_off_gpu(self, on: bool):
        """Park both sides' models on the CPU while DDP workers need the GPUs' memory (full model)."""
        if not on:
            yield
            return
        devices = {name: next(st.model.parameters()).device for name, st in self.side.items() if st.model is not None}
        for name in devices:
            self.side[name].model.to("cpu")
        torch.cuda.empty_cache()
        try:
            yield
        finally:
            for name, dev in devices.items():
                self.side[name].model.to(dev)

    def run_step(self) -> StageResult:
        if self.side["reference"].grads is None:
            self.run_backward()
        compute = 0.0
        for name, state in self.side.items():
            mod = stages_of(name)
            grads = self._input_for(name, "grads")
            opt, _sched = mod.make_optimizer(state.model, self.train)
            with torch.no_grad():
                for n, p in state.model.named_parameters():
                    if p.requires_grad:
                        g = grads.get(n)
                        p.grad = None if g is None else g.detach().clone().to(p.device)
            state.params, dt = self._timed(lambda: mod.step(state.model, opt, state.ctx))
            state.params = self._perturbed("step", name, state.params)
            compute += dt
        t0 = time.perf_counter()
        fields = self._compare_mapping("step", "param", self.side["reference"].params, self.side["custom"].params)
        fields += self._ddp_step_fields()
        return StageResult("step", "ok", fields, compute, time.perf_counter() - t0)

    def _compare_mapping(self, stage: str, prefix: str, ref: dict | None, cus: dict | None) -> list[FieldDiff]:
        """Diff {name: tensor} mappings (gradients, parameters): hundreds of fields on a real model.

        A first pass checks every same-shape floating pair on the device and brings ONE vector of
        flags to the host; only fields with an element outside tolerance get the full diff (first
        index, values, statistics).  Without it, the per-field host syncs cost more than the
        backward pass they check.
        """
        ref, cus = ref or {}, cus or {}
        names = sorted(set(ref) | set(cus))
        within = self._all_within_tolerance(stage, prefix, ref, cus, names)
        out = []
        for name in names:
            field_name = f"{prefix}/{name}"
            if within.get(name):
                a = ref[name]
                rtol, atol = self._resolved_tol(field_name, a.dtype)
                out.append(FieldDiff(stage, field_name, "equal", numel=a.numel(), rtol=rtol, atol=atol,
                                     ref_shape=list(a.shape), custom_shape=list(a.shape),
                                     ref_dtype=str(a.dtype), custom_dtype=str(cus[name].dtype)))
            else:
                out.append(self._compare(stage, field_name, ref.get(name), cus.get(name)))
        return out

    def _resolved_tol(self, field_name: str, dtype: torch.dtype) -> tuple[float, float]:
        rtol, atol = self._tol(field_name)
        if rtol is None or atol is None:
            rtol, atol = default_tolerance(dtype)
        return rtol, atol

    def _all_within_tolerance(self, stage: str, prefix: str, ref: dict, cus: dict, names: list[str]) -> dict[str, bool]:
        fast = [n for n in names
                if isinstance(ref.get(n), torch.Tensor) and isinstance(cus.get(n), torch.Tensor)
                and ref[n].shape == cus[n].shape and ref[n].dtype == cus[n].dtype
                and ref[n].is_floating_point() and lookup(stage, f"{prefix}/{n}") is None]
        if not fast:
            return {}
        flags = []
        for n in fast:
            a = ref[n]
            rtol, atol = self._resolved_tol(f"{prefix}/{n}", a.dtype)
            # isclose(input=custom, other=reference): |cus - ref| <= atol + rtol * |ref|, NaN == NaN.
            flags.append(torch.isclose(cus[n].to(a.device), a, rtol=rtol, atol=atol, equal_nan=True).all())
        return dict(zip(fast, torch.stack(flags).tolist()))

    # ------------------------------------------------------------------ driver

    def run(self) -> list[StageResult]:
        """Run the requested stages in pipeline order; a stage that raises is reported, not fatal."""
        wanted = set(self.options.stages)
        last = max(STAGES.index(s) for s in wanted)
        results: list[StageResult] = []
        for stage in STAGES[: last + 1]:
            runner = getattr(self, f"run_{stage}")
            self._say(f"stage {stage}")
            try:
                res = runner()
            except _FATAL_INPUT_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - reported in the stage result, with type and message
                cause = _input_error_in_chain(exc)
                if cause is not None:   # the stage failed because of its input: bad input, exit 2
                    raise cause
                log.exception("stage %s failed", stage)
                results.append(StageResult(stage, "error", [], error=f"{type(exc).__name__}: {exc}"))
                break
            res.refresh_status()
            if stage in wanted:
                results.append(res)
        return results


# ---------------------------------------------------------------------- module helpers

from higgs_common.stages import SampleError, UnknownFaultError  # noqa: E402

# Bad input (a broken sample, an unknown fault) is the user's to fix: it aborts with exit 2.
# Any other exception inside a stage (e.g. the custom loss refusing an all -100 audio label) is a
# finding about that stage: it is recorded in the stage result and the report.
_FATAL_INPUT_ERRORS = (SampleError, UnknownFaultError)


def _input_error_in_chain(exc: BaseException) -> SampleError | None:
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


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor attribute of a batch to `device` (same object type back)."""
    if batch is None:
        return None
    if all(getattr(v, "device", device) == device for v in vars(batch).values() if isinstance(v, torch.Tensor)):
        return batch
    clone = type(batch).__new__(type(batch))
    for k, v in vars(batch).items():
        setattr(clone, k, v.to(device) if isinstance(v, torch.Tensor) else v)
    return clone


def _same_mapping(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    return all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-6) for k in a)


def _parameter_evidence(side: dict[str, SideState], model_path: Path) -> dict:
    """Parameter names absent from the checkpoint (randomly initialised layers) and trainable sets."""
    from safetensors import safe_open

    ckpt_keys: set[str] = set()
    for f in sorted(Path(model_path).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            ckpt_keys.update(fh.keys())
    out: dict[str, Any] = {"trainable": {}, "absent_from_checkpoint": {}}
    for name, state in side.items():
        names = [n for n, _ in state.model.named_parameters()]
        out["trainable"][name] = [n for n, p in state.model.named_parameters() if p.requires_grad]
        base = [_base_name(n) for n in names if "lora_" not in n]
        out["absent_from_checkpoint"][name] = sorted(n for n in base if ckpt_keys and n not in ckpt_keys)
    return out


def _base_name(name: str) -> str:
    """peft's 'base_model.model.x.base_layer.weight' -> checkpoint's 'x.weight'."""
    for prefix in ("base_model.model.", "module."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.replace(".base_layer.", ".")


def _loss_evidence(rl: Any, cl: Any, outputs: Any, batch: Any) -> dict:
    """Numbers the diagnosis step matches signatures against."""
    ev: dict[str, Any] = {}
    for name, l in (("reference", rl), ("custom", cl)):
        ev[name] = {"audio": float(l.audio.detach()), "text": float(l.text.detach()),
                    "total": float(l.total.detach()), "has_target_audio": bool(l.has_target_audio),
                    "audio_supervised_tokens": int(l.audio_supervised_tokens)}
    labels = P.batch_field(batch, "label_audio_ids")
    starts = P.batch_field(batch, "audio_out_ids_start")
    al = getattr(outputs, "audio_logits", None)
    if al is not None and labels is not None and labels.numel() and cl.audio_token_ce is not None:
        shifted = P.per_position_audio_ce(al.detach(), labels, starts, shift=True)
        unshifted = P.per_position_audio_ce(al.detach(), labels, starts, shift=False)
        ev["custom_matches"] = {
            "shifted": _nan_close(cl.audio_token_ce, shifted),
            "unshifted": _nan_close(cl.audio_token_ce, unshifted),
        }
    return ev


def _nan_close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal on the positions both define (and those positions exist)."""
    if a.shape != b.shape:
        return False
    both = ~torch.isnan(a) & ~torch.isnan(b.to(a.device))
    if not bool(both.any()):
        return False
    return bool(torch.allclose(a[both].float(), b.to(a.device)[both].float(), rtol=1e-4, atol=1e-5))


__all__ = ["Comparison", "RunOptions", "STAGES", "CATALOGUE"]
