"""How fast the host is at the moment a step runs: the context an eager (host-bound) step time needs.

A training step that launches its kernels one by one from Python is bound by the host's speed at
batch sizes where the GPU finishes each kernel before the next one arrives.  On a shared machine
that speed moves (other tenants, frequency), and so does such a step's time, while a step replayed
from CUDA graphs barely moves.  The bench records two readings beside every timed step, taken
outside the timed region, so a report can show whether a pipeline's step time follows the host:

* `HostProbe.op_us()`: microseconds per operation of a fixed host-only workload (in-place adds on
  one-element CPU tensors: Python, the torch dispatcher and a trivial kernel, the path every eager
  launch also takes), read before and after each step.  Larger = a slower host at that moment.
* `cpu_steal()`: the share of the machine's CPU time (all CPUs) that the hypervisor gave to others
  (/proc/stat's `steal` column, Linux only), over an interval.  A neighbour loading the physical
  core under one of the machine's CPUs slows that CPU without showing as steal: the probe sees it,
  steal does not.

`host_context(rows)` relates a pipeline's per-step times to the probe over its repeats.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

log = logging.getLogger("bench")

PROC_STAT = Path("/proc/stat")


class HostProbe:
    """Times `ops` in-place adds on one-element CPU tensors (0.4-1 ms on a current server at 400).

    The workload is fixed, so its time per op is a reading of the host's speed at that moment:
    comparable between steps, rows and pipelines of one run, not between machines.
    """

    def __init__(self, ops: int = 400) -> None:
        self.ops = ops
        self._a = torch.zeros(1)
        self._b = torch.ones(1)

    def op_us(self) -> float:
        """Microseconds per operation of the fixed workload, now."""
        a, b = self._a, self._b
        t0 = time.perf_counter()
        for _ in range(self.ops):
            a.add_(b)
        return (time.perf_counter() - t0) * 1e6 / self.ops


def cpu_times(stat: Path = PROC_STAT) -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat's aggregate `cpu` line; None where there is
    no such file (not Linux) or it cannot be read.  Columns (proc(5)): user nice system idle iowait
    irq softirq steal guest guest_nice; guest time is already inside user, so total is the first 8."""
    try:
        first = stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu" or len(first) < 9:
        return None
    fields = [int(x) for x in first[1:9]]
    return fields[7], sum(fields)


def cpu_steal(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of CPU time stolen by the hypervisor between two `cpu_times()` readings (0..1), or
    None when either is missing or no tick passed in between."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def centred(values: Sequence[float]) -> list[float]:
    """`values` minus their median: a repeat's steps around its own level."""
    if not values:
        return []
    mid = statistics.median(values)
    return [v - mid for v in values]


def host_context(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the host was doing during one pipeline's repeats (bench rows, `TrainMeasurement.to_json`):
    the median probe per repeat (microseconds per op; larger = a slower host), the median CPU steal
    share per repeat, and `step_host_r`: Pearson's r between step time and probe over the timed
    steps, each repeat centred on its own medians first, so it says whether a step is slower when
    the host is slower within a repeat (a host-bound step: r well above 0), not whether the levels of
    a few repeats happen to line up.  Empty where no row carried readings."""
    op_us = [r.get("host_op_us_median") for r in rows]
    if not any(v is not None for v in op_us):
        return {}
    steps: list[float] = []
    probes: list[float] = []
    for r in rows:
        s, h = list(r.get("step_seconds") or []), list(r.get("host_op_us") or [])
        if len(s) != len(h):
            log.warning("bench row %s #%s: %d step times but %d host readings; its steps are left out of r",
                        r.get("pipeline"), r.get("repeat") or 1, len(s), len(h))
            continue
        steps += centred(s)
        probes += centred(h)
    return {"host_op_us": op_us, "host_steal": [r.get("host_steal_median") for r in rows],
            "step_host_r": correlation(steps, probes)}


def correlation(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's r (`statistics.correlation`) of the common length of two series; None for fewer than
    3 pairs or a constant series."""
    n = min(len(xs), len(ys))
    if n < 3:
        return None
    try:
        return statistics.correlation(list(xs[:n]), list(ys[:n]))
    except statistics.StatisticsError:   # a constant series
        return None


def current_cpu() -> int | None:
    """The CPU this thread last ran on (/proc/thread-self/stat field 39, proc(5)); None off Linux."""
    try:
        fields = Path("/proc/thread-self/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[36]) if len(fields) > 36 else None


def smt_siblings(cpu: int) -> str:
    """The CPUs sharing `cpu`'s core (sysfs thread_siblings_list), or '?' where not exposed."""
    try:
        return Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip()
    except OSError:
        return "?"


def survey(readings: int = 100) -> list[dict[str, object]]:
    """The probe pinned to each CPU this process may use in turn (`os.sched_setaffinity`), then
    unpinned: per CPU the median and 90th percentile microseconds per op and the SMT siblings; the
    unpinned row also names the CPUs the thread ran on.  The affinity is restored afterwards."""
    import os

    probe = HostProbe()
    allowed = sorted(os.sched_getaffinity(0))
    rows: list[dict[str, object]] = []

    def row(cpu: object, values: list[float], **extra: object) -> dict[str, object]:
        values = sorted(values)
        return {"cpu": cpu, "median_us": statistics.median(values),
                "p90_us": values[int(0.9 * (len(values) - 1))], **extra}

    try:
        for cpu in allowed:
            os.sched_setaffinity(0, {cpu})
            rows.append(row(cpu, [probe.op_us() for _ in range(readings)], siblings=smt_siblings(cpu)))
    finally:
        os.sched_setaffinity(0, allowed)
    values, ran_on = [], set()
    for _ in range(readings):
        values.append(probe.op_us())
        ran_on.add(current_cpu())
        time.sleep(0.01)
    rows.append(row("unpinned", values, siblings="", ran_on=sorted(c for c in ran_on if c is not None)))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.host`: how fast each CPU runs the probe now (see `survey`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.host", description=(
        "Time the bench's host probe (microseconds per in-place add on a one-element CPU tensor) pinned "
        "to each CPU this process may use, then unpinned: a slow CPU or a bimodal unpinned row explains "
        "a host-bound step time that moves between runs."))
    parser.add_argument("--readings", type=int, default=100, help="probe readings per CPU (default 100)")
    args = parser.parse_args(argv)
    print(f"{'cpu':>9} {'median us/op':>13} {'p90 us/op':>10}  SMT siblings / ran on")
    for r in survey(args.readings):
        where = r["siblings"] or "ran on " + ",".join(map(str, r.get("ran_on", [])))
        print(f"{r['cpu']!s:>9} {r['median_us']:>13.2f} {r['p90_us']:>10.2f}  {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
