"""What a person sees in training, read off one trace: the symptoms a report opens with.

Each check looks at one trace alone (no second run needed) and describes a symptom the way a user
would meet it in their logs, with the mechanism and the code location that produced it:

- a loss term that is exactly 0.0, NaN/Inf, constant over every recorded step, or detached (the
  back-propagated loss has no graph); an audio (or text) head whose logits exist but which no
  cross-entropy scores, or a cross-entropy whose targets are all ``ignore_index``;
- trainable parameters (in the optimizer) that never receive a gradient, or never move;
- a learning rate (or weight decay / clipping norm) that is not what the command line asked for;
- ranks of one DDP run whose gradients or weights differ after the all-reduce;
- a logged loss that is neither the sum nor the mean of the losses back-propagated in its step;
- the run stopping with an exception.

Heads are told apart by their class count: a cross-entropy over as many classes as the model's audio
logits (codebook size + 2) scores the audio head, any other the text head.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from harness.trace.load import StepTrace, Trace, number
from higgs_common.param_names import canonical_name

# Command-line flags whose value must reach the optimizer: flags -> (param-group key, what it is).
ASKED_HYPERPARAMETERS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("--lr", "--learning-rate", "--learning_rate"), "initial_lr", "learning rate"),
    (("--weight-decay", "--weight_decay"), "weight_decay", "weight decay"),
)
CLIP_FLAGS = ("--max-grad-norm", "--max_grad_norm", "--clip-grad-norm")
# Tags of the total training loss as logged ("loss", "train/loss", "loss/total", ...); sub-terms such as
# "llm_loss" or "loss/audio" are not the back-propagated total.
LOSS_TAG = re.compile(r"^(?:.*/)?(?:loss|total|total_loss|train_loss)$", re.IGNORECASE)
# What HF `Trainer.train()` logs once, at the end of a process's run: aggregates over that process's
# history, not step values (its `train_loss` divides the losses of this process's steps by the global
# step count, so a resumed run reports a smaller one).  Not compared step by step, not a logged loss.
RUN_SUMMARY_KEYS = frozenset({"train_loss", "train_runtime", "total_flos", "train_samples_per_second",
                              "train_steps_per_second"})


def is_run_summary(tag: str) -> bool:
    """A logged tag (``source:name``) that is HF Trainer's end-of-run aggregate (also as TensorBoard's
    ``train/<name>``)."""
    return tag.split(":", 1)[-1].rsplit("/", 1)[-1] in RUN_SUMMARY_KEYS


@dataclass
class Symptom:
    """One symptom: a line a person reads first, the mechanism behind it, where it shows."""

    kind: str                 # zero_loss | nonfinite_loss | constant_loss | detached_loss | unscored_head |
                              # no_supervised_targets | no_gradient | zero_gradient | never_moves |
                              # hyperparameter | ranks_disagree | logged_loss | run_error
    text: str
    mechanism: str
    stage: str                # loss | backward | step | log | run
    field: str
    steps: list[int] = field(default_factory=list)
    location: str | None = None       # "file:line in function" of the code that produced it
    rank: int = 0

    @property
    def key(self) -> tuple[str, str]:
        """What identifies a symptom across two traces (kind and field)."""
        return (self.kind, self.field)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "mechanism": self.mechanism, "stage": self.stage,
                "field": self.field, "steps": self.steps, "location": self.location, "rank": self.rank}


def where(site: Any) -> str | None:
    """``file:line in function`` of the innermost frame of a recorded call site."""
    if isinstance(site, list) and site and isinstance(site[0], dict):
        f = site[0]
        return f"{f.get('file')}:{f.get('line')} in {f.get('function')}"
    return None


def _steps_words(steps: list[int]) -> str:
    return f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"


def _value(st: StepTrace, desc: Any) -> float | None:
    """A scalar from a tensor description: the stored tensor's mean, or sum/numel of the summary."""
    if not isinstance(desc, dict):
        return None
    t = st.tensor(desc)
    if t is not None and t.numel() and (t.is_floating_point() or not t.dtype.is_complex):
        return float(t.double().mean())
    total = number(desc.get("sum"))
    return None if total is None else total / max(1, shape_numel(desc.get("shape")))


def dim(shape: Any, axis: int) -> int:
    """Size of `axis` of a recorded shape (0 when the shape is not a list of ints that long)."""
    if not shape_numel(shape) and shape != [0] * len(shape or []):
        return 0
    try:
        return int(shape[axis])
    except (IndexError, TypeError, ValueError):
        return 0


