"""The forward, loss and backward stages (models in train() mode under the common configuration).

forward   both models (same checkpoint, same trainable values, LoRA B non-zero) on the same batch.
loss      both loss functions on the same forward outputs; each side also against the independent
          implementation of its declared loss (`harness.semantics.loss_oracle`): per-position CE,
          reduced terms and supervised counts.
backward  each side's own loss on its own model.  The gradient a side must produce is its declared
          loss back-propagated through the OTHER side's model (a differentiable version of the
          expected-difference transforms): so a detached term, a loss the model is not wired to,
          or training-only code that cuts the graph shows, on either side.  Plus gradient
          accumulation and DDP (`harness.engine.accumulation`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from harness.engine import accumulation, model_ops, wiring
from harness.engine import tolerance as TOL
from harness.engine.common_config import CUDA_FIELD_TOLERANCES
from harness.engine.fields import FieldSpec
from harness.engine.batches import to_device
from harness.engine.worker import on_side
from harness.explain import context as X
from harness.report.model import StageResult
from harness.semantics import loss_oracle as O
from harness.semantics import projections as P
from higgs_common.stages import omitted_outputs

EXACT = TOL.Tolerance(0.0, 0.0, "exact (integers)")


def _forward_tol(c: Any, name: str, value: torch.Tensor | None) -> TOL.Tolerance | None:
    if value is None or not value.is_floating_point():
        return EXACT
    if c.device.type == "cuda":
        rtol, atol = CUDA_FIELD_TOLERANCES[name]
        return TOL.Tolerance(rtol, atol, "CUDA: same operations, kernels with atomics (common_config)")
    return TOL.same_computation(value.dtype)


def run_forward(c: Any) -> StageResult:
    c.build_models()
    compute = 0.0
    for role, state in c.side.items():
        batch = to_device(c.input_for(role, "batch"), state.ctx.device)
        with torch.no_grad():
            state.outputs, dt = c.timed(lambda: c.mod(role).forward(state.model, batch, state.ctx))
            state.outputs = c.perturbed("forward", role, state.outputs)
        compute += dt
    t0 = time.perf_counter()
    ro, co = c.side["reference"].outputs, c.side["custom"].outputs
    ids = [i.sample_id for i in c.input_for("custom", "items")]
    fields = []
    axes = {"expanded_input_ids": ("sample", "position"), "expanded_labels": ("sample", "position"),
            "logits": ("sample", "position", "vocab"), "audio_logits": ("frame", "codebook", "code")}
    exp_ids = getattr(co, "expanded_input_ids", None)
    text_ctx = X.text_context(exp_ids, c.ids, c.tokenizer) if isinstance(exp_ids, torch.Tensor) else None
    omit = {role: omitted_outputs("forward", st.outputs) for role, st in c.side.items()}
    for key in ("expanded_input_ids", "expanded_labels", "logits", "audio_logits"):
        a, b = getattr(ro, key), getattr(co, key)
        missing = [(role, key) for role in ("reference", "custom") if key in omit[role]]
        if missing:
            c.not_compared("forward", key, missing)
            continue
        spec = FieldSpec(tol=_forward_tol(c, key, a), axes=axes[key], decode=c.decoder.for_field(key, ids),
                         token=c.decoder.token if key in ("expanded_input_ids", "expanded_labels") else None,
                         sample_of=c.decoder.row_sample(ids) if key != "audio_logits" else None,
                         rel_ctx=text_ctx if key in ("expanded_input_ids", "expanded_labels") else
                         X.scale_context(c.scale_sources()))
        fields.append(c.fields.compare("forward", key, a, b, spec))
    trainable = c.evidence["parameters"]["trainable"]
    only_ref = sorted(set(trainable["reference"]) - set(trainable["custom"]))
    only_cus = sorted(set(trainable["custom"]) - set(trainable["reference"]))
    # Compared as "the first name only one side has", which is what a reader needs.
    d = c.fields.compare("forward", "trainable_parameters_only_on_one_side",
                         only_ref[0] if only_ref else None, only_cus[0] if only_cus else None, FieldSpec(tol=EXACT))
    d.note = f"{len(only_ref)} only in reference, {len(only_cus)} only in custom" if (only_ref or only_cus) else None
    fields.append(d)
    if any(f.unexpected for f in fields if f.field in ("logits", "audio_logits")):
        c.evidence["forward"] = c.gather("forward hypotheses", lambda: forward_hypotheses(c))
    nz = c.initial_lora_b
    d = c.fields.compare("forward", "lora_B_nonzero_at_init", len(nz["reference"]), len(nz["custom"]),
                         FieldSpec(tol=EXACT))
    if d.diverged:
        side = "custom" if nz["custom"] else "reference"
        d.note = (f"{len(nz[side])} LoRA B matrices are not zero as the {side} side builds them (first "
                  f"{nz[side][0]!r}): its step-0 model is not the checkpoint")
    fields.append(d)
    return StageResult("forward", "ok", fields, compute, time.perf_counter() - t0, note=c.not_compared_note("forward"))


def forward_hypotheses(c: Any) -> dict[str, Any]:
    """Why two models with the same weights disagree: train-mode-only code, LoRA scaling or dropout."""
    out: dict[str, Any] = {}
    lora = {role: on_side(st.model, wiring.lora_layers, st.model) for role, st in c.side.items()}
    common = sorted(set(lora["reference"]) & set(lora["custom"]))
    diff_scaling = [(n, lora["reference"][n]["scaling"], lora["custom"][n]["scaling"]) for n in common
                    if lora["reference"][n]["scaling"] != lora["custom"][n]["scaling"]]
    diff_dropout = [(n, lora["reference"][n]["dropout"], lora["custom"][n]["dropout"]) for n in common
                    if lora["reference"][n]["dropout"] != lora["custom"][n]["dropout"]]
    if diff_scaling:
        out["lora_scaling"] = {"module": diff_scaling[0][0], "reference": diff_scaling[0][1],
                               "custom": diff_scaling[0][2], "count": len(diff_scaling)}
    if diff_dropout:
        out["lora_dropout"] = {"module": diff_dropout[0][0], "reference": diff_dropout[0][1],
                               "custom": diff_dropout[0][2], "count": len(diff_dropout)}
    st = c.side["custom"]
    batch = to_device(c.input_for("custom", "batch"), st.ctx.device)
    ref = c.side["reference"].outputs
    try:
        model_ops.set_mode(st.model, False)
        with torch.no_grad():
            out_eval = c.mod("custom").forward(st.model, batch, st.ctx)
        out["eval_mode_matches"] = bool(torch.allclose(out_eval.logits.float(), ref.logits.float(), rtol=1e-5, atol=1e-5))
    finally:
        model_ops.set_mode(st.model, True)
    return out


# ------------------------------------------------------------------------------------------ loss


def _oracle(c: Any, role: str, outputs: Any, batch: Any) -> tuple[O.Terms, O.PositionCE, O.PositionCE | None]:
    return O.declared_loss(outputs.logits, outputs.audio_logits, outputs.expanded_labels,
                           P.batch_field(batch, "label_audio_ids"), P.batch_field(batch, "audio_out_ids_start"),
                           c.conv[role].loss)


def _expected_custom_terms(c: Any, ref_lb: Any, oracle_cus: tuple) -> dict[str, Any]:
    """The reference's per-position CE reduced the way the custom side declares, over its positions."""
    terms, t_cus, a_cus = oracle_cus

    def mix(ref_map: torch.Tensor | None, cus: O.PositionCE | None) -> O.PositionCE | None:
        if cus is None:
            return None
        if ref_map is None or ref_map.shape != cus.values.shape:
            return cus
        ref_map = ref_map.to(cus.values.device)
        use_ref = ~torch.isnan(ref_map) & cus.mask
        return O.PositionCE(torch.where(use_ref, torch.nan_to_num(ref_map), cus.values.detach()), cus.mask)

    t = mix(ref_lb.text_token_ce, t_cus)
    a = mix(ref_lb.audio_token_ce, a_cus)
    red = O.reduce(t, a, c.conv["custom"].loss)
    return {"text": red.text.detach(), "audio": red.audio.detach(), "per_codebook": red.per_codebook.detach(),
            "total": red.total.detach(), "text_supervised_tokens": red.text_tokens,
            "audio_supervised_tokens": red.audio_tokens}


