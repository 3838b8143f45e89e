"""The bench's host readings (bench.host): the dispatch probe, CPU steal and the correlation."""

from __future__ import annotations

import pytest

from bench.host import (HostProbe, centred, correlation, cpu_steal, cpu_times, current_cpu, host_context, main,
                        survey)


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


def test_host_context_correlates_within_repeats_not_their_levels(caplog):
    """Two repeats whose levels line up with the probe but whose steps do not follow it: r is not
    carried by the levels; a row whose readings do not pair with its steps is left out, loudly."""
    rows = [dict(pipeline="reference", repeat=1, step_seconds=[1.0, 1.1, 0.9], host_op_us=[1.0, 0.9, 1.1],
                 host_op_us_median=1.0, host_steal_median=0.0),
            dict(pipeline="reference", repeat=2, step_seconds=[2.0, 2.1, 1.9], host_op_us=[2.0, 1.9, 2.1],
                 host_op_us_median=2.0, host_steal_median=None)]
    ctx = host_context(rows)
    assert ctx["host_op_us"] == [1.0, 2.0] and ctx["host_steal"] == [0.0, None]
    assert ctx["step_host_r"] == pytest.approx(-1.0)        # within each repeat: faster when the host is slower
    bad = rows + [dict(pipeline="reference", repeat=3, step_seconds=[1.0], host_op_us=[], host_op_us_median=None)]
    with caplog.at_level("WARNING", logger="bench"):
        assert host_context(bad)["step_host_r"] == pytest.approx(-1.0)
    assert "1 step times but 0 host readings" in caplog.text
    assert host_context([dict(pipeline="custom", step_seconds=[1.0])]) == {}
    assert centred([3.0, 1.0, 2.0]) == [1.0, -1.0, 0.0] and centred([]) == []


def test_survey_pins_the_probe_to_each_cpu_and_restores_the_affinity(capsys):
    import os

    before = os.sched_getaffinity(0)
    rows = survey(readings=2)
    assert os.sched_getaffinity(0) == before
    assert [r["cpu"] for r in rows] == sorted(before) + ["unpinned"]
    assert all(r["median_us"] > 0 and r["p90_us"] >= 0 for r in rows)
    assert set(rows[-1]["ran_on"]) <= before | {None}
    assert current_cpu() in before
    assert main(["--readings", "2"]) == 0
    out = capsys.readouterr().out
    assert "median us/op" in out and "unpinned" in out
