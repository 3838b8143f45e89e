"""Alternative loss computations a pipeline may have implemented by mistake, to name the one it did.

When a side's per-position cross-entropy or its reduced loss differs from what its declaration
says, the harness recomputes the loss under a small set of plausible misreadings (no shift, the
shift reversed, a two-frame shift, the other shift scope, codebooks reversed; reductions that sum
codebooks, drop a codebook, pool tokens, count ignored labels as code 0, sum instead of mean) on the
same model outputs and reports which one reproduces the side's value.  The simplest matching
hypothesis explains the divergence ("the audio loss equals the CE of logits[t+1] against
labels[t]: the shift is reversed").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from harness.semantics.loss_oracle import PositionCE, audio_ce, text_ce
from harness.semantics.projections import IGNORE, segment_bounds
from higgs_common.conventions import LossConventions


def _pairs_ce(audio_logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
              *, keep_ignored: bool = False) -> PositionCE:
    """CE of audio_logits[rows] against labels[:, cols], written at the target positions `cols`."""
    n, c, _ = audio_logits.shape
    values = audio_logits.new_zeros((n, c), dtype=torch.float32)
    mask = torch.zeros((n, c), dtype=torch.bool, device=audio_logits.device)
    if rows.numel() == 0:
        return PositionCE(values, mask)
    tgt = labels[:, cols].T                                                    # (m, C)
    ce = F.cross_entropy(audio_logits[rows].float().reshape(-1, audio_logits.shape[-1]),
                         tgt.reshape(-1).clamp_min(0), reduction="none").reshape(tgt.shape)
    sup = tgt != IGNORE if not keep_ignored else torch.ones_like(tgt, dtype=torch.bool)
    values = values.index_put((cols,), torch.where(sup, ce, torch.zeros_like(ce)), accumulate=True)
    mask[cols] = sup
    return PositionCE(values, mask)


def _rows(starts: torch.Tensor | None, n: int, scope: str, offset: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictor rows, target cols) with target = row + offset, inside segments or the stream."""
    bounds = [(0, n)] if scope == "stream" else segment_bounds(starts, n)
    rows, cols = [], []
    for a, b in bounds:
        r = torch.arange(a, b, device=device)
        t = r + offset
        keep = (t >= a) & (t < b)
        rows.append(r[keep])
        cols.append(t[keep])
    if not rows:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    return torch.cat(rows), torch.cat(cols)


def audio_map_hypotheses(audio_logits: torch.Tensor, labels: torch.Tensor, starts: torch.Tensor | None,
                         conv: LossConventions, actual: torch.Tensor | None = None) -> dict[str, PositionCE]:
    """Per-position audio CE under the declared alignment and its usual misreadings (label smoothing
    fitted to the side's `actual` map when given)."""
    labels = labels.to(audio_logits.device)
    n = audio_logits.shape[0]
    dev = audio_logits.device
    other = "segment" if conv.audio_shift_scope == "stream" else "stream"
    sh = conv.audio_offset
    out = {"declared": audio_ce(audio_logits, labels, starts, scope=conv.audio_shift_scope, shift=sh)}
    for name, scope, offset in (("no next-token shift (logits[t] scored against labels[t], a copy task)" if sh else
                                 "a next-frame shift (logits[t] scored against labels[t+1]) where none is declared",
                                 conv.audio_shift_scope, 0 if sh else 1),
                                ("a two-frame shift (logits[t] against labels[t+2])", conv.audio_shift_scope, 2),
                                (f"the shift taken across the {other} instead of the {conv.audio_shift_scope}",
                                 other, sh)):
        rows, cols = _rows(starts, n, scope, offset, dev)
        out[name] = _pairs_ce(audio_logits, labels, rows, cols)
    rows, cols = _rows(starts, n, conv.audio_shift_scope, -1, dev)              # logits[t+1] vs labels[t]
    out["the shift reversed (logits[t+1] scored against labels[t])"] = _pairs_ce(audio_logits, labels, rows, cols)
    rows, cols = _rows(starts, n, conv.audio_shift_scope, sh, dev)
    out["codebooks in reverse order (labels of codebook C-1-c scored against logits of codebook c)"] = \
        _pairs_ce(audio_logits, labels.flip(0), rows, cols)
    eos = audio_logits.shape[-1] - 1                     # K = codebook_size + 2: BOS = K - 2, EOS = K - 1
    declared = out["declared"]
    keep = declared.mask & (labels.T != eos)
    out["the stream EOS left unsupervised (its labels masked)"] = PositionCE(declared.values * keep, keep)
    smooth = fitted_smoothing(declared, _audio_uniform(audio_logits, labels, starts, conv.audio_shift_scope, sh), actual)
    if smooth is not None:
        out[smooth[0]] = smooth[1]
    return out