def run_loss(c: Any) -> StageResult:
    if c.side["reference"].outputs is None:
        run_forward(c)
    compute = 0.0
    for role, state in c.side.items():
        outputs = c.input_for(role, "outputs")
        batch = to_device(c.input_for(role, "batch"), state.ctx.device)
        state.loss, dt = c.timed(lambda: c.mod(role).loss(outputs, batch, state.ctx))
        state.loss = c.perturbed("loss", role, state.loss)
        compute += dt
    t0 = time.perf_counter()
    rl, cl = c.side["reference"].loss, c.side["custom"].loss
    lbs = {"reference": rl, "custom": cl}
    omit = {role: omitted_outputs("loss", lb) for role, lb in lbs.items()}
    fields: list = []

    def lacking(*names: str) -> list[tuple[str, str]]:
        return [(role, n) for role in ("reference", "custom") for n in names if n in omit[role]]

    def compare(name: str, needs: tuple[tuple[str, str], ...], *args: Any) -> None:
        """Compare unless a side omitted an optional output the field needs: then "not compared"."""
        missing = [(role, n) for role, n in needs if n in omit[role]]
        if missing:
            c.not_compared("loss", name, missing)
        else:
            fields.append(c.fields.compare("loss", name, *args))

    oracle: dict[str, Any] = {}
    for role in ("reference", "custom"):
        outputs = c.input_for(role, "outputs")
        batch = to_device(c.input_for(role, "batch"), c.device)
        if getattr(outputs, "expanded_labels", None) is None:
            oracle[role] = None      # the declared loss needs the expanded labels
            continue
        with torch.no_grad():
            oracle[role] = _oracle(c, role, outputs, batch)
    outputs = c.input_for("custom", "outputs")
    vocab, cb_vocab = int(outputs.logits.shape[-1]), int(c.model_config.audio_codebook_size) + 2
    max_z = float(outputs.logits.detach().abs().max()) if outputs.logits.numel() else 0.0
    max_za = (float(outputs.audio_logits.detach().abs().max())
              if outputs.audio_logits is not None and outputs.audio_logits.numel() else 0.0)
    counted = [o[0] for o in oracle.values() if o is not None]
    n_text = max([t.text_tokens for t in counted] + [int(lb.text_supervised_tokens or 0) for lb in lbs.values()])
    n_audio = max([t.audio_tokens for t in counted] + [int(lb.audio_supervised_tokens or 0) for lb in lbs.values()])
    tol_text_ce = TOL.cross_entropy(vocab, max_z)
    tol_audio_ce = TOL.cross_entropy(cb_vocab, max_za)
    tol_text = TOL.cross_entropy(vocab, max_z, n_text)
    tol_audio = TOL.cross_entropy(cb_vocab, max_za, n_audio)
    tol_total = TOL.Tolerance(tol_text.rtol + tol_audio.rtol, tol_text.atol + tol_audio.atol,
                              "sum of the text and audio cross-entropy tolerances")
    tols = {"text": tol_text, "audio": tol_audio, "per_codebook": tol_audio, "total": tol_total}
    batch = c.input_for("custom", "batch")
    starts = P.batch_field(batch, "audio_out_ids_start")
    n_frames = int(outputs.audio_logits.shape[0]) if outputs.audio_logits is not None else 0
    audio_ctx = X.audio_context(starts, n_frames, bos=c.bos, eos=c.eos, frame_axis=0, scale_sources=c.scale_sources())
    scale_ctx = X.scale_context(c.scale_sources())
    info = ({"expected_custom_terms": _expected_custom_terms(c, rl, oracle["custom"])}
            if oracle["custom"] is not None else {})
    fields.append(c.fields.compare("loss", "has_target_audio", rl.has_target_audio, cl.has_target_audio,
                                   FieldSpec(tol=EXACT)))
    both = lambda n: (("reference", n), ("custom", n))  # noqa: E731
    if not lacking("audio_token_ce"):
        ref_ce, cus_ce = P.common_positions(rl.audio_token_ce, cl.audio_token_ce)
    else:
        ref_ce = cus_ce = None
    compare("audio_ce_common", both("audio_token_ce"), ref_ce, cus_ce,
            FieldSpec(tol=tol_audio_ce, axes=("frame", "codebook"), decode=c.decoder.frames(), keep_mask=True,
                      rel_ctx=audio_ctx))
    if not lacking("text_token_ce"):
        compare("text_ce_common", (), *P.common_positions(rl.text_token_ce, cl.text_token_ce),
                FieldSpec(tol=tol_text_ce, axes=("sample", "position"), rel_ctx=scale_ctx))
    else:
        c.not_compared("loss", "text_ce_common", lacking("text_token_ce"))
    values = {"reference": _terms_of(rl), "custom": _terms_of(cl)}
    declared: dict[str, dict[str, Any]] = {}
    # 1. each side's per-position CE and supervised counts against its declared loss (alignment)
    for role, lb in (("reference", rl), ("custom", cl)):
        if oracle[role] is None:
            c.not_compared("loss", f"declared loss@{role}", [("custom" if c.options.mode == "isolated" else role,
                                                              "expanded_labels")], stage_of_output="forward")
            continue
        terms, t_ce, a_ce = oracle[role]
        declared[role] = {"text": terms.text.detach(), "audio": terms.audio.detach(),
                          "per_codebook": terms.per_codebook.detach(), "total": terms.total.detach(),
                          "text_supervised_tokens": terms.text_tokens, "audio_supervised_tokens": terms.audio_tokens}
        if a_ce is not None:
            compare(f"audio_token_ce@{role}", ((role, "audio_token_ce"),), a_ce.nan_map(),
                    None if lb.audio_token_ce is None else lb.audio_token_ce.detach(),
                    FieldSpec(tol=tol_audio_ce, axes=("frame", "codebook"), check="declared", side=role,
                              decode=c.decoder.frames(), keep_mask=True, rel_ctx=audio_ctx))
        compare(f"text_token_ce@{role}", ((role, "text_token_ce"),), t_ce.nan_map(),
                None if lb.text_token_ce is None else lb.text_token_ce.detach(),
                FieldSpec(tol=tol_text_ce, axes=("sample", "position"), check="declared", side=role, rel_ctx=scale_ctx))
        for name in ("audio_supervised_tokens", "text_supervised_tokens"):
            compare(f"{name}@{role}", ((role, name),), declared[role][name], values[role][name],
                    FieldSpec(tol=EXACT, check="declared", side=role, rel_ctx=scale_ctx))
        if values[role]["per_codebook"] is not None:
            want, got = _supervised_only(declared[role]["per_codebook"], values[role]["per_codebook"],
                                         terms.per_codebook_tokens)
        else:
            want = got = None
        compare(f"per_codebook@{role}", ((role, "per_codebook"),), want, got,
                FieldSpec(tol=tol_audio, check="declared", side=role, rel_ctx=scale_ctx, axes=("codebook",)))
    # 2. the reduced terms across sides (expected differences derived from the two declarations)
    for name in ("text", "audio", "per_codebook", "total", "text_supervised_tokens", "audio_supervised_tokens"):
        spec = FieldSpec(tol=tols.get(name, EXACT), info=info, rel_ctx=scale_ctx,
                         axes=("codebook",) if name == "per_codebook" else None)
        compare(name, both(name), values["reference"][name], values["custom"][name], spec)
    # 3. each side's reduced terms against its declared reduction
    for role in ("reference", "custom"):
        if role not in declared:
            continue
        for name in ("text", "audio", "total"):
            compare(f"{name}@{role}", ((role, name),), declared[role][name], values[role][name],
                    FieldSpec(tol=tols[name], check="declared", side=role, rel_ctx=scale_ctx))
    c.extras["per_codebook"] = {role: ([float(x) for x in lb.per_codebook.detach().cpu()]
                                       if lb.per_codebook is not None else None) for role, lb in lbs.items()}
    c.evidence["loss"] = c.gather("loss evidence", lambda: _loss_evidence(rl, cl, outputs, batch))
    if any(f.unexpected for f in fields):   # which misreading of the declared loss reproduces each side
        from harness.semantics.loss_hypotheses import loss_evidence
        c.evidence["loss"]["hypotheses"] = {
            role: c.gather("loss hypotheses", lambda role=role, lb=lb: loss_evidence(
                c.input_for(role, "outputs"), to_device(c.input_for(role, "batch"), c.device), c.conv[role].loss, lb))
            for role, lb in (("reference", rl), ("custom", cl))}
    return StageResult("loss", "ok", fields, compute, time.perf_counter() - t0, note=c.not_compared_note("loss"))