def shape_numel(shape: Any) -> int:
    """Elements of a recorded shape (0 for anything that is not a list of non-negative ints)."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return 0
    return math.prod(shape)


def audio_classes(st: StepTrace) -> int | None:
    """Classes of the audio head: the last dimension of the model's ``audio_logits`` output, if any."""
    for call in st.model_calls:
        out = call.get("outputs")
        if isinstance(out, dict) and isinstance(out.get("audio_logits"), dict):
            n = dim(out["audio_logits"].get("shape"), -1)
            if n:
                return n
    return None


def head_kind(call: dict[str, Any], key: int) -> str:
    """``"audio"`` or ``"text"``.  `key`: the audio head's class count when known (negative), else the
    widest class count seen (the text vocabulary; narrower heads are audio)."""
    if key < 0:
        return "audio" if call.get("classes") == -key else "text"
    return "text" if call.get("classes") == key else "audio"


def kind_key(steps: list[StepTrace]) -> int:
    """The `head_kind` key for these steps: minus the audio head's classes, else the widest class count."""
    for st in steps:
        n = audio_classes(st)
        if n:
            return -n
    return int(max((number(c.get("classes")) or 0 for st in steps for c in st.ce_calls), default=0))


def _graph_ce(st: StepTrace) -> list[dict[str, Any]]:
    """Cross-entropy calls that take part in training (their input carries a graph)."""
    return [c for c in st.ce_calls if c.get("requires_grad")]


def _audio_logit_rows(st: StepTrace) -> int:
    """Rows of audio logits the model produced in this step (0 when it made none)."""
    rows = 0
    for call in st.model_calls:
        out = call.get("outputs")
        if isinstance(out, dict) and isinstance(out.get("audio_logits"), dict):
            rows += dim(out["audio_logits"].get("shape"), 0)
    return rows


def _audio_target_frames(st: StepTrace) -> int:
    """Target audio frames the batch carries (audio-out codes' last dimension), summed over micro-batches."""
    n = 0
    for call in st.model_calls:
        inputs = call.get("inputs")
        desc = inputs.get("audio_out_ids") if isinstance(inputs, dict) else None
        if isinstance(desc, dict):
            n += dim(desc.get("shape"), -1)
    return n


def loss_symptoms(trace: Trace, rank: int = 0) -> list[Symptom]:
    steps = trace.rank_steps(rank)
    out: list[Symptom] = []
    if not steps:
        return out
    widest = kind_key(steps)
    per_head: dict[str, list[tuple[int, float, dict]]] = {}
    unscored, unsupervised, nonfinite = [], {}, {}
    for st in steps:
        ce = _graph_ce(st)
        kinds = {head_kind(c, widest) for c in ce}
        frames = _audio_target_frames(st)
        if "audio" not in kinds and (frames > 0 or _audio_logit_rows(st) > 0):
            unscored.append((st.step, frames, _audio_logit_rows(st)))
        for c in ce:
            kind = head_kind(c, widest)
            v = _value(st, c.get("result"))
            if v is not None:
                per_head.setdefault(kind, []).append((st.step, v, c))
                if not math.isfinite(v) or (c.get("result") or {}).get("nonfinite"):
                    nonfinite.setdefault(kind, (st.step, c))
            if c.get("supervised") == 0:
                unsupervised.setdefault(kind, (st.step, c))
    if unscored:
        s = [u[0] for u in unscored]
        frames = unscored[0][1]
        out.append(Symptom(
            "unscored_head", f"audio loss 0.0: no cross-entropy scores the audio logits at {_steps_words(s)} "
            f"({frames} target audio frames in the batch, {unscored[0][2]} audio logit rows)",
            "the loss never reads the audio head: whatever the code reports as audio loss is a constant, and no "
            "gradient reaches the audio path from it", "loss", "audio_loss", s,
            where((steps[0].backward or [{}])[0].get("call_site"))))
    for kind, (s, c) in unsupervised.items():
        out.append(Symptom(
            "no_supervised_targets", f"{kind} loss has no supervised position at step {s}: all "
            f"{c.get('targets_total')} targets are ignore_index ({c.get('ignore_index')})",
            f"every {kind} label is masked, so the {kind} term is 0 (or NaN) and trains nothing; the labels were "
            "built wrong before the loss", "loss", f"{kind}_loss", [s], where(c.get("call_site"))))
    for kind, (s, c) in nonfinite.items():
        out.append(Symptom("nonfinite_loss", f"{kind} loss is NaN/Inf at step {s}",
                           "a non-finite loss poisons every gradient it reaches", "loss", f"{kind}_loss", [s],
                           where(c.get("call_site"))))
    for kind, vals in per_head.items():
        by_step: dict[int, float] = {}
        for s, v, _ in vals:
            by_step[s] = by_step.get(s, 0.0) + abs(v)
        if by_step and all(v == 0.0 for v in by_step.values()) and kind not in unsupervised:
            out.append(Symptom("zero_loss", f"{kind} loss is exactly 0.0 at {_steps_words(sorted(by_step))}",
                               f"the {kind} cross-entropy returns 0 on supervised targets: its inputs or "
                               "reduction are wrong", "loss", f"{kind}_loss", sorted(by_step),
                               where(vals[0][2].get("call_site"))))
    for st in steps:
        for b in st.backward:
            if b.get("error") or b.get("requires_grad") is False:
                out.append(Symptom(
                    "detached_loss", f"the back-propagated loss has no graph at step {st.step}"
                    + (f" ({b['error']})" if b.get("error") else ""),
                    "backward() ran on a tensor that does not require grad: the loss was detached or built from "
                    "constants, so no parameter is trained by it", "loss", "backward_loss", [st.step],
                    where(b.get("call_site"))))
                break
    bw = [(st.step, _value(st, b.get("value"))) for st in steps for b in st.backward]
    finite_bw = [v for _, v in bw if v is not None]
    if any(v is not None and not math.isfinite(v) for _, v in bw):
        s = next(s for s, v in bw if v is not None and not math.isfinite(v))
        out.append(Symptom("nonfinite_loss", f"the back-propagated loss is NaN/Inf at step {s}",
                           "a non-finite loss poisons every gradient it reaches", "loss", "backward_loss", [s]))
    if len(steps) >= 3 and len(finite_bw) >= 3 and len(set(finite_bw)) == 1 and finite_bw[0] != 0.0:
        out.append(Symptom("constant_loss", f"the back-propagated loss is {finite_bw[0]:.6g} at every step",
                           "the loss does not depend on the parameters being trained (or the batch never changes)",
                           "loss", "backward_loss", [s for s, _ in bw]))
    return out


