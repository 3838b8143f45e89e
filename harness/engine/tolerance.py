"""Admissible differences, derived from the computation that produced a value.

Every float comparison in the harness asks: how far apart may two correct computations of this
value be?  The answer depends on the dtype (unit roundoff u), on how many terms were summed into
each element (reduction length n) and on how much the operation amplifies its inputs' differences.
Nothing here is tuned to what made one machine pass; each rule says what it follows.

Rules (u = unit roundoff of the dtype: 2^-24 for float32, 2^-8 for bfloat16):

* **Same operations, same inputs** (forward logits of two models with identical weights on the same
  batch): torch.testing's per-dtype defaults (float32: rtol 1.3e-6 ~ 11u, atol 1e-5), which allow a
  different but equivalent kernel choice.
* **Sums of non-negative terms** (cross-entropy losses over n supervised tokens): the classical
  bound for recursive summation, |fl(s) - s| <= gamma_{n-1} |s| with gamma_k = k u / (1 - k u)
  (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 4.4), plus the
  log-sum-exp of each term (log2(V) + 8 operations, V classes): rtol = (n + log2(V) + 8) u.
* **Reductions with cancellation** (gradients, all-reduced sums, per-position CE computed by two
  implementations): the probabilistic bound of Higham & Mary (SIAM J. Sci. Comput. 41(5), 2019),
  |error| <= lambda sqrt(n) u sum|x_i| with probability >= 1 - 2 exp(-lambda^2 / 2); lambda = 8 makes
  a false alarm per element < 1e-13.  sum|x_i| is not observable per element, so it is bounded by
  the field's largest magnitude: atol = lambda sqrt(n) u max|reference|, rtol = lambda sqrt(n) u.
* **Operations that amplify** their inputs' differences (AdamW's first update, u = lr g / (|g| +
  eps), whose derivative lr eps / (|g| + eps)^2 is up to lr / eps where |g| ~ 0): first-order error
  propagation of the admissible input difference through the operation's sensitivity, capped by
  the operation's range (`adamw_update_bound`); or the comparison feeds both sides the same inputs.
* **Optimizer state and updates** over several AdamW steps of two implementations fed the same
  gradients (up to each side's clipping factor, whose relative error is that of a 2-norm):
  first-order propagation through AdamW's recurrences (`AdamBound`), including the amplification
  where the first moment has nearly cancelled, plus the rounding of the stored parameters.

A `Tolerance` is either scalar (rtol, atol) or carries an element-wise `bound` tensor (absolute)
added to atol; the diff engine (`harness.engine.diff.diff_tensors`) applies
|custom - reference| <= atol + bound + rtol |reference|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LAMBDA = 8.0
_U = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def unit_roundoff(dtype: torch.dtype) -> float:
    """u for `dtype` (float32's for integer or unknown dtypes)."""
    return _U.get(dtype, _U[torch.float32])


@dataclass(frozen=True)
class Tolerance:
    """rtol, atol (scalars) and an optional element-wise absolute `bound`; `rule` says where it comes from."""

    rtol: float
    atol: float
    rule: str
    bound: torch.Tensor | None = None

    def to_json(self) -> dict:
        return {"rtol": self.rtol, "atol": self.atol, "rule": self.rule,
                "elementwise_bound": self.bound is not None}


def same_computation(dtype: torch.dtype) -> Tolerance:
    """torch.testing.assert_close's defaults for `dtype` (same operations on the same inputs)."""
    table = {torch.float16: (1e-3, 1e-5), torch.bfloat16: (1.6e-2, 1e-5), torch.float32: (1.3e-6, 1e-5),
             torch.float64: (1e-7, 1e-7)}
    rtol, atol = table.get(dtype, (1.6e-2, 1e-5))
    return Tolerance(rtol, atol, f"same computation ({dtype}): torch.testing defaults")


def positive_sum(n_terms: int, dtype: torch.dtype = torch.float32, vocab: int = 2) -> Tolerance:
    """A mean/sum of n non-negative cross-entropy terms over `vocab` classes, two implementations."""
    u = unit_roundoff(dtype)
    k = max(n_terms, 1) + math.log2(max(vocab, 2)) + 8
    gamma = k * u / (1 - k * u)
    return Tolerance(gamma, 0.0, f"sum of {n_terms} non-negative terms: gamma_(n+log2 V+8), V={vocab}")


def cancelling_reduction(n_terms: int, scale: float, dtype: torch.dtype = torch.float32) -> Tolerance:
    """Elements that are sums of n terms of either sign (gradients, all-reduced sums)."""
    u = unit_roundoff(dtype)
    r = LAMBDA * math.sqrt(max(n_terms, 1)) * u
    return Tolerance(r, r * float(scale), f"reduction of {n_terms} terms with cancellation: "
                                          f"lambda sqrt(n) u, lambda={LAMBDA:g}, scaled by max|value|")


MATMULS_PER_LAYER = 4   # attention q/k/v (one input), attention output, MLP gate/up (one input), MLP down


def rebatched_network(n_terms: int, num_layers: int, width: int, scale: float,
                      dtype: torch.dtype = torch.float32) -> Tolerance:
    """Gradients of one network evaluated on differently shaped batches (gradient accumulation,
    DDP ranks vs one process): every matmul of the forward and the backward may reduce in another
    order (kernels are chosen by shape), not only the final reduction over the n tokens.

    Each of the 2 x `MATMULS_PER_LAYER` x num_layers sequential matmuls (forward and backward) adds
    about sqrt(width) u relative error, the final reduction sqrt(n) u; independent roundings add in
    quadrature: lambda u sqrt(n + 2 * 4 * num_layers * width), scaled by max|value| (Higham ch. 3,
    probabilistic bound).  `width` is the widest inner dimension (hidden or intermediate size).
    """
    u = unit_roundoff(dtype)
    depth = 2 * MATMULS_PER_LAYER * max(num_layers, 1)
    r = LAMBDA * math.sqrt(max(n_terms, 1) + depth * max(width, 1)) * u
    return Tolerance(r, r * float(scale),
                     f"same network on re-shaped batches: lambda u sqrt(n + 2*{MATMULS_PER_LAYER}*L*width), n={n_terms}, "
                     f"L={num_layers}, width={width}, lambda={LAMBDA:g}, scaled by max|value|")


def parameter_update(theta_new: torch.Tensor, dtype: torch.dtype = torch.float32) -> Tolerance:
    """Δθ of two optimizer implementations fed identical inputs (element-wise rounding bound)."""
    u = unit_roundoff(dtype)
    return Tolerance(16 * u, 0.0, "parameter update: 16u of |Δθ| + 2u |θ_new| (stored-parameter rounding)",
                     bound=2 * u * theta_new.detach().abs().float())


def clip_coefficient(grads: list[torch.Tensor], max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_'s factor min(1, max_norm / (total_norm + 1e-6)) (1 when off)."""
    if not max_norm or max_norm <= 0:
        return 1.0
    total = math.sqrt(sum(float(g.detach().double().pow(2).sum()) for g in grads))
    return min(1.0, max_norm / (total + 1e-6))


def norm_relative_error(n_elements: int, dtype: torch.dtype = torch.float32) -> float:
    """Relative error of a computed 2-norm of n elements: torch reduces with cascade (pairwise-style)
    summation, error <= (log2 n + 1) u (Higham, eq. 4.6), plus the square root (u/2) and the
    squares (u): (log2 n + 3) u."""
    return (math.log2(max(n_elements, 2)) + 3) * unit_roundoff(dtype)


class AdamBound:
    """Element-wise admissible differences of AdamW's state and update over several steps.

    Two implementations of AdamW (torch.optim.AdamW semantics: decoupled weight decay
    θ <- θ (1 - lr wd), m <- β1 m + (1 - β1) g, v <- β2 v + (1 - β2) g², bias corrections
    bc1 = 1 - β1^k, bc2 = 1 - β2^k, θ <- θ - lr m̂ / (sqrt(v̂) + eps)) are fed gradients that may differ
    by `grad_err` (absolute, per element: e.g. the relative error of each side's clipping factor,
    or a reduction-order tolerance).  First-order error propagation through the recurrences, with
    the rounding of each operation (3 per state update, 8 in the update) and the stored parameters
    (2u |θ|), gives per step:

        δm_k = β1 δm_{k-1} + (1-β1) grad_err + 3u M_k         (M_k: the same EMA of |g|, no cancellation)
        δv_k = β2 δv_{k-1} + (1-β2) 2|g| grad_err + 3u v_k
        δΔθ  = lr [δm_k / bc1 / (sqrt(v̂)+eps) + |m̂| δsqrt(v̂) / (sqrt(v̂)+eps)^2] + 8u |Δθ| + 2u |θ_new|,
               δsqrt(v̂) = min(δv̂ / (2 sqrt(v̂)), sqrt(δv̂)),

    the update difference capped by the update's range 2 lr max(1, (1-β1)/sqrt(1-β2)) (Kingma & Ba,
    2015, sec. 2.1) plus the weight-decay term.  The M_k term is what makes an element whose m has
    nearly cancelled (gradient sign flips) legitimately sensitive.
    """

    def __init__(self, betas: tuple[float, float], eps: float, dtype: torch.dtype = torch.float32) -> None:
        self.b1, self.b2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.u = unit_roundoff(dtype)
        self.k = 0
        self.state: dict[str, dict[str, torch.Tensor]] = {}

    def step(self, grads: dict[str, torch.Tensor], grad_err: dict[str, torch.Tensor], *, lr: float, wd: float,
             theta_old: dict[str, torch.Tensor], theta_new: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """Advance one step with the (clipped) gradients both sides stepped; returns per name the
        bounds {"update", "exp_avg", "exp_avg_sq"} (float32 tensors shaped like the parameter)."""
        self.k += 1
        b1, b2, u = self.b1, self.b2, self.u
        bc1, bc2 = 1 - b1 ** self.k, 1 - b2 ** self.k
        cap_ratio = max(1.0, (1 - b1) / math.sqrt(1 - b2))
        out = {}
        for name, g in grads.items():
            g = g.detach().double().cpu()
            err = grad_err[name].detach().double().cpu()
            st = self.state.setdefault(name, {k: torch.zeros_like(g) for k in ("m", "v", "M", "dm", "dv")})
            st["m"] = b1 * st["m"] + (1 - b1) * g
            st["v"] = b2 * st["v"] + (1 - b2) * g * g
            st["M"] = b1 * st["M"] + (1 - b1) * g.abs()
            st["dm"] = b1 * st["dm"] + (1 - b1) * err + 3 * u * st["M"]
            st["dv"] = b2 * st["dv"] + (1 - b2) * 2 * g.abs() * err + 3 * u * st["v"]
            m_hat, v_hat = st["m"] / bc1, st["v"] / bc2
            sq = v_hat.sqrt()
            dv_hat = st["dv"] / bc2
            dsq = torch.minimum(dv_hat / (2 * sq).clamp_min(1e-300), dv_hat.sqrt())
            denom = sq + self.eps
            d_update = lr * (st["dm"] / bc1 / denom + m_hat.abs() * dsq / denom ** 2)
            old = theta_old[name].detach().double().cpu()
            new = theta_new[name].detach().double().cpu()
            d_update = torch.minimum(d_update, torch.full_like(d_update, 2 * lr * cap_ratio)) + lr * wd * old.abs() * u
            update = (new - old).abs()
            bound = d_update + 8 * u * update + 2 * u * new.abs()
            out[name] = {"update": bound.float(), "exp_avg": st["dm"].float(), "exp_avg_sq": st["dv"].float()}
        return out


def adamw_update_bound(grad: torch.Tensor, grad_bound: torch.Tensor, *, lr: float, eps: float,
                       theta_new: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), clip: float = 1.0,
                       dtype: torch.dtype = torch.float32) -> Tolerance:
    """Admissible parameter difference after ONE AdamW step from gradients that may differ by
    `grad_bound` (absolute, per element), clipped by the factor `clip` (`AdamBound` with k = 1).

    At step 1, m̂ = g and v̂ = g², so the update lr g / (|g| + eps) has derivative lr eps / (|g| + eps)^2:
    near-zero gradients (|g| ~ eps) amplify their differences up to lr / eps; the bound follows that
    through the recurrences and is capped by the update's range (so it never exceeds 2 lr there).
    """
    theta_old = theta_new.detach().double()          # only |θ| enters, through rounding terms
    bound = AdamBound(betas, eps, dtype).step({"p": clip * grad.detach()},
                                             {"p": clip * grad_bound.detach() + norm_relative_error(grad.numel())
                                              * clip * grad.detach().abs()},
                                             lr=lr, wd=0.0, theta_old={"p": theta_old}, theta_new={"p": theta_new})
    return Tolerance(0.0, 0.0, "one AdamW step: first-order propagation of the gradient tolerance through "
                               "m, v and the update (AdamBound), capped by the update's range",
                     bound=bound["p"]["update"])


def elementwise_grad_bound(reference: torch.Tensor, tol: Tolerance) -> torch.Tensor:
    """The absolute admissible difference per element of a gradient compared under `tol`."""
    return tol.atol + tol.rtol * reference.detach().abs().float()


def cross_entropy(vocab: int, max_abs_logit: float, n_terms: int = 1, dtype: torch.dtype = torch.float32) -> Tolerance:
    """Cross-entropy over `vocab` classes computed by two implementations, averaged over n_terms.

    CE = logsumexp(z) - z_y: the log-sum-exp of V terms carries about (log2 V + 4) rounding errors,
    each relative to |lse| + |z_y| <= 2 max|z| + ln V, so atol = (log2 V + 4) u (2 max|z| + ln V);
    a mean of n such terms adds the positive-sum bound gamma_n relative (see `positive_sum`).
    """
    u = unit_roundoff(dtype)
    k = math.log2(max(vocab, 2)) + 4
    atol = k * u * (2 * float(max_abs_logit) + math.log(max(vocab, 2)))
    gamma = max(n_terms, 1) * u / (1 - max(n_terms, 1) * u)
    return Tolerance(k * u + gamma, atol, f"cross-entropy over V={vocab} (log2 V + 4 roundings of |lse|+|z_y|), "
                                          f"mean of {n_terms}")