def _terms_of(lb: Any) -> dict[str, Any]:
    def det(v: Any) -> Any:
        return None if v is None else v.detach()

    return {"text": det(lb.text), "audio": det(lb.audio), "per_codebook": det(lb.per_codebook),
            "total": lb.total.detach(),
            "text_supervised_tokens": None if lb.text_supervised_tokens is None else int(lb.text_supervised_tokens),
            "audio_supervised_tokens": None if lb.audio_supervised_tokens is None else int(lb.audio_supervised_tokens)}


def _supervised_only(want: torch.Tensor, got: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """per_codebook compared on codebooks with supervised frames (a codebook without any has no loss;
    pipelines write NaN or 0 there).  Shapes that differ are left for the diff to report."""
    if want.shape != got.shape or counts.shape != want.shape:
        return want, got
    keep = counts.to(want.device) > 0
    nan = torch.full_like(want, float("nan"))
    return torch.where(keep, want, nan), torch.where(keep.to(got.device), got, nan.to(got.device))


def _loss_evidence(rl: Any, cl: Any, outputs: Any, batch: Any) -> dict:
    """Numbers the causes are matched against."""
    ev: dict[str, Any] = {}
    for name, lb in (("reference", rl), ("custom", cl)):
        ev[name] = {"audio": None if lb.audio is None else float(lb.audio.detach()),
                    "text": None if lb.text is None else float(lb.text.detach()),
                    "total": float(lb.total.detach()), "has_target_audio": bool(lb.has_target_audio),
                    "audio_supervised_tokens": None if lb.audio_supervised_tokens is None
                    else int(lb.audio_supervised_tokens),
                    "per_codebook": [] if lb.per_codebook is None else [float(x) for x in lb.per_codebook.detach().cpu()]}
    ev["expanded_labels_none"] = getattr(outputs, "expanded_labels", None) is None   # the model got no text labels
    labels = P.batch_field(batch, "label_audio_ids")
    starts = P.batch_field(batch, "audio_out_ids_start")
    al = getattr(outputs, "audio_logits", None)
    if al is not None and labels is not None and labels.numel() and cl.audio_token_ce is not None:
        shifted = P.per_position_audio_ce(al.detach(), labels, starts, shift=True)
        unshifted = P.per_position_audio_ce(al.detach(), labels, starts, shift=False)
        ev["custom_matches"] = {"shifted": _nan_close(cl.audio_token_ce, shifted),
                                "unshifted": _nan_close(cl.audio_token_ce, unshifted)}
    if cl.text_token_ce is not None and outputs.expanded_labels is not None:
        ev["custom_text_matches"] = {"unshifted": _nan_close(cl.text_token_ce, _unshifted_text_ce(outputs)),
                                     "shifted": _nan_close(cl.text_token_ce, O.text_ce(outputs.logits.detach(),
                                                                                       outputs.expanded_labels).nan_map())}
    return ev


def _unshifted_text_ce(outputs: Any) -> torch.Tensor:
    logits, labels = outputs.logits.detach().float(), outputs.expanded_labels.to(outputs.logits.device)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0), reduction="none")
    return torch.where(labels != P.IGNORE, ce, torch.full_like(ce, float("nan")))