def _group_names(names: Iterable[str], limit: int = 4) -> str:
    """``layers.0.x.q_proj.lora_A.weight``, ... -> ``layers.*.x.q_proj.lora_A.weight`` (first few patterns)."""
    pats: dict[str, int] = {}
    for n in names:
        p = re.sub(r"\.\d+\.", ".*.", n)
        pats[p] = pats.get(p, 0) + 1
    items = sorted(pats.items())
    words = ", ".join(f"{p} ({k})" if k > 1 else p for p, k in items[:limit])
    return words + (f" and {len(items) - limit} more patterns" if len(items) > limit else "")


def gradient_symptoms(trace: Trace, rank: int = 0) -> list[Symptom]:
    steps = [st for st in trace.rank_steps(rank) if st.optimizer]
    out: list[Symptom] = []
    if not steps:
        return out
    names = list(steps[0].grads())
    none_all = [n for n in names if all(st.grads().get(n) is None for st in steps)]
    zero_all = [n for n in names if n not in none_all and all(
        isinstance(st.grads().get(n), dict) and st.grads()[n].get("abs_sum", 1.0) == 0.0 for st in steps)]
    # LoRA A receives an exactly-zero gradient while B is still 0 (its first step): not a symptom alone.
    if len(steps) < 2:
        zero_all = [n for n in zero_all if "lora_A" not in n]
    site = where((steps[0].optimizer or {}).get("call_site"))
    if none_all:
        out.append(Symptom(
            "no_gradient", f"{len(none_all)} of {len(names)} trainable parameters receive no gradient "
            f"({_steps_words([st.step for st in steps])}): {_group_names(none_all)}",
            "they are in the optimizer but not on the path from the back-propagated loss (detached loss, a head the "
            "loss never reads, or a module the forward skips)", "backward", "gradients", [st.step for st in steps],
            site))
    if zero_all:
        out.append(Symptom(
            "zero_gradient", f"{len(zero_all)} of {len(names)} trainable parameters get exactly-zero gradients at "
            f"every recorded step: {_group_names(zero_all)}",
            "the loss reaches them only through masked or zero-weighted terms", "backward", "gradients",
            [st.step for st in steps], site))
    # never moves: each parameter after the last step against its value before the first
    first, still = steps[0], []
    before = {canonical_name(k[len("param_before."):]): v for k, v in first.tensors().items()
              if k.startswith("param_before.")}
    last = steps[-1].params_after()
    lrs = [number(g.get("lr")) or 0.0 for st in steps for g in st.param_groups()]
    for n, d in last.items():
        t_after, t_before = steps[-1].tensor(d), before.get(n)
        if t_after is not None and t_before is not None and t_after.shape == t_before.shape \
                and torch.equal(t_after, t_before):
            still.append(n)
    if still and any(lr > 0 for lr in lrs):
        out.append(Symptom(
            "never_moves", f"{len(still)} of {len(last)} trainable parameters never move over "
            f"{_steps_words([st.step for st in steps])}: {_group_names(still)}",
            "the optimizer steps them with a zero update: no gradient, a zero learning rate for their group, or "
            "the step runs on copies", "step", "parameters", [st.step for st in steps], site))
    return out


