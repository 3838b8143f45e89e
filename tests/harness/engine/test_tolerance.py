"""Derived tolerances: sound for correct implementations, tight enough for real bugs."""

from __future__ import annotations

import torch

from harness.engine import tolerance as TOL


def _run_adamw(params0, grads, *, foreach: bool, betas=(0.9, 0.999), wd=0.01, lr=1e-3, max_norm=0.5, reverse=False):
    params = [p.clone().requires_grad_(True) for p in params0]
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, eps=1e-8, weight_decay=wd, foreach=foreach)
    updates, states = [], []
    for g in grads:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        order = params[::-1] if reverse else params
        torch.nn.utils.clip_grad_norm_(order, max_norm)
        before = [p.detach().clone() for p in params]
        opt.step()
        updates.append([p.detach() - b for p, b in zip(params, before)])
        states.append([opt.state[p]["exp_avg"].clone() for p in params])
    return params, updates, states


def _grads(steps: int, seed: int = 0) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(steps):
        sign = -1 if k % 2 else 1                               # sign flips make m nearly cancel
        out.append([sign * torch.randn(64, 32, generator=g) * 1e-2 + torch.randn(64, 32, generator=g) * 1e-4,
                    torch.randn(128, generator=g) * 1e-9])      # |g| ~ eps: the amplified regime
    return out


def test_adam_bound_holds_for_two_correct_implementations():
    params0 = [torch.randn(64, 32) * 0.02, torch.zeros(128)]
    grads = _grads(5)
    _, ua, _ = _run_adamw(params0, grads, foreach=True)
    pb, ub, _ = _run_adamw(params0, grads, foreach=False, reverse=True)
    bound = TOL.AdamBound((0.9, 0.999), 1e-8)
    theta = [p.clone() for p in params0]
    for k, g in enumerate(grads):
        clip = TOL.clip_coefficient(g, 0.5)
        clipped = {str(i): clip * gi for i, gi in enumerate(g)}
        eps_c = TOL.norm_relative_error(sum(x.numel() for x in g))
        new = [t + u for t, u in zip(theta, ua[k])]
        b = bound.step(clipped, {i: eps_c * x.abs() for i, x in clipped.items()}, lr=1e-3, wd=0.01,
                       theta_old={str(i): t for i, t in enumerate(theta)},
                       theta_new={str(i): t for i, t in enumerate(new)})
        for i in range(2):
            assert bool(((ua[k][i] - ub[k][i]).abs() <= b[str(i)]["update"]).all()), (k, i)
        theta = new


def test_adam_bound_catches_a_wrong_beta2_and_a_halved_gradient():
    params0 = [torch.randn(64, 32) * 0.02, torch.zeros(128)]
    grads = _grads(3)
    _, ua, _ = _run_adamw(params0, grads, foreach=True)
    _, ub, _ = _run_adamw(params0, grads, foreach=True, betas=(0.9, 0.9))
    _, uc, sc = _run_adamw(params0, [[x / 2 for x in g] for g in grads], foreach=True, max_norm=0.0)
    bound = TOL.AdamBound((0.9, 0.999), 1e-8)
    theta = [p.clone() for p in params0]
    caught_beta = False
    for k, g in enumerate(grads):
        clip = TOL.clip_coefficient(g, 0.5)
        clipped = {str(i): clip * gi for i, gi in enumerate(g)}
        new = [t + u for t, u in zip(theta, ua[k])]
        b = bound.step(clipped, {i: 1e-6 * x.abs() for i, x in clipped.items()}, lr=1e-3, wd=0.01,
                       theta_old={str(i): t for i, t in enumerate(theta)}, theta_new={str(i): t for i, t in enumerate(new)})
        caught_beta |= bool(((ua[k][0] - ub[k][0]).abs() > b["0"]["update"]).any())
        theta = new
    assert caught_beta


def test_cancelling_reduction_scales_with_the_field_and_length():
    t = TOL.cancelling_reduction(400, scale=2.0)
    assert t.atol == t.rtol * 2.0 and abs(t.rtol - 8 * 20 * 2 ** -24) < 1e-12
    assert TOL.positive_sum(100).rtol < TOL.positive_sum(10_000).rtol


def test_first_adamw_step_bound_is_capped_by_the_update_range():
    g = torch.tensor([1e-9, 1e-3, 0.0])
    tol = TOL.adamw_update_bound(g, torch.full_like(g, 1e-9), lr=1e-3, eps=1e-8, theta_new=torch.zeros(3))
    assert 5e-5 < float(tol.bound[0]) <= 2 * 1e-3 * 3.17 + 1e-12   # |g| ~ eps: amplified, never past the range
    assert float(tol.bound[1]) < 1e-8                              # |g| >> eps: a 1e-6 relative change barely moves it