def _nan_close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal on the positions both define (and those positions exist)."""
    if a is None or b is None or a.shape != b.shape:
        return False
    b = b.to(a.device)
    both = ~torch.isnan(a) & ~torch.isnan(b)
    if not bool(both.any()):
        return False
    return bool(torch.allclose(a[both].float(), b[both].float(), rtol=1e-4, atol=1e-5))


# ------------------------------------------------------------------------------------------ backward


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    inner = model.module if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return {n: p for n, p in inner.named_parameters() if p.requires_grad}


def expected_grads(c: Any, role: str, batch: Any, term: str = "total") -> dict[str, torch.Tensor | None]:
    """`role`'s declared loss (or one of its terms) back-propagated through the OTHER side's model."""
    other = "custom" if role == "reference" else "reference"
    st = c.side[other]
    adapter = c.mod(other)
    return c.in_ref_names(other, on_side(adapter, declared_loss_grads, adapter, st.model, batch, st.ctx,
                                         c.conv[role].loss, term))


def declared_loss_grads(adapter: Any, model: torch.nn.Module, batch: Any, ctx: Any, loss_conv: Any,
                        term: str = "total") -> dict[str, torch.Tensor | None]:
    """Gradients of the trainable parameters of `model` under the declared loss `loss_conv` (or one of
    its terms) of `adapter.forward`'s outputs; runs where the model lives."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        out = adapter.forward(model, batch, ctx)
        terms, _t, _a = O.declared_loss(out.logits, out.audio_logits, out.expanded_labels,
                                        P.batch_field(batch, "label_audio_ids"),
                                        P.batch_field(batch, "audio_out_ids_start"), loss_conv)
        value = getattr(terms, term)
        if value.requires_grad:          # a term with nothing supervised is a constant 0.0: no gradient
            value.backward()
    grads = {n: (p.grad.detach().clone() if p.grad is not None else None) for n, p in _trainable(model).items()}
    model.zero_grad(set_to_none=True)
    return grads


