"""Gradient accumulation and DDP: the custom side's own micro-step code against one big batch.

Runs when the custom adapter exports the optional `ddp_run` hook (`higgs_common.stages`) and
declares `loss.accumulation == "global_token_mean"` (then k micro-batches of b, on one or on several
ranks, must give the gradients of one batch of k*b):

* in one process: the global batch as k micro-batches of one sample vs one batch (always);
* under DDP: `--ddp-world-size` ranks x `--ddp-grad-accum` micro-batches (NCCL on CUDA with enough
  GPUs, gloo processes otherwise) vs one process, for `--ddp-steps` optimizer steps.

Backward-stage fields: `train_path_grad/<param>` (the hook's single-process, one-micro-batch
gradients against the side's own stage-contract forward/loss/backward on the same global batch:
code only the training loop runs, e.g. the gathered text head, must compute the declared loss),
`accum_grad/<param>` and `ddp_rank{r}_grad/<param>` (step-1 gradients after
the all-reduce).  Step-stage fields: `ddp_equal_rank{r}_param/<param>` (rank r bit-identical to
rank 0 after step 1), `ddp_rank{r}_param/<param>` (vs one process, within the tolerance propagated
through AdamW's first update: `harness.engine.tolerance.adamw_update_bound`) and
`{accum,ddp_rank{r}}_loss/per_step` (the global loss of every step, the later ones within the
first-order effect of the admissible parameter differences).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from harness.engine import model_ops
from harness.engine import tolerance as TOL
from harness.engine.fields import FieldSpec
from harness.explain import context as X


def _global_items(c: Any) -> list:
    world, accum = max(c.options.ddp_world_size, 1), max(2, c.options.ddp_grad_accum)
    items = c.input_for("custom", "items")
    n = len(items)
    # rank r takes the contiguous shard r; sample (r + m * world) % n goes to rank r's micro-batch m,
    # so ranks see different samples whenever there are at least 2.
    return [items[(r + m * world) % n] for r in range(world) for m in range(accum)]


def _tokens(c: Any, items: list) -> int:
    return int(sum(int(it.sample.input_ids.numel()) for it in items))


def backward_fields(c: Any) -> tuple[list, float]:
    """(fields, seconds of pipeline compute) for the backward stage; stores runs for the step stage."""
    mod = c.mod("custom")
    c.accum_runs = None
    hook = getattr(mod, "ddp_run", None)
    conv = c.conv["custom"].loss
    if hook is None or conv.accumulation != "global_token_mean":
        c.evidence["accumulation"] = {"skipped": "custom adapter has no ddp_run hook" if hook is None else
                                      f"declared accumulation {conv.accumulation!r} (micro-batch means are not "
                                      "expected to equal one batch)"}
        return [], 0.0
    state = c.side["custom"]
    items = _global_items(c)
    world = c.options.ddp_world_size
    steps = max(1, c.options.ddp_steps)
    t0 = time.perf_counter()
    kw = dict(steps=steps, init_state=c.in_side_names("custom", c.initial_trainable), grad_noise=c.options.grad_noise)
    c.say(f"backward: gradient accumulation, {len(items)} micro-batches of 1 vs one batch of {len(items)}")
    single = hook(state.ctx, c.train, items, world_size=1, grad_accum=1, **kw)[0]
    accum = hook(state.ctx, c.train, items, world_size=1, grad_accum=len(items), **kw)[0]
    runs = {"accum": [accum]}
    backend = None
    if world >= 2:
        on_gpus = state.ctx.device.type == "cuda" and torch.cuda.device_count() >= world
        backend = f"NCCL on {world} GPUs ({torch.cuda.get_device_name(0)})" if on_gpus else f"gloo, {world} CPU processes"
        acc = max(2, c.options.ddp_grad_accum)
        c.say(f"backward: DDP check, {backend}, {acc} micro-batches per rank, {steps} steps")
        with _models_off_gpu(c, on_gpus):
            runs["ddp"] = hook(state.ctx, c.train, items, world_size=world, grad_accum=acc, **kw)
    compute = time.perf_counter() - t0
    c.accum_runs = (single, runs, items)
    n_tokens = _tokens(c, items)
    spec_for = _grad_spec(c, n_tokens)
    fields = c.fields.compare_mapping("backward", "accum_grad", single.grads, accum.grads, spec_for)
    # The training path (the hook's loop: its own loss reduction, the speed switches' gathered text
    # head) against the side's stage-contract forward/loss/backward on the same global batch.
    contract, contract_s = contract_gradients(c, "custom", items)
    compute += contract_s
    fields = c.fields.compare_mapping("backward", "train_path_grad", contract, single.grads, spec_for) + fields
    unsynced = []
    for r, res in enumerate(runs.get("ddp", [])):
        rf = c.fields.compare_mapping("backward", f"ddp_rank{r}_grad", single.grads, res.grads, spec_for)
        if any(f.unexpected for f in rf):
            unsynced.append(r)
        fields += rf
    ranks = runs.get("ddp", [])
    ranks_agree = all(_same(ranks[0].grads, g.grads) for g in ranks[1:]) if ranks else None
    accum_diverged = any(f.unexpected for f in fields if f.field.startswith("accum_grad/"))
    c.evidence["accumulation"] = {"micro_batches": len(items), "accum_diverged": accum_diverged,
                                  "grad_ratio": _ratio(single.grads, accum.grads)}
    if accum_diverged:
        c.evidence["accumulation"]["lone_micro_batch"] = c.gather(
            "which micro-batch the accumulated gradient is", lambda: _lone_micro_batch(c, items, accum.grads))
    if any(f.unexpected for f in fields if f.field.startswith("train_path_grad/")):
        c.evidence["train_path"] = {"grad_ratio": _ratio(contract, single.grads),
                                    "cosine": X.gradient_cosine(contract, single.grads), "samples": len(items)}
    if ranks:
        c.evidence["ddp"] = {"world_size": world, "ranks_agree": ranks_agree, "unsynced_ranks": unsynced,
                             "backend": backend, "grad_accum": max(2, c.options.ddp_grad_accum), "steps": steps,
                             "global_batch": len(items), "grad_ratio": _ratio(single.grads, ranks[0].grads),
                             "rank_ratio": _ratio(ranks[0].grads, ranks[-1].grads)}
    return fields, compute


def contract_gradients(c: Any, role: str, items: list) -> tuple[dict[str, torch.Tensor | None], float]:
    """`role`'s stage-contract collate -> forward -> loss -> backward on `items` as ONE batch, on the
    side's model (trainables at the harness's initial values); gradients on the CPU, and seconds."""
    from harness.engine.runner import to_device

    st, mod = c.side[role], c.mod(role)
    t0 = time.perf_counter()
    batch = to_device(mod.collate(items, st.ctx), st.ctx.device)
    model_ops.zero_grad(st.model)
    grads = mod.backward(mod.loss(mod.forward(st.model, batch, st.ctx), batch, st.ctx), st.model)
    model_ops.zero_grad(st.model)
    return {k: (None if v is None else v.detach().cpu()) for k, v in grads.items()}, time.perf_counter() - t0


def _grad_tol(c: Any, n_tokens: int, g: torch.Tensor | None) -> TOL.Tolerance:
    """One gradient of the single-process run vs a re-batched one (`TOL.rebatched_network`)."""
    scale = float(g.abs().max()) if isinstance(g, torch.Tensor) and g.numel() else 0.0
    text = getattr(c.model_config, "text_config", c.model_config)
    width = max(int(getattr(text, "hidden_size", 1)), int(getattr(text, "intermediate_size", 1)))
    return TOL.rebatched_network(n_tokens, int(getattr(text, "num_hidden_layers", 1)), width, scale)


def _grad_spec(c: Any, n_tokens: int):
    def spec_for(name: str, value: Any) -> FieldSpec:
        return FieldSpec(tol=_grad_tol(c, n_tokens, value), axes=("out", "in"),
                         rel_ctx=X.scale_context(c.scale_sources()))
    return spec_for


def step_fields(c: Any) -> list:
    """Parameters after step 1 and the loss of every step, of the runs `backward_fields` made."""
    if getattr(c, "accum_runs", None) is None:
        return []
    single, runs, items = c.accum_runs
    n_tokens = _tokens(c, items)
    lr, eps, betas = c.train.learning_rate, c.train.adam_eps, c.train.adam_betas
    clip = TOL.clip_coefficient([g for g in single.grads.values() if g is not None], c.train.max_grad_norm)
    fields: list = []
    step_unsynced = []

    def param_spec(name: str, value: Any) -> FieldSpec:
        g = single.grads.get(name)
        if g is None or not isinstance(value, torch.Tensor):
            return FieldSpec(tol=TOL.Tolerance(0.0, 0.0, "exact"))
        bound = TOL.elementwise_grad_bound(g, _grad_tol(c, n_tokens, g))
        return FieldSpec(tol=TOL.adamw_update_bound(g, bound, lr=lr, eps=eps, theta_new=value, betas=betas, clip=clip),
                         axes=("out", "in"))

    first_order = _first_order_loss_bound(c, single, n_tokens, lr, eps, betas, clip)
    for kind, results in (("accum", runs.get("accum", [])), ("ddp", runs.get("ddp", []))):
        for r, res in enumerate(results):
            prefix = "accum" if kind == "accum" else f"ddp_rank{r}"
            pf = c.fields.compare_mapping("step", f"{prefix}_param", single.params, res.params, param_spec)
            loss_tol = TOL.positive_sum(n_tokens)
            per_step = torch.tensor([loss_tol.rtol * abs(float(v)) + k * first_order
                                     for k, v in enumerate(single.losses.tolist())], dtype=torch.float64)
            lf = c.fields.compare("step", f"{prefix}_loss/per_step", single.losses, res.losses,
                                  FieldSpec(tol=TOL.Tolerance(0.0, 0.0, "per step: positive-sum bound + (step-1) x "
                                                              "first-order effect of the admissible parameter "
                                                              "differences", bound=per_step), axes=("step",)))
            rank_fields = pf + [lf]
            if kind == "ddp" and r > 0:
                rank_fields += c.fields.compare_mapping(
                    "step", f"ddp_equal_rank{r}_param", results[0].params, res.params,
                    lambda n, v: FieldSpec(tol=TOL.Tolerance(0.0, 0.0, "synchronised ranks apply the same "
                                                                       "all-reduced gradient: bit-identical")))
            if kind == "ddp" and any(f.unexpected for f in rank_fields):
                step_unsynced.append(r)
            fields += rank_fields
    ev = c.evidence.setdefault("ddp", {}) if runs.get("ddp") else {}
    if runs.get("ddp"):
        ev["step_unsynced_ranks"] = step_unsynced
        ev["single_losses"] = [round(float(v), 6) for v in single.losses]
        ev["rank0_losses"] = [round(float(v), 6) for v in runs["ddp"][0].losses]
    return fields


def _first_order_loss_bound(c: Any, single: Any, n_tokens: int, lr: float, eps: float,
                            betas: tuple[float, float], clip: float) -> float:
    """sum_i |g_i| * (admissible |Δθ_i| after step 1): how far the next loss may move (first order)."""
    total = 0.0
    for name, g in single.grads.items():
        if g is None:
            continue
        bound = TOL.adamw_update_bound(g, TOL.elementwise_grad_bound(g, _grad_tol(c, n_tokens, g)), lr=lr, eps=eps, betas=betas,
                                       clip=clip, theta_new=single.params[name]).bound
        total += float((g.abs().double() * bound.double()).sum())
    return total


def _same(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if (x is None) != (y is None):
            return False
        if x is not None and not torch.allclose(x.float(), y.float(), rtol=1e-4, atol=1e-7):
            return False
    return True


class _models_off_gpu:
    """Park both sides' models on the CPU while DDP workers need the GPUs' memory (full model)."""

    def __init__(self, c: Any, on: bool) -> None:
        self.c, self.on, self.devices = c, on, {}

    def __enter__(self) -> None:
        if not self.on:
            return
        for name, st in self.c.side.items():
            if st.model is not None:
                self.devices[name] = model_ops.device_of(st.model)
                model_ops.move(st.model, "cpu")
        torch.cuda.empty_cache()

    def __exit__(self, *exc: Any) -> None:
        for name, dev in self.devices.items():
            model_ops.move(self.c.side[name].model, dev)


def _lone_micro_batch(c: Any, items: list, accum: dict) -> dict | None:
    """The micro-batch (first or last sample of the global batch) whose gradient ALONE points the way
    the accumulated one does (cosine > 0.9999): the others were lost (zero_grad inside the loop,
    gradients overwritten).  None when neither does."""
    for i in (len(items) - 1, 0):
        lone, _s = contract_gradients(c, "custom", [items[i]])
        cos = X.gradient_cosine(lone, accum)
        if cos is not None and cos > 0.9999:
            return {"index": i, "of": len(items), "cosine": cos}
    return None


def _ratio(a: dict, b: dict) -> float | None:
    r = X.gradient_ratio(a, b)
    return round(r, 6) if r is not None else None