def hyperparameter_symptoms(trace: Trace, rank: int = 0) -> list[Symptom]:
    steps = [st for st in trace.rank_steps(rank) if st.optimizer]
    out: list[Symptom] = []
    if not steps:
        return out
    groups = steps[0].param_groups()
    for flags, key, words in ASKED_HYPERPARAMETERS:
        flag, asked = next(((f, v) for f in flags if (v := trace.argv_value(f)) is not None), (None, None))
        if asked is None:      # `flag`: the option as the command spells it
            continue
        try:
            want = float(asked)
        except ValueError:
            continue
        have = [g.get(key, g.get("lr") if key == "initial_lr" else None) for g in groups]
        have = [h for h in have if isinstance(h, (int, float))]
        if key == "weight_decay":
            ok = any(math.isclose(h, want, rel_tol=1e-6, abs_tol=1e-12) for h in have)
        else:
            ok = bool(have) and all(math.isclose(h, want, rel_tol=1e-6, abs_tol=1e-12) for h in have)
        if not ok:
            out.append(Symptom(
                "hyperparameter", f"{words}: the command line asks {flag} {asked}, the optimizer uses "
                f"{', '.join(f'{h:g}' for h in have) or 'none'}",
                f"the option's value never reaches the optimizer's param groups ({key})", "step", key,
                [steps[0].step], where((steps[0].optimizer or {}).get("call_site"))))
    asked_clip = trace.argv_value(*CLIP_FLAGS)
    clips = [c for st in steps for c in st.records("clip_grad_norm")]
    if asked_clip is not None and clips:
        try:
            want = float(asked_clip)
            used = number(clips[0].get("max_norm"))
            if used is not None and not math.isclose(used, want, rel_tol=1e-6):
                out.append(Symptom("hyperparameter", f"gradient clipping: the command line asks {CLIP_FLAGS[0]} "
                                   f"{asked_clip}, clip_grad_norm_ uses {used:g}",
                                   "the option's value never reaches the clipping call", "step", "max_grad_norm",
                                   [steps[0].step], where(clips[0].get("call_site"))))
        except ValueError:
            pass
    lrs = [number(g.get("lr")) for st in steps for g in st.param_groups()]
    if lrs and all(lr == 0.0 for lr in lrs) and len(steps) >= 2:
        out.append(Symptom("hyperparameter", f"the learning rate is 0 at every recorded step "
                           f"({_steps_words([st.step for st in steps])})",
                           "a schedule that starts at 0 and never leaves it (warmup longer than the run, or a "
                           "constant schedule built with warmup) trains nothing", "step", "lr",
                           [st.step for st in steps]))
    return out


def rank_symptoms(trace: Trace) -> list[Symptom]:
    """DDP: after the all-reduce every rank must hold the same gradients (and then the same weights)."""
    out: list[Symptom] = []
    if len(trace.ranks) < 2:
        return out
    base = {st.step: st for st in trace.rank_steps(trace.ranks[0])}
    for r in trace.ranks[1:]:
        for st in trace.rank_steps(r):
            b = base.get(st.step)
            if b is None or not st.optimizer or not b.optimizer:
                continue
            differ = []
            g0, g1 = b.grads(), st.grads()
            for n, d in g0.items():
                t0, t1 = b.tensor(d), st.tensor(g1.get(n))
                if t0 is None or t1 is None:
                    continue
                if t0.shape != t1.shape or not torch.allclose(t0.double(), t1.double(), rtol=1e-5, atol=1e-8):
                    differ.append(n)
            if differ:
                out.append(Symptom(
                    "ranks_disagree", f"gradients differ between rank {trace.ranks[0]} and rank {r} at step "
                    f"{st.step} ({len(differ)} of {len(g0)} parameters): not synchronised across ranks",
                    "DDP's all-reduce did not run for them (forward bypassed the DDP wrapper, or no_sync covered the "
                    "wrong micro-batch): each rank steps on its own gradient and the replicas drift apart",
                    "backward", "gradients", [st.step], where((st.optimizer or {}).get("call_site")), rank=r))
                return out
    return out


