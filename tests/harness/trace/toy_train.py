"""A small, complete training script for the trace tests: argparse, a two-head model (text and
"audio"), cross-entropy losses, gradient accumulation, AdamW with a linear schedule, clipping,
TensorBoard logging, checkpoints and --resume.  `--bug NAME` switches on one realistic bug.

    python toy_train.py --steps 3 --output-dir /tmp/run [--bug summed-log]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F

BUGS = ("none", "detached", "unscored-audio", "summed-log", "ignore-wd", "forget-scheduler", "label-shift",
        "skip-batch-on-resume", "crash", "late-loss-scale", "forget-optimizer", "forget-rng", "log-last-micro-text",
        "detached-text", "micro-order-reversed", "layer-drift")


class Out:
    def __init__(self, logits: torch.Tensor, audio_logits: torch.Tensor) -> None:
        self.logits, self.audio_logits = logits, audio_logits


class ToyMLP(torch.nn.Module):
    """The layer's parameterless "FFN branch": zero, or with --bug layer-drift 1e-2 everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.drift = 0.0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(h) + self.drift


class ToyDecoderLayer(torch.nn.Module):
    """A parameterless "decoder layer" with an `mlp` branch (what `trace --layers` hooks): tanh plus the
    branch (a speed path whose branch computes something slightly else, with --bug layer-drift)."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = ToyMLP()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(h) + self.mlp(h)


class TwoHead(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(32, 16)
        self.body = torch.nn.Linear(16, 16)
        self.text_head = torch.nn.Linear(16, 32)
        self.audio_head = torch.nn.Linear(16, 10)
        self.layer = ToyDecoderLayer()

        self.bf16_head = False        # a "speed path": text logits come out rounded to bf16 (other rounding)
        self.dropout = 0.0            # dropout on the hidden state (the RNG a resume must restore)

    def forward(self, input_ids: torch.Tensor, audio_out_ids: torch.Tensor) -> Out:
        h = self.layer(self.body(self.embed(input_ids)))            # (B, T, 16)
        if self.dropout:
            h = F.dropout(h, self.dropout, training=True)
        logits = self.text_head(h)
        if self.bf16_head:
            logits = logits.bfloat16().float()
        return Out(logits, self.audio_head(h[:, : audio_out_ids.shape[1]]))


def batch(step: int, micro: int, size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + micro)
    ids = torch.randint(0, 32, (size, 12), generator=g)
    return {"input_ids": ids, "audio_out_ids": torch.randint(0, 10, (size, 4), generator=g)}


def main() -> None:
    p = argparse.ArgumentParser(description="toy trainer")
    p.add_argument("--max-steps", type=int, default=3, help="optimizer steps (default: 3)")
    p.add_argument("--lr", type=float, default=1e-2, help="learning rate (default: 0.01)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: 0.0)")
    p.add_argument("--grad-accum", type=int, default=2, help="micro-batches per step (default: 2)")
    p.add_argument("--batch-size", type=int, default=2, help="samples per micro-batch (default: 2)")
    p.add_argument("--output-dir", type=Path, default=Path("toy-run"))
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: never)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bug", choices=BUGS, default="none")
    p.add_argument("--bf16-head", action="store_true", help="text logits rounded to bf16 (a speed path with other rounding)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout on the hidden state (default: 0.0)")
    p.add_argument("--autocast", action="store_true", help="forward under CPU bf16 autocast (another precision)")
    p.add_argument("--own-seed-draw", action="store_true",
                   help="draw one random seed per step before the forward, as torch.compile's kernels draw theirs "
                        "(a speed path that changes no arithmetic but moves every later random draw)")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    model = TwoHead()
    model.bf16_head = a.bf16_head
    model.dropout = a.dropout
    model.layer.mlp.drift = 1e-2 if a.bug == "layer-drift" else 0.0
    wd = 0.0 if a.bug == "ignore-wd" else a.weight_decay
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / a.max_steps))
    from torch.utils.tensorboard import SummaryWriter
    a.output_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(a.output_dir / "tb"))
    start = 0
    ckpt = a.output_dir / "ckpt.pt"
    if a.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        if a.bug != "forget-optimizer":
            opt.load_state_dict(state["optimizer"])
        if a.bug != "forget-scheduler":
            sched.load_state_dict(state["scheduler"])
        if a.bug != "forget-rng":
            torch.set_rng_state(state["rng"])
        start = state["step"] + (1 if a.bug == "skip-batch-on-resume" else 0)
    running = 0.0
    for step in range(start + 1, a.max_steps + 1):
        if a.bug != "summed-log":
            running = 0.0
        texts = []
        if a.own_seed_draw:
            torch.randint(0, 2**31 - 1, (1,))
        for micro in range(a.grad_accum):
            b = batch(step, a.grad_accum - 1 - micro if a.bug == "micro-order-reversed" else micro, a.batch_size)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast):
                out = model(**b)
            if a.bug == "crash" and step == 2:
                raise RuntimeError("toy trainer: simulated crash in step 2")
            labels = b["input_ids"] if a.bug == "label-shift" else torch.roll(b["input_ids"], -1, dims=1)
            logits = out.logits.detach() if a.bug == "detached-text" else out.logits
            text = F.cross_entropy(logits[:, :-1].reshape(-1, 32), labels[:, :-1].reshape(-1))
            audio = (torch.zeros(()) if a.bug == "unscored-audio"
                     else F.cross_entropy(out.audio_logits.reshape(-1, 10), b["audio_out_ids"].reshape(-1)))
            texts.append(float(text.detach()))
            loss = (text + audio) / a.grad_accum
            if a.bug == "late-loss-scale" and step >= 2:     # a path that only a later batch takes
                loss = loss * 1.5
            if a.bug == "detached":
                loss = loss.detach().requires_grad_()
            loss.backward()
            running += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        writer.add_scalar("train/loss", running, step)
        writer.add_scalar("train/text", texts[-1] if a.bug == "log-last-micro-text" else sum(texts) / len(texts), step)
        if a.save_every and step % a.save_every == 0:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "rng": torch.get_rng_state(), "step": step}, tmp)
            os.replace(tmp, ckpt)
    writer.close()


if __name__ == "__main__":
    main()
