"""The step stage: optimizer updates, state and learning rate over several steps.

1. **Both sides, identical inputs.**  N (`--optimizer-steps`, default 3) optimizer steps, each on a
   different batch.  The gradient of step k is the custom pipeline's own (its loss, its model at its
   own parameters θ_{k-1}); both sides' `step()` then get exactly that gradient, so any difference
   is the step code's.  Compared per step: the update Δθ relative to its own size
   (`tolerance.parameter_update`), AdamW's state (`exp_avg`, `exp_avg_sq`, `step`), the learning
   rate of every parameter, and (once) each parameter's betas / eps / weight decay.  The step
   configuration is the common one with weight decay 0.01, a cosine schedule over 2N steps and a
   clipping threshold of 3/4 of the first gradient's norm, so that weight decay, the schedule and
   clipping all act (recorded in the report).
2. **Each side's native optimizer vs its declaration.**  With its own defaults (`DEFAULT_TRAIN`),
   the side's `make_optimizer` / `step` / scheduler run N steps on seeded synthetic gradients
   (norm 2x the clipping threshold), next to an independent `torch.optim.AdamW` built from what
   the side's `effective_config` declares (lr, betas, eps, weight decay and its no-decay rule,
   max_grad_norm) and the declared schedule's formula (`harness.semantics.schedules`); the whole
   learning-rate curve over a horizon that covers warmup and decay is compared too.  Every
   `make_optimizer` call gets the adapter's OWN model (from its `build_model`), never a synthetic
   stand-in, so a make_optimizer that reads `model.config` or the adapter's own attributes works.
3. The accumulation / DDP runs of the backward stage: parameters after step 1, loss per step.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any

import torch

from harness.engine import accumulation, model_ops
from harness.engine import tolerance as TOL
from harness.engine.fields import FieldSpec
from harness.engine.batches import to_device
from harness.engine.worker import on_side
from harness.explain import context as X
from harness.report.model import StageResult
from harness.semantics.schedules import lr_multiplier
from higgs_common.stages import TrainConfig

EXACT = TOL.Tolerance(0.0, 0.0, "exact")
U32 = TOL.unit_roundoff(torch.float32)
SYNTHETIC_SEED = 1234
MAX_NATIVE_TRAINABLE = 20_000_000
# Clip at 3/4 of the first gradient's norm: clipping acts on step 1, and a gradient scaled by 1/2 before
# the step (a normalisation bug) stays below the threshold instead of being clipped back to the same norm.
CLIP_AT = 0.75


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _flat(tensors: dict[str, torch.Tensor | None], names: list[str]) -> torch.Tensor:
    parts = [tensors[n].detach().reshape(-1).float() if tensors.get(n) is not None else
             torch.full((1,), float("nan")) for n in names]
    return torch.cat([p.cpu() for p in parts]) if parts else torch.zeros(0)


def _decoder(names: list[str], shapes: dict[str, torch.Size]):
    """Flat index -> "param name[i, j]"."""
    offsets, pos = [], 0
    for n in names:
        size = int(math.prod(shapes[n])) if n in shapes else 1
        offsets.append((pos, pos + size, n))
        pos += size

    def decode(idx: tuple[int, ...]) -> str:
        flat = idx[-1]
        for a, b, n in offsets:
            if a <= flat < b:
                local, shape, sub = flat - a, list(shapes.get(n, [1])), []
                for d in reversed(shape):
                    sub.append(local % d)
                    local //= d
                return f"{n}{list(reversed(sub))}"
        return str(flat)
    return decode


def optimizer_state(opt: torch.optim.Optimizer, model: torch.nn.Module, names: list[str]) -> dict[str, Any]:
    """exp_avg, exp_avg_sq, step (flat over `names`) and per-parameter lr / betas / eps / wd of the
    trainable parameters of `model`; runs where the model lives."""
    params = _trainable(model)
    out: dict[str, Any] = {"exp_avg": {}, "exp_avg_sq": {}, "step": {}, "lr": {}, "hyper": {}}
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    for n in names:
        p = params[n]
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            out[key][n] = None if st.get(key) is None else st.get(key).detach().clone()
        step = st.get("step")
        out["step"][n] = None if step is None else torch.as_tensor(float(step)).reshape(1)
        g = group_of.get(id(p), {})
        out["lr"][n] = torch.tensor([float(g.get("lr", float("nan")))], dtype=torch.float64)
        betas = g.get("betas", (float("nan"), float("nan")))
        out["hyper"][n] = torch.tensor([float(betas[0]), float(betas[1]), float(g.get("eps", float("nan"))),
                                        float(g.get("weight_decay", float("nan")))], dtype=torch.float64)
    return out


def _grad_norm(grads: dict[str, torch.Tensor | None]) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values() if g is not None))


def _batches(c: Any, n: int) -> list[Any]:
    items = c.input_for("custom", "items")
    per = min(2, len(items))
    out = []
    for k in range(n):
        subset = [items[(k * per + j) % len(items)] for j in range(per)]
        out.append(to_device(c.mod("custom").collate(subset, c.side["custom"].ctx), c.device))
    return out


def _custom_grads(c: Any, batch: Any) -> dict[str, torch.Tensor | None]:
    st = c.side["custom"]
    mod = c.mod("custom")
    model_ops.zero_grad(st.model)
    out = mod.forward(st.model, batch, st.ctx)
    return c.in_ref_names("custom", mod.backward(mod.loss(out, batch, st.ctx), st.model))


def run_step(c: Any) -> StageResult:
    if c.side["reference"].grads is None:
        from harness.engine.stage_model import run_backward
        run_backward(c)
    n_steps = max(1, c.options.optimizer_steps)
    batches = _batches(c, n_steps)
    for role, st in c.side.items():
        if c.initial_trainable:
            model_ops.load_values(st.model, c.in_side_names(role, c.initial_trainable))
    compute = 0.0
    g1, dt = c.timed(lambda: _custom_grads(c, batches[0]))
    compute += dt
    train = c.train.replace(weight_decay=0.01, schedule="cosine", warmup_steps=0, max_steps=2 * n_steps,
                            max_grad_norm=CLIP_AT * _grad_norm(g1) if _grad_norm(g1) > 0 else c.train.max_grad_norm)
    c.extras["step_config"] = {"optimizer_steps": n_steps, "weight_decay": train.weight_decay,
                               "schedule": train.schedule, "max_steps": train.max_steps,
                               "max_grad_norm": round(train.max_grad_norm, 6),
                               "first_gradient_norm": round(_grad_norm(g1), 6), "learning_rate": train.learning_rate,
                               "betas": list(train.adam_betas), "eps": train.adam_eps}
    opts = {role: c.mod(role).make_optimizer(c.side[role].model, train) for role in c.side}
    summaries = {role: model_ops.summary(c.side[role].model) for role in c.side}
    names = sorted(set(summaries["reference"]["trainable"]) &
                   set(c.in_ref_names("custom", dict.fromkeys(summaries["custom"]["trainable"]))))
    shapes = {n: torch.Size(s) for n, s in c.in_ref_names("custom", summaries["custom"]["shapes"]).items()}
    decode = _decoder(names, shapes)
    fields = []
    hyper_done = False
    bounds = TOL.AdamBound(train.adam_betas, train.adam_eps)
    n_elements = sum(shapes[n].numel() for n in names)
    eps_clip = TOL.norm_relative_error(n_elements)
    for k in range(1, n_steps + 1):
        grads = g1 if k == 1 else None
        if grads is None:
            grads, dt = c.timed(lambda: _custom_grads(c, batches[k - 1]))
            compute += dt
        rec = {}
        lr_k = model_ops.current_lr(opts["reference"][0])
        clip = TOL.clip_coefficient([g for g in grads.values() if g is not None], train.max_grad_norm)
        for role, st in c.side.items():
            before = c.in_ref_names(role, model_ops.trainable_values(st.model))
            model_ops.set_grads(st.model, c.in_side_names(role, grads))
            opt, sched = opts[role]
            after, dt = c.timed(lambda: c.mod(role).step(st.model, opt, st.ctx, train))
            compute += dt
            after = c.perturbed("step", role, c.in_ref_names(role, after))
            model_ops.step_scheduler(sched)
            update = {n: (after[n].detach() - before[n].to(after[n].device)) if n in after else None for n in names}
            state = on_side(st.model, optimizer_state, opt, st.model, list(c.in_side_names(role, dict.fromkeys(names))))
            rec[role] = {"update": update, "after": after,
                         **{k: c.in_ref_names(role, v) for k, v in state.items()}}
        ref, cus = rec["reference"], rec["custom"]
        clipped = {n: clip * grads[n].detach().cpu() for n in names if grads.get(n) is not None}
        b = bounds.step(clipped, {n: eps_clip * g.abs() for n, g in clipped.items()}, lr=lr_k,
                        wd=train.weight_decay, theta_old={n: c.initial_trainable[n] if k == 1 else rec_prev[n]
                                                          for n in clipped},
                        theta_new={n: ref["after"][n] for n in clipped})
        rec_prev = {n: ref["after"][n].detach().cpu() for n in names}
        adam_tol = {key: TOL.Tolerance(0.0, 0.0, "AdamW first-order error propagation (AdamBound): identical "
                                                 "gradients, each side's own clipping factor",
                                       bound=_flat({n: b[n][key] for n in b}, names))
                    for key in ("update", "exp_avg", "exp_avg_sq")}
        fields.append(c.fields.compare("step", f"update/step{k}", _flat(ref["update"], names),
                                       _flat(cus["update"], names),
                                       FieldSpec(tol=adam_tol["update"], axes=("element",), decode=decode,
                                                 rel_ctx=X.scale_context(c.scale_sources()))))
        for key in ("exp_avg", "exp_avg_sq", "step", "lr"):
            a, b_ = _flat(ref[key], names), _flat(cus[key], names)
            tol = adam_tol.get(key) or (EXACT if key == "step" else
                                        TOL.Tolerance(4 * TOL.unit_roundoff(torch.float64), 0.0,
                                                      "learning rate: the same schedule formula (4u of float64)"))
            fields.append(c.fields.compare("step", f"{key}/step{k}", a, b_,
                                           FieldSpec(tol=tol, axes=("element",) if key not in ("step", "lr") else
                                                     ("parameter",), decode=decode if key in ("exp_avg", "exp_avg_sq")
                                                     else (lambda idx: names[idx[-1]] if idx[-1] < len(names) else ""),
                                                     rel_ctx=X.scale_context(c.scale_sources()))))
        if not hyper_done:
            a = torch.stack([ref["hyper"][n] for n in names]) if names else torch.zeros(0, 4)
            b = torch.stack([cus["hyper"][n] for n in names]) if names else torch.zeros(0, 4)
            fields.append(c.fields.compare("step", "hyperparameters", a, b,
                                           FieldSpec(tol=EXACT, axes=("parameter", "beta1/beta2/eps/weight_decay"),
                                                     decode=lambda idx: f"{names[idx[0]]}: "
                                                     f"{['beta1', 'beta2', 'eps', 'weight_decay'][idx[1]]}"
                                                     if len(idx) == 2 and idx[0] < len(names) else str(idx))))
            hyper_done = True
    t_native = time.perf_counter()
    for role in ("reference", "custom"):
        fields += native_optimizer_fields(c, role, n_steps)
        for tag, variant in settings_variants(c.mod(role).DEFAULT_TRAIN):
            fields += native_optimizer_fields(c, role, n_steps, variant, tag)
    compute += time.perf_counter() - t_native
    t0 = time.perf_counter()
    fields += accumulation.step_fields(c)
    return StageResult("step", "ok", fields, compute, time.perf_counter() - t0)


# ------------------------------------------------------------------------------ native vs declared


def _no_decay(name: str, module_names: dict[str, str], rules: list[str]) -> bool:
    """The declared no-decay rule: "bias" (name contains bias), "norm" (owned by a *Norm module)."""
    if "bias" in rules and "bias" in name:
        return True
    if "norm" in rules and "norm" in module_names.get(name, "").lower():
        return True
    return False


def _owner_types(model: torch.nn.Module) -> dict[str, str]:
    out = {}
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            out[f"{mname}.{pname}" if mname else pname] = type(module).__name__
    return out


def _limit_trainable(model: torch.nn.Module) -> None:
    """Keep the optimizer check small on a real model: freeze all but the first tensors up to 20 M."""
    total = 0
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if total + p.numel() > MAX_NATIVE_TRAINABLE and total > 0:
            p.requires_grad_(False)
        else:
            total += p.numel()


# Settings other than a pipeline's defaults that its optimizer and schedule must honour: every schedule
# type the stage contract names, with warm-up, and a weight decay no pipeline uses by default.
SCHEDULE_TYPES = ("linear", "cosine", "constant")
NON_DEFAULT_WEIGHT_DECAY = 0.0123


def settings_variants(train: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """(tag, TrainConfig) for each schedule type other than the default one (warm-up 2 of 8 steps) and a
    non-default weight decay: the native optimizer check runs each, so code that only works at the
    defaults (a hard-coded weight decay, a schedule branch that drops its warm-up) shows."""
    out = []
    for kind in SCHEDULE_TYPES:
        if kind != train.schedule:
            out.append((f"schedule={kind}", train.replace(schedule=kind, warmup_steps=2, max_steps=8)))
    out.append((f"weight_decay={NON_DEFAULT_WEIGHT_DECAY}", train.replace(weight_decay=NON_DEFAULT_WEIGHT_DECAY)))
    return out


def native_optimizer_fields(c: Any, role: str, n_steps: int, train: TrainConfig | None = None,
                            tag: str = "") -> list:
    """Side `role`'s own optimizer + schedule (its DEFAULT_TRAIN, or the variant `train` named `tag`) vs
    an independent AdamW and formula built from its effective_config's declaration for that recipe
    (module docstring, point 2).  The adapter's `make_optimizer` gets the adapter's own model
    (`build_model`), never a synthetic one."""
    mod, st = c.mod(role), c.side[role]
    if train is None:
        train, decl = mod.DEFAULT_TRAIN, st.effective
    else:
        decl = mod.effective_config(st.ctx, train)
    opt_decl, sched_decl = decl.get("optimizer", {}), decl.get("schedule", {})
    horizon = max(train.max_steps, 2 * train.warmup_steps + 50)
    long_train = train.replace(max_steps=horizon)
    long_decl = mod.effective_config(st.ctx, long_train).get("schedule", {})
    run = on_side(mod, native_run, mod, st.ctx, train, decl, n_steps, long_train)
    names, wd = run["names"], run["weight_decay"]
    decode = _decoder(names, {n: torch.Size(s) for n, s in run["shapes"].items()})
    prefix = f"native@{role}" + (f"[{tag}]" if tag else "")
    fields = []
    for k, rec in enumerate(run["steps"], start=1):
        if role not in c.evidence.get("native_schedule", {}):
            hyp = _schedule_order(rec["got"], rec["want"], names, rec["lr"], rec["lr_next"], k)
            if hyp is not None:
                c.evidence.setdefault("native_schedule", {})[role] = hyp
        tol = TOL.Tolerance(0.0, 0.0, "AdamW first-order error propagation (AdamBound)", bound=rec["bound"])
        spec = FieldSpec(tol=tol, axes=("element",), decode=decode, check="declared",
                         side=role, rel_ctx=X.scale_context({"weight_decay": wd} if wd else {}))
        fields.append(c.fields.compare("step", f"{prefix}/update/step{k}", _flat(rec["want"], names),
                                       _flat(rec["got"], names), spec))
    kind = str(sched_decl.get("type", train.schedule))
    warm, total = int(long_decl.get("warmup_steps", 0)), int(long_decl.get("max_steps", horizon))
    want = [run["base_lr"] * lr_multiplier(str(long_decl.get("type", kind)), s, warmup_steps=warm, max_steps=total)
            for s in range(horizon)]
    fields.append(c.fields.compare("step", f"{prefix}/lr_curve", torch.tensor(want, dtype=torch.float64),
                                   torch.tensor(run["lr_curve"], dtype=torch.float64),
                                   FieldSpec(tol=TOL.Tolerance(1e-12, 1e-15, "the same formula evaluated in float64 "
                                                               "by two implementations (a few transcendental calls: "
                                                               "1e-12 relative)"),
                                             axes=("scheduler step",), check="declared", side=role)))
    fields.append(c.fields.compare("step", f"{prefix}/weight_decay",
                                   torch.tensor(run["declared_weight_decay"], dtype=torch.float64),
                                   torch.tensor(run["group_weight_decay"], dtype=torch.float64),
                                   FieldSpec(tol=EXACT, axes=("parameter",), check="declared", side=role,
                                             decode=lambda idx: names[idx[0]] if idx and idx[0] < len(names)
                                             else str(idx))))
    fields.append(c.fields.compare("step", f"{prefix}/optimizer_class", str(opt_decl.get("class", "?")).split(".")[-1],
                                   run["optimizer_class"], FieldSpec(tol=EXACT, check="declared", side=role)))
    return fields


def native_run(adapter: Any, ctx: Any, train: TrainConfig, decl: dict[str, Any], n_steps: int,
               long_train: TrainConfig) -> dict[str, Any]:
    """Runs where the adapter lives: its own model, optimizer, step and scheduler for `n_steps` steps
    on seeded synthetic gradients, next to an independent AdamW + schedule formula from `decl`; then
    its scheduler over `long_train.max_steps` steps (the LR curve).  Returns per step the side's
    update ("got"), the independent one ("want"), the AdamBound tolerance ("bound", flat) and the
    learning rates; plus names, shapes, "optimizer_class", "base_lr", "weight_decay", "lr_curve"."""
    opt_decl, sched_decl = decl.get("optimizer", {}), decl.get("schedule", {})
    torch.manual_seed(ctx.seed)
    model = adapter.build_model(ctx, train).to(ctx.device)
    _limit_trainable(model)
    params = _trainable(model)
    names = sorted(params)
    owners = _owner_types(model)
    opt, sched = adapter.make_optimizer(model, train)
    takes_scheduler = "scheduler" in inspect.signature(adapter.step).parameters
    max_norm = float(opt_decl.get("max_grad_norm", train.max_grad_norm) or 0.0)
    twin = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    rules = list(opt_decl.get("no_decay", []) or [])
    wd = float(opt_decl.get("weight_decay", 0.0))
    groups = [{"params": [twin[n] for n in names if not _no_decay(n, owners, rules)], "weight_decay": wd},
              {"params": [twin[n] for n in names if _no_decay(n, owners, rules)], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    base_lr = float(opt_decl.get("lr", train.learning_rate))
    betas = tuple(float(b) for b in opt_decl.get("betas", train.adam_betas))
    twin_opt = torch.optim.AdamW(groups, lr=base_lr, betas=betas, eps=float(opt_decl.get("eps", train.adam_eps)))
    kind = str(sched_decl.get("type", train.schedule))
    warm, total = int(sched_decl.get("warmup_steps", 0)), int(sched_decl.get("max_steps", train.max_steps))
    twin_sched = torch.optim.lr_scheduler.LambdaLR(
        twin_opt, lambda s: lr_multiplier(kind, s, warmup_steps=warm, max_steps=total))
    gen = torch.Generator(device="cpu").manual_seed(SYNTHETIC_SEED)
    bounds = TOL.AdamBound(betas, float(opt_decl.get("eps", train.adam_eps)))
    eps_clip = TOL.norm_relative_error(sum(params[n].numel() for n in names))
    steps = []
    for _ in range(n_steps):
        synth = {n: torch.randn(params[n].shape, generator=gen) for n in names}
        norm = _grad_norm(synth)
        target = 2.0 * max_norm if max_norm > 0 else 1.0
        synth = {n: g * (target / norm) for n, g in synth.items()}
        before = {n: p.detach().clone() for n, p in params.items()}
        lr_k = [float(g["lr"]) for g in twin_opt.param_groups]
        with torch.no_grad():
            for n in names:
                params[n].grad = synth[n].to(params[n].device, params[n].dtype)
                twin[n].grad = synth[n].to(twin[n].device, twin[n].dtype)
        clip = TOL.clip_coefficient(list(synth.values()), max_norm)
        if takes_scheduler:        # the adapter's own update order (clip, step, schedule) runs
            after = adapter.step(model, opt, ctx, train, scheduler=sched)
        else:
            after = adapter.step(model, opt, ctx, train)
            sched.step()
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_([twin[n] for n in names], max_norm)
        twin_before = {n: t.detach().clone() for n, t in twin.items()}
        twin_opt.step()
        twin_sched.step()
        twin_opt.zero_grad(set_to_none=True)
        got = {n: after[n].detach() - before[n] for n in names if n in after}
        want = {n: twin[n].detach() - twin_before[n] for n in names}
        clipped = {n: clip * synth[n] for n in names}
        b = bounds.step(clipped, {n: eps_clip * g.abs() for n, g in clipped.items()}, lr=lr_k[0], wd=wd,
                        theta_old=twin_before, theta_new={n: twin[n].detach() for n in names})
        steps.append({"got": got, "want": want, "lr": lr_k[0], "lr_next": float(twin_opt.param_groups[0]["lr"]),
                      "bound": _flat({n: b[n]["update"] for n in names}, names)})
    optimizer_class = type(opt).__name__
    # per parameter, the weight decay its param group applies (declared: `wd`, or 0 for the no-decay rule)
    group_wd = {n: float(g.get("weight_decay", 0.0)) for g in opt.param_groups
                for n in names for p in g["params"] if p is params[n]}
    want_wd = {n: 0.0 if _no_decay(n, owners, rules) else wd for n in names}
    # the LR curve: the side's make_optimizer on the same (its own) model, over a long horizon
    model.zero_grad(set_to_none=True)
    opt, sched = adapter.make_optimizer(model, long_train)
    lrs = []
    for _ in range(long_train.max_steps):
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()                 # no gradients: parameters stay, the scheduler's step count advances
        sched.step()
    return {"names": names, "shapes": {n: tuple(p.shape) for n, p in params.items()}, "steps": steps,
            "optimizer_class": optimizer_class, "base_lr": base_lr, "weight_decay": wd, "lr_curve": lrs,
            "group_weight_decay": [group_wd.get(n, float("nan")) for n in names],
            "declared_weight_decay": [want_wd[n] for n in names]}


def _schedule_order(got: dict, want: dict, names: list[str], lr_now: float, lr_next: float, k: int) -> dict | None:
    """Evidence that a side's update at step k used the schedule's NEXT learning rate (the scheduler
    stepped before the optimizer): AdamW's update is linear in the lr, so it equals the declared
    update times lr_next / lr_now; at an lr of 0 (warmup from zero) the declared update is 0."""
    g, w = _flat(got, names).double(), _flat(want, names).double()
    if g.shape != w.shape or torch.allclose(g, w, rtol=1e-4, atol=1e-12) or lr_next == lr_now:
        return None
    out = {"step": k, "lr_declared": lr_now, "lr_next": lr_next}
    if lr_now == 0.0 and float(w.abs().max()) == 0.0 and float(g.abs().max()) > 0.0:
        return out
    if lr_now > 0.0 and torch.allclose(g, w * (lr_next / lr_now), rtol=1e-3, atol=1e-12):
        return out
    return None