def logging_symptoms(trace: Trace, rank: int = 0) -> list[Symptom]:
    """The loss the program logs must be the sum or the mean of the losses it back-propagated.

    Under DDP the logged loss is usually averaged over ranks, so the candidates average every rank's
    losses of the step; a loss logged every k steps is compared with the mean over those k steps.
    """
    out: list[Symptom] = []
    per_rank = {r: {st.step: st for st in trace.rank_steps(r)} for r in trace.ranks}
    history: list[tuple[float, float]] = []          # (sum, mean) of the back-propagated losses, per step
    last_logged: dict[str, int] = {}                 # tag -> index into history after its previous log
    for st in trace.rank_steps(rank):
        rank_sums, rank_means = [], []
        for r in trace.ranks:
            other = per_rank[r].get(st.step)
            bw = [_value(other, b.get("value")) for b in (other.backward if other else [])]
            bw = [v for v in bw if v is not None and math.isfinite(v)]
            if bw:
                rank_sums.append(sum(bw))
                rank_means.append(sum(bw) / len(bw))
        if not rank_sums:
            continue
        history.append((sum(rank_sums) / len(rank_sums), sum(rank_means) / len(rank_means)))
        tags = {k: v for k, v in st.logged().items()
                if LOSS_TAG.search(k.split(":", 1)[-1]) and not is_run_summary(k)}
        for tag, v in tags.items():
            since = history[last_logged.get(tag, 0):]
            last_logged[tag] = len(history)
            if not math.isfinite(v) or not since:
                continue
            candidates = (sum(x[0] for x in since) / len(since), sum(x[1] for x in since) / len(since),
                          history[-1][0], history[-1][1])
            if not any(math.isclose(v, c, rel_tol=2e-3, abs_tol=2e-4) for c in candidates):
                name = tag.split(":", 1)[-1]
                out.append(Symptom(
                    "logged_loss", f"logged {name} = {v:.6g} at step {st.step}, but the loss back-propagated in "
                    f"that step is {history[-1][0]:.6g} (ratio {v / history[-1][0] if history[-1][0] else float('inf'):.3g})",
                    "the logged value is not the loss that trains: summed over micro-batches, never reset between "
                    "steps, or scaled differently", "log", f"logged:{name}", [st.step],
                    where(next((r.get("call_site") for r in st.records("logged")
                                if name in (r.get("values") or {})), None))))
                return out
    return out


def run_symptoms(trace: Trace) -> list[Symptom]:
    out: list[Symptom] = []
    for err in trace.errors():
        if err.get("kind") == "uncaught_exception":
            tb = err.get("traceback") or ""
            frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', tb)
            loc = f"{frames[-1][0]}:{frames[-1][1]} in {frames[-1][2]}" if frames else None
            after = number(err.get("after_step"))
            out.append(Symptom("run_error", f"the run stopped during step {int(after or 0) + 1}: "
                               f"{err.get('error')}", "the training command raised; later steps were never run",
                               "run", "exit", [], loc, rank=err.get("rank", 0)))
        elif err.get("kind") == "save_error":
            out.append(Symptom("run_error", f"saving {err.get('path')} failed: {err.get('error')}",
                               "a checkpoint write failed", "run", "checkpoint", [],
                               where(err.get("call_site")), rank=err.get("rank", 0)))
    code = trace.exit_code
    if code not in (0, None) and not any(s.kind == "run_error" and s.field == "exit" for s in out):
        out.append(Symptom("run_error", f"the command exited with status {code}"
                           + (" (timed out)" if trace.index.get("timed_out") else ""),
                           "see command.log in the trace folder: " + trace.log_tail(3).replace("\n", " | "),
                           "run", "exit", []))
    return out


def symptoms(trace: Trace) -> list[Symptom]:
    """Every symptom of one trace, most consequential first (run, loss, gradients, step, log)."""
    found = run_symptoms(trace) + loss_symptoms(trace) + gradient_symptoms(trace) + rank_symptoms(trace) \
        + hyperparameter_symptoms(trace) + logging_symptoms(trace)
    order = {"run": 0, "loss": 1, "backward": 2, "step": 3, "log": 4}
    return sorted(found, key=lambda s: order.get(s.stage, 9))
