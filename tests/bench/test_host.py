"""The bench's host readings (bench.host): the dispatch probe, CPU steal and the correlation."""

from __future__ import annotations

import pytest

from bench.host import HostProbe, correlation, cpu_steal, cpu_times


def test_probe_times_its_fixed_workload_per_op():
    probe = HostProbe(ops=50)
    readings = [probe.op_us() for _ in range(3)]
    assert all(0 < r < 10_000 for r in readings)            # microseconds per in-place add, not seconds
    assert float(probe._a) == 150.0                           # it ran every op it counts


def test_cpu_times_reads_the_aggregate_line_of_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 0 50 800 10 0 5 35 20 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    assert cpu_times(stat) == (35, 1000)                     # guest time is inside user: not added again
    stat.write_text("intr 1 2 3\n")
    assert cpu_times(stat) is None
    assert cpu_times(tmp_path / "missing") is None


def test_cpu_steal_is_the_stolen_share_between_two_readings():
    assert cpu_steal((35, 1000), (85, 1500)) == pytest.approx(0.1)
    assert cpu_steal((35, 1000), (35, 1000)) is None          # no tick passed
    assert cpu_steal(None, (35, 1000)) is None


def test_correlation_of_step_times_with_the_probe():
    host = [1.0, 1.2, 1.1, 1.5, 1.0]
    assert correlation([2 * h + 0.1 for h in host], host) == pytest.approx(1.0)   # follows the host
    assert correlation([-h for h in host], host) == pytest.approx(-1.0)
    assert correlation([0.3] * 5, host) is None               # constant: no correlation defined
    assert correlation([1.0, 2.0], [1.0, 2.0]) is None        # too few pairs
