"""The 128k-vocabulary text head only at the rows whose next token is supervised.

Upstream (boson_multimodal 0.1.1, `HiggsAudioModel.forward` -> `HiggsAudioDecoderProjector.forward`,
`audio_head.py`) computes, from the final normed hidden states `h` (B, L, H):

    logits       = text_lm_head(h)                          # (B, L, V): EVERY position
    audio_logits = audio_lm_head(h[audio_out_mask])         # (N_out, C * (K + 2))

and then returns `logits` untouched (only `audio_logits` is reshaped and cast to fp32).  The
custom loss scores `logits[:, t]` only where `expanded_labels[:, t + 1] != -100`: about 1% of the
positions of a zero-shot batch.  So, in the training path only:

1. `text_head_bypassed(model)` swaps `text_lm_head` for `HiddenPassthrough` while upstream's
   forward runs: `out.logits` is then `h` itself, (B, L, H), and `audio_logits` are unchanged
   (they never read `text_lm_head`);
2. `gathered_text_terms` gathers the supervised rows of `h` (n, H) and applies the real head's
   weight to those rows alone (n, V), then cross-entropy - in row chunks (recomputed in backward)
   when n x V is large, or through liger-kernel's fused linear cross-entropy when asked.

Same numbers as `loss.text_terms` on full logits, up to GEMM summation order (the rows are the
same dot products); the stage-contract forward (`custom_impl.stages.forward`) keeps the full head.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
# fp32 logits elements per cross-entropy chunk (256 MiB): above it the rows are processed in
# chunks whose logits are recomputed in backward instead of kept.
CHUNK_ELEMENTS = 1 << 26


class HiddenPassthrough(torch.nn.Module):
    """Stands in for `text_lm_head`: returns the hidden states (B, L, H) it is given."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states


@dataclass
class TextHeadInputs:
    """What the gathered head needs: final hidden states and the real head's weight."""

    hidden: torch.Tensor        # (B, L, H) final normed hidden states (upstream's input to text_lm_head)
    weight: torch.Tensor        # (V, H) text_lm_head.weight (no bias: upstream's head has none)
    chunk_rows: int = 0         # rows per cross-entropy chunk; 0: at most CHUNK_ELEMENTS logits a chunk
    liger: bool = False         # liger-kernel's fused linear cross-entropy instead


def decoder_projector(model: torch.nn.Module) -> torch.nn.Module:
    """Upstream's `audio_decoder_proj` inside DDP / peft / plain wrappers."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    if hasattr(inner, "get_base_model"):       # peft
        inner = inner.get_base_model()
    proj = getattr(inner, "audio_decoder_proj", None)
    if proj is None or not hasattr(proj, "text_lm_head"):
        raise TypeError(f"{type(inner).__name__} has no audio_decoder_proj.text_lm_head (not a HiggsAudioModel)")
    return proj


@contextmanager
def text_head_bypassed(model: torch.nn.Module) -> Iterator[torch.nn.Linear]:
    """Within the block upstream's forward returns hidden states as `logits`; yields the real head."""
    proj = decoder_projector(model)
    head = proj.text_lm_head
    if head.bias is not None:
        raise TypeError("text_lm_head has a bias; the gathered head assumes upstream's bias-free head")
    proj.text_lm_head = HiddenPassthrough()
    try:
        yield head
    finally:
        proj.text_lm_head = head


def _ce_rows(rows: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CE per row: rows (n, H), weight (V, H), targets (n,) -> (n,) fp32.

    The logits keep the head's dtype before the fp32 softmax, as on the full-logits path
    (`loss.text_terms` takes upstream's bf16 logits and calls `.float()`).
    """
    logits = F.linear(rows, weight)                                 # (n, V)
    return F.cross_entropy(logits.float(), targets, reduction="none")


def _chunked_ce(rows: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    """`_ce_rows` over row chunks; each chunk's (chunk, V) logits are recomputed in backward."""
    parts = []
    for start in range(0, rows.shape[0], chunk_rows):
        sl = slice(start, start + chunk_rows)
        if torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad):
            parts.append(checkpoint(_ce_rows, rows[sl], weight, targets[sl], use_reentrant=False))
        else:
            parts.append(_ce_rows(rows[sl], weight, targets[sl]))
    return torch.cat(parts)                                         # (n,)


def _liger_ce(rows: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from custom_impl.kernels import liger_functional

    fn = liger_functional().liger_fused_linear_cross_entropy
    return fn(rows, weight, targets, reduction="none").float()     # (n,)


def default_chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


def gathered_text_terms(head: TextHeadInputs, labels: torch.Tensor, *, shift: bool = True
                        ) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Sum of next-token CE from hidden states: same contract as `loss.text_terms`.

    head.hidden (B, L, H), labels (B, L) -> (sum, n_supervised, ce map (B, L), NaN where unsupervised).
    Row t predicts label t+1 (`shift`; fault no-shift: label t).
    """
    hidden = head.hidden
    ce_map = torch.full(labels.shape, float("nan"), device=hidden.device)
    tgt = labels[:, 1:] if shift else labels                        # (B, L') target labels
    src = hidden[:, :-1] if shift else hidden                       # (B, L', H) rows predicting them
    mask = tgt != IGNORE_INDEX                                      # (B, L')
    n = int(mask.sum())
    if n == 0:
        return hidden.sum() * 0.0, 0, ce_map
    rows = src[mask]                                                # (n, H) gathered before the head
    targets = tgt[mask]                                             # (n,)
    if head.liger:
        ce = _liger_ce(rows, head.weight, targets)
    else:
        chunk = head.chunk_rows or default_chunk_rows(head.weight.shape[0])
        ce = _ce_rows(rows, head.weight, targets) if n <= chunk else _chunked_ce(rows, head.weight, targets, chunk)
    view = ce_map[:, 1:] if shift else ce_map                       # indexed by the TARGET position
    view[mask] = ce.detach()
    return ce.sum(), n, ce_map