def fitted_smoothing(declared: PositionCE, uniform: torch.Tensor, actual: torch.Tensor | None
                     ) -> tuple[str, PositionCE] | None:
    """Label smoothing with the epsilon that best explains `actual` (least squares), as a hypothesis map.

    torch's `cross_entropy(..., label_smoothing=e)` is (1 - e) * CE + e * U per position, U the mean
    over the classes of -log p.  `declared` is the plain CE map, `uniform` U at the same positions
    (same shape, 0 where unsupervised), `actual` the side's map (NaN where unsupervised).  None when
    no epsilon in (0, 1) is suggested; `match_map` then decides whether the fitted map reproduces it.
    """
    if actual is None or actual.shape != declared.mask.shape:
        return None
    actual = actual.to(declared.values.device).float()
    m = declared.mask & ~torch.isnan(actual)
    if not bool(m.any()):
        return None
    ce, u = declared.values.detach()[m].double(), uniform[m].double()
    d = u - ce
    denom = float((d * d).sum())
    if denom == 0.0:
        return None
    eps = float((d * (actual[m].double() - ce)).sum()) / denom
    if not 1e-4 < eps < 1.0:
        return None
    values = torch.where(declared.mask, (1.0 - eps) * declared.values.detach() + eps * uniform,
                         torch.zeros_like(uniform))
    return (f"label smoothing {eps:.3g} (cross_entropy(..., label_smoothing={eps:.3g}): the targets are not one-hot)",
            PositionCE(values, declared.mask))


