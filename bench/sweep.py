"""The train section's plan: which (config, pipeline, batch, speed variant, batching) runs, in order.

1. every config at the first batch size; `lora-common` at every listed batch size; with
   `yardstick`, the plain-PyTorch yardstick (`bench.yardstick`) beside the two pipelines; with
   `repeats` > 1, the first batch size's main rows again (repeat 2, 3, ...) right after them, for
   the run-to-run spread;
2. `max` in the batch list: for each pipeline, the batch doubles from the largest listed size
   until a run fails (out of memory) or reaches `max_batch`; the largest that ran is reported;
3. epoch batching at one batch size (`--epoch-batch`): reference, custom, and custom with
   group-by-length flipped, each over its own batches of one pool (`bench.train`);
4. custom speed variants (`--variants`, each a `custom_impl.speed` SPEC applied on top of the
   main custom options, e.g. `-compile` or `none`) at one batch size, fixed batching, in the
   order given (most wanted first: a deadline skips the last).

Each run builds its model afresh and frees it.  A `deadline` (seconds since the start) stops
launching new runs; the runs left out are recorded with status "skipped", so a run cut short
still reports what it measured.  `on_row` is called after every row (the caller saves then).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from bench.train import (BatchShape, TrainMeasurement, batch_shape, mean_flops, run_custom,
                                 run_reference)


@dataclass
class SweepPlan:
    config_names: Sequence[str]
    batch_sizes: Sequence[int]           # explicit sizes, in order
    search_max: bool = False             # double past the largest explicit size until failure
    max_batch: int = 512
    variants: Sequence[tuple[str, Any]] = ()   # (label, SpeedOptions) at variant_batch
    variant_batch: int | None = None
    epoch_batch: int | None = None       # epoch-batching comparison at this size (None: none)
    steps: int = 5
    warmup: int = 2
    count: bool = True
    deadline_s: float | None = None
    seed: int = 0
    yardstick: bool = False              # also measure bench.yardstick beside the two pipelines
    repeats: int = 1                     # main rows of the first batch size, measured this many times
    repeat_steps: int | None = None      # timed steps of those rows when repeats > 1 (None: `steps`)


@dataclass
class SweepState:
    rows: list[dict[str, Any]] = field(default_factory=list)
    shapes: dict[str, dict[str, Any]] = field(default_factory=dict)
    largest: dict[str, int] = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)


def cycle(items: Sequence[Any], n: int) -> list[Any]:
    return [items[i % len(items)] for i in range(n)]


def _to_device(ctx: Any, batch_items: Sequence[Any]) -> Any:
    from custom_impl import collator as ccol

    return ccol.batch_to_device(ccol.collate(list(batch_items), ctx), ctx.device)


def fixed_batches(ctx: Any, items: Sequence[Any], bs: int) -> tuple[list[Any], list[BatchShape]]:
    """One batch of `bs` samples (the data cycled in order) used by every step."""
    batch = _to_device(ctx, cycle(items, bs))
    return [batch], [batch_shape(batch, ctx)]


def epoch_batches(ctx: Any, items: Sequence[Any], bs: int, warmup: int, steps: int, *, grouped: bool,
                  seed: int = 0) -> tuple[list[Any], list[BatchShape]]:
    """warmup + steps batches from one seeded pool of (warmup + steps) x bs samples.

    The first `warmup` batches are the shuffled pool's first samples in order (the same for every
    caller); the timed batches cover the rest of the pool, in order (a random sampler) or grouped
    by merged length (`custom_impl.length_grouping.grouped_batches`, one mega-batch).
    """
    from custom_impl.length_grouping import grouped_batches, item_merged_length

    pool = cycle(items, bs * (warmup + steps))
    random.Random(seed).shuffle(pool)
    warm, timed = pool[:bs * warmup], pool[bs * warmup:]
    chunks = [warm[i:i + bs] for i in range(0, len(warm), bs)]
    if grouped:
        lengths = [item_merged_length(it.sample, ctx.model_config) for it in timed]
        order = grouped_batches(lengths, bs, seed=seed, mega_batches=steps)
        chunks += [[timed[i] for i in b] for b in order]
    else:
        chunks += [timed[i:i + bs] for i in range(0, len(timed), bs)]
    batches = [_to_device(ctx, c) for c in chunks]
    return batches, [batch_shape(b, ctx) for b in batches]


def _skipped(pipeline: str, config: str, bs: int, variant: str, speed: str, batching: str) -> TrainMeasurement:
    return TrainMeasurement(pipeline, config, bs, variant=variant, speed=speed, batching=batching, status="skipped",
                            error="time budget (--deadline-s) spent before this run")


def run_sweep(ctx: Any, items: Sequence[Any], configs: dict[str, dict[str, Any]], plan: SweepPlan,
              custom_speed: Any, *, peak: float | None,
              on_row: Callable[[dict[str, Any]], None] = lambda row: None,
              state: SweepState | None = None) -> SweepState:
    """Run the plan (module docstring); fills and returns `state` (rows, batch shapes, the largest
    batch per pipeline), which the caller may read while it runs."""
    state = state if state is not None else SweepState()
    cache: dict[tuple, tuple[list[Any], list[BatchShape]]] = {}

    def out_of_time() -> bool:
        return plan.deadline_s is not None and time.perf_counter() - state.t0 > plan.deadline_s

    def batches_for(bs: int, batching: str, grouped: bool) -> tuple[list[Any], list[BatchShape]]:
        key = (bs, batching, grouped if batching == "epoch" else False)
        if key not in cache:
            cache.clear()                     # one batch size's tensors on the device at a time
            cache[key] = (fixed_batches(ctx, items, bs) if batching == "fixed" else
                          epoch_batches(ctx, items, bs, plan.warmup, plan.steps, grouped=grouped, seed=plan.seed))
        return cache[key]

    def measure(name: str, pipeline: str, bs: int, *, speed: Any = None, variant: str = "default",
                batching: str = "fixed", repeat: int = 1) -> dict[str, Any]:
        train = configs[name]["custom" if pipeline == "yardstick" else pipeline]   # the yardstick: the custom config
        grouped = pipeline == "custom" and speed is not None and speed.group_by_length
        if out_of_time():
            m = _skipped(pipeline, name, bs, variant, speed.describe() if speed is not None else "", batching)
        else:
            batches, shapes = batches_for(bs, batching, grouped)
            key = f"{bs}" if batching == "fixed" else f"{bs}-epoch-{'grouped' if grouped else 'random'}"
            if key not in state.shapes:
                state.shapes[key] = _shape_summary(shapes, plan.warmup, plan.steps)
            repeated = (plan.repeats > 1 and name == "lora-common" and bs == plan.batch_sizes[0]
                        and batching == "fixed" and variant == "default")
            steps = plan.repeat_steps if repeated and plan.repeat_steps else plan.steps
            kw = dict(config_name=name, steps=steps, warmup=plan.warmup, batching=batching, count=plan.count)
            if pipeline == "reference":
                m = run_reference(ctx, train, batches, shapes, **kw)
            elif pipeline == "yardstick":
                from bench.yardstick import run_yardstick

                m = run_yardstick(ctx, train, batches, shapes, seed=plan.seed, **kw)
            else:
                m = run_custom(ctx, train, batches, shapes, speed=speed, variant=variant, **kw)
            if m.step_shapes:
                m.analytic_flops_per_step, formula = mean_flops(
                    ctx.model_config, m.step_shapes, lora_params=m.trainable_params if train.use_lora else 0,
                    full_ft=not train.use_lora)
        row = m.to_json(peak)
        row.update(lora_r=train.lora_r if train.use_lora else None,
                   lora_targets=list(train.lora_target_modules) if train.use_lora else None,
                   lora_dropout=train.lora_dropout if train.use_lora else None,
                   flop_formula=formula if m.step_shapes and m.status == "ok" else None, repeat=repeat)
        state.rows.append(row)
        on_row(row)
        if row["status"] == "ok" and variant == "default" and batching == "fixed" and name == "lora-common":
            state.largest[pipeline] = max(state.largest.get(pipeline, 0), bs)
        return row

    pipelines = ("reference", "custom") + (("yardstick",) if plan.yardstick else ())
    for name in configs:
        sizes = list(plan.batch_sizes) if name == "lora-common" else list(plan.batch_sizes[:1])
        for i, bs in enumerate(sizes):
            for pipeline in (pipelines if name == "lora-common" else pipelines[:2]):
                measure(name, pipeline, bs, speed=custom_speed if pipeline == "custom" else None)
            if name == "lora-common" and i == 0:
                # Repeats right after the first: the runs whose spread is measured see the same machine
                # state (clocks, heat, other tenants) rather than the state after the larger batches.
                for repeat in range(2, plan.repeats + 1):
                    for pipeline in pipelines:
                        measure("lora-common", pipeline, bs,
                                speed=custom_speed if pipeline == "custom" else None, repeat=repeat)
        if name == "lora-common" and plan.search_max:
            for pipeline in pipelines:
                bs = 2 * max(sizes)
                while bs <= plan.max_batch and not out_of_time():
                    row = measure(name, pipeline, bs, speed=custom_speed if pipeline == "custom" else None)
                    if row["status"] != "ok":
                        break
                    bs *= 2
    if "lora-common" in configs and plan.epoch_batch:
        from custom_impl.speed import flipped

        eb = plan.epoch_batch
        measure("lora-common", "reference", eb, batching="epoch")
        measure("lora-common", "custom", eb, speed=custom_speed, batching="epoch")
        for label, opts in flipped(custom_speed, ["group-by-length"]):
            measure("lora-common", "custom", eb, speed=opts, variant=label, batching="epoch")
    if "lora-common" in configs:
        vb = plan.variant_batch or plan.batch_sizes[0]
        for label, opts in plan.variants:
            measure("lora-common", "custom", vb, speed=opts, variant=label)
    return state


def _shape_summary(shapes: Sequence[BatchShape], warmup: int, steps: int) -> dict[str, Any]:
    """Per batch size: the (first timed) batch's shape; for several batches, the timed steps' totals."""
    timed = [shapes[i % len(shapes)] for i in range(warmup, warmup + steps)]
    first = timed[0]
    out = dict(vars(first)) | {"padded_tokens": first.padded_tokens}
    if len(shapes) > 1:
        real = sum(s.tokens for s in timed)
        padded = sum(s.padded_tokens for s in timed)
        out |= {"timed_steps": len(timed), "timed_tokens": real, "timed_padded_tokens": padded,
                "padding_efficiency": real / padded if padded else None}
    return out
