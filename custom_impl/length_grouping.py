"""Length-grouped batches: samples of similar merged length share a batch (little padding).

A collated batch is padded to its longest merged sequence (text + audio positions, rounded up to
8 by upstream's merge), and every padded position costs a full forward/backward.  Zero-shot
samples of `data/` span 246-336 merged positions: a random batch of 32 carries ~14% padding.

`grouped_batches` follows the usual "mega-batch" scheme (as in HF's LengthGroupedSampler): each
epoch, a seeded permutation of all samples is cut into mega-batches of `mega_batches` global
batches; each mega-batch is sorted by length (longest first, ties in permutation order) and cut
into global batches; the global batches are shuffled (same generator) with the one holding the
longest sample moved first (an out-of-memory shows at step 1, not hours in).  Rank r of W takes
elements r, r+W, ... of each global batch, so all ranks get batches of similar length at every
step.  Deterministic in (seed, epoch, lengths, batch size, world size); like DistributedSampler
with drop_last, each epoch leaves out len % (batch x world) samples, different ones each epoch.

The loss does not depend on how samples are grouped: the custom loss divides by the global
supervised-token counts (`distributed.accumulate`) and each sample's per-token terms do not
depend on its batch-mates (right padding, causal attention): tests/custom_impl/test_speed.py.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

MEGA_BATCHES = 16
ROUND_TO = 8     # upstream's merge pads the merged length to a multiple of 8 (training: round_to=8)


def item_merged_length(sample: Any, model_config: Any) -> int:
    """Merged sequence length of one ChatMLDatasetSample as the custom collator + model build it.

    Each <|AUDIO|> / <|AUDIO_OUT|> placeholder becomes its clip's frames, plus the stream BOS and
    EOS the collator adds, plus (delay pattern) num_codebooks - 1 columns.
    """
    starts = [int(s) for s in sample.audio_ids_start.tolist()] if sample.audio_ids_start is not None else []
    total = int(sample.audio_ids_concat.shape[-1]) if sample.audio_ids_concat is not None else 0
    ends = starts[1:] + [total]
    extra = 2 + (model_config.audio_num_codebooks - 1 if model_config.use_delay_pattern else 0)
    audio = sum(e - s + extra for s, e in zip(starts, ends))
    ids = sample.input_ids
    placeholders = int(((ids == model_config.audio_in_token_idx) | (ids == model_config.audio_out_token_idx)).sum())
    return int(ids.numel()) - placeholders + audio


def batch_merged_lengths(batch: Any, audio_in_token_id: int, audio_out_token_id: int) -> list[int]:
    """Per-sample merged lengths of a collated (right-padded) batch, from the batch alone.

    Upstream's merge replaces the placeholders in row-major order by the segments of
    `audio_in_ids` / `audio_out_ids` in order (segment lengths from the `*_start` offsets).
    """
    def seg_lengths(ids: torch.Tensor | None, starts: torch.Tensor | None) -> list[int]:
        if ids is None or starts is None or ids.shape[-1] == 0 or starts.numel() == 0:
            return []
        s = [int(v) for v in starts.tolist()] + [int(ids.shape[-1])]
        return [b - a for a, b in zip(s[:-1], s[1:])]

    seg_in = iter(seg_lengths(batch.audio_in_ids, batch.audio_in_ids_start))
    seg_out = iter(seg_lengths(batch.audio_out_ids, batch.audio_out_ids_start))
    lengths = []
    for row, mask in zip(batch.input_ids.cpu(), batch.attention_mask.cpu()):
        n = 0
        for tok in row[mask.bool()].tolist():
            if tok == audio_in_token_id:
                n += next(seg_in)
            elif tok == audio_out_token_id:
                n += next(seg_out)
            else:
                n += 1
        lengths.append(n)
    return lengths


def padded_length(lengths: Sequence[int], round_to: int = ROUND_TO) -> int:
    """The merged batch's length: the longest sample rounded up to `round_to`."""
    longest = max(lengths)
    return -(-longest // round_to) * round_to


def grouped_batches(lengths: Sequence[int], batch_size: int, *, world_size: int = 1, rank: int = 0,
                    seed: int = 0, epoch: int = 0, mega_batches: int = MEGA_BATCHES) -> list[list[int]]:
    """This rank's batches (sample indices) of one epoch, grouped by length (module docstring)."""
    n = len(lengths)
    global_bs = batch_size * world_size
    usable = (n // global_bs) * global_bs
    if usable == 0:
        raise ValueError(f"{n} samples over {world_size} ranks cannot fill a batch of {batch_size}")
    g = torch.Generator().manual_seed(seed + epoch)
    perm = torch.randperm(n, generator=g).tolist()[:usable]
    mega = global_bs * max(1, mega_batches)
    global_batches: list[list[int]] = []
    for start in range(0, usable, mega):
        chunk = sorted(perm[start:start + mega], key=lambda i: -lengths[i])   # stable: ties keep perm order
        global_batches += [chunk[j:j + global_bs] for j in range(0, len(chunk), global_bs)]
    order = torch.randperm(len(global_batches), generator=g).tolist()
    longest = max(range(len(global_batches)), key=lambda k: lengths[global_batches[k][0]])
    order.remove(longest)
    order.insert(0, longest)
    return [global_batches[k][rank::world_size] for k in order]


def padding_efficiency(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Real merged positions / padded positions over `batches`."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * padded_length([lengths[i] for i in b]) for b in batches)
    return real / padded if padded else 1.0