def _text_uniform(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """U = -mean_v log_softmax(logits[t-1])_v at every supervised text position t (B, L), 0 elsewhere."""
    b, length = labels.shape
    out = logits.new_zeros((b, length), dtype=torch.float32)
    if length > 1:
        sup = labels[:, 1:] != IGNORE
        if bool(sup.any()):
            rows = logits[:, :-1][sup].float()                                     # (n, V)
            body = out[:, 1:].clone()
            body[sup] = -torch.log_softmax(rows, dim=-1).mean(-1)
            out = torch.cat([out[:, :1], body], dim=1)
    return out


def _audio_uniform(audio_logits: torch.Tensor, labels: torch.Tensor, starts: torch.Tensor | None,
                   scope: str, shift: int = 1) -> torch.Tensor:
    """U at every declared audio target position (N, C): rows t-shift predict frame t (oracle's alignment)."""
    n, c, _ = audio_logits.shape
    out = audio_logits.new_zeros((n, c), dtype=torch.float32)
    rows, cols = _rows(starts, n, scope, shift, audio_logits.device)
    if cols.numel():
        u = -torch.log_softmax(audio_logits[rows].float(), dim=-1).mean(-1)       # (m, C)
        out = out.index_put((cols,), u)
    return out


def text_map_hypotheses(logits: torch.Tensor, labels: torch.Tensor, actual: torch.Tensor | None = None
                        ) -> dict[str, PositionCE]:
    """Per-position text CE as declared and under its usual misreadings; with the side's `actual`
    map, also label smoothing at the epsilon fitted to it."""
    labels = labels.to(logits.device)
    out = {"declared": text_ce(logits, labels)}
    b, length = labels.shape
    for name, k in (("no next-token shift (logits[t] scored against labels[t], a copy task)", 0),
                    ("a two-token shift (logits[t] against labels[t+2])", 2)):
        values = logits.new_zeros((b, length), dtype=torch.float32)
        mask = torch.zeros((b, length), dtype=torch.bool, device=logits.device)
        tgt = labels[:, k:]
        sup = tgt != IGNORE
        if bool(sup.any()):
            src = logits[:, : length - k] if k else logits
            ce = F.cross_entropy(src[sup].float(), tgt[sup], reduction="none")
            body = values[:, k:].clone()
            body[sup] = ce
            values = torch.cat([values[:, :k], body], dim=1)
            mask[:, k:] = sup
        out[name] = PositionCE(values, mask)
    smooth = fitted_smoothing(out["declared"], _text_uniform(logits, labels), actual)   # last: fitted, not fixed
    if smooth is not None:
        out[smooth[0]] = smooth[1]
    return out


def reduced_hypotheses(text: PositionCE, audio: PositionCE | None, conv: LossConventions,
                       ignored_as_zero: PositionCE | None = None) -> dict[str, dict[str, float]]:
    """{hypothesis: {"text", "audio", "total"}} for reductions a pipeline may have written instead."""
    def audio_terms(a: PositionCE) -> dict[str, float]:
        counts = a.mask.sum(0).double()
        sums = (a.values * a.mask).sum(0).double()
        valid = counts > 0
        per = sums[valid] / counts[valid]
        out = {"codebook_mean": float(per.mean()) if bool(valid.any()) else 0.0,
               "token_mean": float(sums.sum() / counts.sum().clamp_min(1)),
               "sum over codebooks": float(per.sum()) if bool(valid.any()) else 0.0,
               "sum over tokens": float(sums.sum())}
        if int(valid.sum()) > 1:
            idx = valid.nonzero().reshape(-1)
            out["mean without the last codebook"] = float((sums[idx[:-1]] / counts[idx[:-1]]).mean())
            out["mean without the first codebook"] = float((sums[idx[1:]] / counts[idx[1:]]).mean())
        return out

    t_count = int(text.mask.sum())
    t_sum = float((text.values * text.mask).sum())
    text_vals = {"token_mean": t_sum / max(t_count, 1), "sum over tokens": t_sum}
    audio_vals = audio_terms(audio) if audio is not None and audio.mask.numel() else {"token_mean": 0.0}
    if ignored_as_zero is not None and audio is not None:
        counts = audio.mask.sum(0).double().clamp_min(1)
        sums = ignored_as_zero.values.sum(0).double()
        per = sums / counts
        audio_vals["ignored (-100) labels scored as code 0 in the sums"] = (
            float(per.mean()) if conv.audio_reduction == "codebook_mean" else float(sums.sum() / counts.sum()))
    declared_audio = audio_vals.get(conv.audio_reduction, 0.0)
    declared_text = text_vals["token_mean"]
    out: dict[str, dict[str, float]] = {}
    for name, v in audio_vals.items():
        if name != conv.audio_reduction:
            out[f"audio reduced as {name}"] = {"audio": v, "text": declared_text, "total": declared_text + v}
    out["text summed instead of averaged"] = {"text": text_vals["sum over tokens"], "audio": declared_audio,
                                              "total": text_vals["sum over tokens"] + declared_audio}
    other_total = "sum_positive" if conv.total == "sum" else "sum"
    out[f"total formed as {other_total}"] = {"text": declared_text, "audio": declared_audio,
                                             "total": declared_text + declared_audio}
    out["total = text only (audio term left out)"] = {"text": declared_text, "audio": declared_audio, "total": declared_text}
    out["total = audio only (text term left out)"] = {"text": declared_text, "audio": declared_audio, "total": declared_audio}
    out["total = mean of text and audio"] = {"text": declared_text, "audio": declared_audio,
                                             "total": (declared_text + declared_audio) / 2}
    return out


def ignored_as_zero(audio_logits: torch.Tensor, labels: torch.Tensor, starts: torch.Tensor | None,
                    conv: LossConventions) -> PositionCE:
    rows, cols = _rows(starts, audio_logits.shape[0], conv.audio_shift_scope, conv.audio_offset, audio_logits.device)
    return _pairs_ce(audio_logits, labels.to(audio_logits.device), rows, cols, keep_ignored=True)


def _same_map(want: torch.Tensor, actual: torch.Tensor, rtol: float, atol: float) -> bool:
    if want.shape != actual.shape:
        return False
    actual = actual.to(want.device)
    if not torch.equal(torch.isnan(want), torch.isnan(actual)):
        return False
    both = ~torch.isnan(want)
    return bool(both.any()) and bool(torch.allclose(want[both], actual[both].float(), rtol=rtol, atol=atol))


def match_map(actual: torch.Tensor | None, hypotheses: dict[str, PositionCE], *, rtol: float = 1e-4,
              atol: float = 1e-5) -> str | None:
    """The first hypothesis (in order) whose NaN pattern and values equal `actual`, provided `actual`
    is NOT the declared map and the hypothesis is distinguishable from it on these outputs."""
    if actual is None or "declared" not in hypotheses:
        return None
    declared = hypotheses["declared"].nan_map()
    if _same_map(declared, actual, rtol, atol):
        return None
    for name, h in hypotheses.items():
        if name == "declared":
            continue
        want = h.nan_map()
        if _same_map(declared, want, rtol, atol):
            continue                 # indistinguishable from the declared computation here
        if _same_map(want, actual, rtol, atol):
            return name
    return None


def match_terms(actual: dict[str, float], hypotheses: dict[str, dict[str, float]], declared: dict[str, float],
                *, rtol: float = 1e-4) -> dict[str, str]:
    """For each of text / audio / total whose value is NOT the declared one: the first hypothesis that
    reproduces it (and differs from the declared value)."""
    def close(a: float, b: float) -> bool:
        return abs(a - b) <= rtol * max(abs(b), 1e-12) + 1e-7

    found: dict[str, str] = {}
    for term in ("audio", "text", "total"):
        got = actual.get(term)
        if got is None or (term in declared and close(got, declared[term])):
            continue
        for name, vals in hypotheses.items():
            v = vals.get(term)
            if v is not None and close(got, v) and not (term in declared and close(v, declared[term])):
                found[term] = name
                break
    return found


def describe(side: str, term: str, hypothesis: str) -> str:
    return f"the {side} {term} loss equals the declared one computed with {hypothesis}"


def loss_evidence(outputs: Any, batch: Any, conv: LossConventions, lb: Any) -> dict[str, Any]:
    """Which hypotheses reproduce one side's per-position maps and reduced terms (None: none does)."""
    labels = getattr(batch, "label_audio_ids", None)
    starts = getattr(batch, "audio_out_ids_start", None)
    out: dict[str, Any] = {}
    with torch.no_grad():
        if outputs.expanded_labels is not None:
            tmaps = text_map_hypotheses(outputs.logits.detach(), outputs.expanded_labels, lb.text_token_ce)
            out["text_map"] = match_map(lb.text_token_ce, tmaps)
        else:        # the model call got no text labels: only "nothing supervised" is declared
            tmaps = {"declared": text_ce(outputs.logits.detach(), None)}
            out["text_map"] = None
        amaps = None
        if outputs.audio_logits is not None and labels is not None and labels.numel():
            amaps = audio_map_hypotheses(outputs.audio_logits.detach(), labels, starts, conv, lb.audio_token_ce)
            out["audio_map"] = match_map(lb.audio_token_ce, amaps)
        # reduced terms: computed from the side's own maps where it gives them (so a reduction bug is
        # separated from an alignment bug), else from the declared maps
        t = tmaps["declared"]
        a = amaps["declared"] if amaps else None
        zero = ignored_as_zero(outputs.audio_logits.detach(), labels, starts, conv) if amaps else None
        hyps = reduced_hypotheses(t, a, conv, zero)
        if amaps:   # an alignment mistake, reduced the declared way
            for name, h in amaps.items():
                if name != "declared":
                    hyps[name] = {"audio": _reduce_audio(h, conv)}
        actual = {"text": float(lb.text), "audio": float(lb.audio), "total": float(lb.total.detach())}
        from harness.semantics.loss_oracle import reduce
        red = reduce(t, a, conv)
        declared = {"text": float(red.text), "audio": float(red.audio), "total": float(red.total)}
        out["terms"] = match_terms(actual, hyps, declared)
    return out


def _reduce_audio(a: PositionCE, conv: LossConventions) -> float:
    counts = a.mask.sum(0).double()
    sums = (a.values * a.mask).sum(0).double()
    valid = counts > 0
    if not bool(valid.any()):
        return 0.0
    if conv.audio_reduction == "codebook_mean":
        return float((sums[valid] / counts[valid]).mean())
    return float(sums.sum() / counts.sum())