def _matches(want: dict, got: dict) -> bool:
    keys = [k for k in want if want[k] is not None or got.get(k) is not None]
    if not keys:
        return False
    for k in keys:
        a, b = want.get(k), got.get(k)
        if (a is None) != (b is None):
            if not ((a is None and bool((b == 0).all())) or (b is None and bool((a == 0).all()))):
                return False
            continue
        if a is not None and not torch.allclose(b.float().to(a.device), a.float(), rtol=1e-3,
                                                atol=1e-4 * float(a.abs().max() if a.numel() else 0) + 1e-12):
            return False
    return True


def grad_hypotheses(c: Any, role: str, batch: Any, expected: dict) -> dict[str, Any]:
    """Which part of the declared loss the side's gradient is the gradient of (text or audio term
    alone), and its overall ratio to the declared gradient."""
    actual = c.side[role].grads or {}
    out: dict[str, Any] = {"ratio": X.gradient_ratio(expected, actual)}
    for term, words in (("text", "the text term alone: the audio term sends no gradient (detached, or computed "
                                 "outside the graph)"),
                        ("audio", "the audio term alone: the text term sends no gradient (detached, or computed "
                                  "outside the graph)")):
        if _matches(expected_grads(c, role, batch, term), actual):
            out["hypothesis"] = words
            break
    none = [n for n, g in actual.items() if g is None]
    out["no_gradient"] = none[:5]
    out["no_gradient_count"] = len(none)
    return out


def grad_tolerance(c: Any, expected: dict[str, Any], n_tokens: int):
    """Per-parameter tolerance: a reduction of `n_tokens` terms with cancellation, scaled by the field."""
    def spec_for(name: str, value: Any) -> FieldSpec:
        if value is None:
            return FieldSpec(tol=EXACT, axes=("out", "in"))
        scale = float(value.detach().abs().max()) if value.numel() else 0.0
        tol = TOL.cancelling_reduction(n_tokens, scale, value.dtype)
        if c.device.type == "cuda":
            rtol, atol = CUDA_FIELD_TOLERANCES["grad/*"]
            tol = TOL.Tolerance(max(tol.rtol, rtol), max(tol.atol, atol * scale), tol.rule + "; CUDA atomics")
        return FieldSpec(tol=tol, axes=("out", "in"), rel_ctx=X.scale_context(c.scale_sources()))
    return spec_for


def run_backward(c: Any) -> StageResult:
    c.build_models()
    compute = 0.0
    batches = {}
    for role, state in c.side.items():
        batch = to_device(c.input_for(role, "batch"), state.ctx.device)
        batches[role] = batch
        model_ops.zero_grad(state.model)

        def work(role: str = role, state: Any = state, batch: Any = batch) -> dict[str, torch.Tensor | None]:
            mod = c.mod(role)
            out = mod.forward(state.model, batch, state.ctx)
            return mod.backward(mod.loss(out, batch, state.ctx), state.model)

        try:
            state.grads, dt = c.timed(work)
        except Exception as exc:   # the side's own code raised: recorded for its symptoms, then the stage error
            c.side_errors[("backward", role)] = f"{type(exc).__name__}: {exc}"
            raise RuntimeError(f"the {role} side's backward raised {type(exc).__name__}: {exc}") from exc
        state.grads = c.perturbed("backward", role, c.in_ref_names(role, state.grads))
        compute += dt
    t0 = time.perf_counter()
    expected = {role: expected_grads(c, role, batches[role]) for role in ("reference", "custom")}
    logits_shape = c.side["custom"].outputs.logits.shape if c.side["custom"].outputs is not None else None
    n_tokens = int(logits_shape[0] * logits_shape[1]) if logits_shape is not None else 1
    fields = c.fields.compare_mapping("backward", "grad", expected["custom"], c.side["custom"].grads,
                                      grad_tolerance(c, expected["custom"], n_tokens))
    own = grad_tolerance(c, expected["reference"], n_tokens)

    def ref_spec(name: str, value: Any) -> FieldSpec:
        spec = own(name, value)
        spec.check, spec.side = "declared", "reference"
        return spec

    fields += c.fields.compare_mapping("backward", "grad@reference", expected["reference"], c.side["reference"].grads,
                                       ref_spec)
    for role, prefix in (("custom", "grad/"), ("reference", "grad@reference/")):
        if any(f.unexpected for f in fields if f.field.startswith(prefix)):
            c.evidence.setdefault("backward", {})[role] = c.gather(
                "gradient hypotheses", lambda role=role: grad_hypotheses(c, role, batches[role], expected[role]))
    acc_fields, acc_compute = accumulation.backward_fields(c)
    fields += acc_fields
    diff_s = time.perf_counter() - t0 - acc_compute
    return StageResult("backward", "ok", fields, compute + acc_compute, diff_s)
