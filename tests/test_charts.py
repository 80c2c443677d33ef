"""The report's chart axes: round, evenly spaced ticks that enclose the data, and labels that never overlap."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from aurelis_core import _charts as charts
from aurelis_core._charts import (
    duration_axis,
    labels_overlap,
    linear_axis,
    log_ticks,
    nice_ticks,
    percentile_axis,
    time_axis,
    time_ticks,
)
from aurelis_core._units import count


def is_nice(step: float) -> bool:
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
    return any(math.isclose(mantissa, m, rel_tol=1e-9) for m in (1, 2, 5, 10))


def test_nice_ticks_by_example() -> None:
    assert nice_ticks(0, 1, 6) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 17.3, 5) == [0, 5, 10, 15, 20]
    assert nice_ticks(0, 0.3, 4) == [0, 0.1, 0.2, 0.3]  # no 0.30000000000000004
    assert nice_ticks(3, 3, 5) == [3, 4, 5, 6]  # an empty range gets one of its own size
    assert nice_ticks(0, 950, 2) == [0, 1000]


finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


@given(finite, st.floats(min_value=1e-6, max_value=1e9), st.integers(min_value=2, max_value=20))
def test_nice_ticks_enclose_evenly_with_a_round_step(lo: float, span: float, max_count: int) -> None:
    assume(span >= abs(lo) * 1e-4)  # ticks carry 12 significant digits: a range that narrow is not charted
    hi = lo + span
    ticks = nice_ticks(lo, hi, max_count)
    assert 2 <= len(ticks) <= max(max_count, 3 if lo < 0 < hi else 2)
    steps = [b - a for a, b in itertools.pairwise(ticks)]
    slack = steps[0] * 1e-6  # a millionth of a step past a tick is float noise, not a reason for another tick
    assert ticks[0] <= lo + slack and ticks[-1] >= hi - slack
    assert all(math.isclose(s, steps[0], rel_tol=1e-6, abs_tol=1e-9 * max(abs(lo), abs(hi))) for s in steps)
    assert is_nice(steps[0])


def test_log_ticks() -> None:
    assert log_ticks(0.004, 0.09, 10) == [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
    assert log_ticks(3e-5, 2.0, 8) == [1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1, 10]  # decades when 1-2-5 do not fit
    assert log_ticks(3e-5, 2.0, 4) == [1e-5, 1e-3, 0.1, 10]  # every second decade
    assert log_ticks(5.0, 5.0, 4) == [1, 2, 5, 10]


@given(st.floats(min_value=1e-7, max_value=1e4), st.floats(min_value=1.0, max_value=1e8),
       st.integers(min_value=2, max_value=20))
def test_log_ticks_enclose_within_the_count(lo: float, ratio: float, max_count: int) -> None:
    ticks = log_ticks(lo, lo * ratio, max_count)
    assert len(ticks) <= max(max_count, 2)
    assert ticks[0] <= lo * (1 + 1e-9) and ticks[-1] >= lo * ratio * (1 - 1e-9)
    assert ticks == sorted(set(ticks))
    for end in (ticks[0], ticks[-1]):
        assert math.isclose(math.log10(end), round(math.log10(end)), abs_tol=1e-9)  # powers of ten


def test_time_ticks_use_a_clock_s_steps() -> None:
    assert time_ticks(300, 6) == [0, 60, 120, 180, 240, 300]
    assert time_ticks(290, 8) == [0, 60, 120, 180, 240, 300]
    assert time_ticks(40, 5) == [0, 10, 20, 30, 40]
    assert time_ticks(1.25, 6) == [0, 0.5, 1.0, 1.5]  # a short run: decimal steps
    assert time_ticks(7200, 5) == [0, 1800, 3600, 5400, 7200]
    axis = time_axis(300)(500, True)
    assert axis.labels[:2] == ["0:00", "0:30"] or axis.labels[:2] == ["0:00", "1:00"]
    assert time_axis(40)(500, True).labels[-1] == "40 s"


@given(st.floats(min_value=0.01, max_value=2e5), st.integers(min_value=2, max_value=30))
def test_time_ticks_enclose_within_the_count(span: float, max_count: int) -> None:
    ticks = time_ticks(span, max_count)
    assert ticks[0] == 0 and ticks[-1] >= span * (1 - 1e-9) and len(ticks) <= max_count


def test_percentile_axis_is_in_nines() -> None:
    axis = percentile_axis(charts.nines(99.98))(800, True)
    assert axis.labels == ["0%", "90%", "99%", "99.9%", "99.99%"]
    assert axis.fraction(charts.nines(99.0)) == pytest.approx(0.5)
    narrow = percentile_axis(charts.nines(99.99999))(120, True)  # seven nines in 120 px: every other one
    assert not labels_overlap([narrow.fraction(t) * 120 for t in narrow.ticks],
                              [charts.text_width(label) for label in narrow.labels])
    assert narrow.labels[0] == "0%" and len(narrow.labels) < 8


def test_labels_overlap() -> None:
    assert not labels_overlap([0, 50, 100], [30, 30, 30], gap=8)
    assert labels_overlap([0, 30, 100], [30, 30, 30], gap=8)  # 30 apart, 38 needed
    assert labels_overlap([0, 40, 100], [30, 60, 30], gap=0)  # a wide middle label reaches its neighbour


@given(st.floats(min_value=0, max_value=1e6), st.floats(min_value=1e-3, max_value=1e7),
       st.floats(min_value=60, max_value=1200), st.booleans())
def test_fitted_axes_never_overlap(lo: float, span: float, length: float, horizontal: bool) -> None:
    axis = linear_axis(lo, lo + span, count)(length, horizontal)
    positions = [axis.fraction(t) * length for t in axis.ticks]
    sizes = [charts.text_width(label) if horizontal else charts.FONT for label in axis.labels]
    assert len(axis.ticks) >= 2 and not labels_overlap(positions, sizes)
    slack = (axis.hi - axis.lo) * 1e-9  # float noise, as in nice_ticks
    assert axis.lo <= lo + slack and axis.hi >= lo + span - slack


@given(st.lists(st.floats(min_value=1e-6, max_value=100), min_size=1, max_size=50),
       st.floats(min_value=100, max_value=900))
def test_latency_axes_never_overlap(latencies: list[float], length: float) -> None:
    for horizontal in (True, False):
        axis = duration_axis(latencies)(length, horizontal)
        positions = [axis.fraction(t) * length for t in axis.ticks]
        sizes = [charts.text_width(label) if horizontal else charts.FONT for label in axis.labels]
        assert not labels_overlap(positions, sizes)
        assert axis.fraction(min(latencies)) >= 0 and axis.hi >= max(latencies) * (1 - 1e-9)


def test_duration_axis_goes_log_when_hits_and_upstream_calls_share_it() -> None:
    assert duration_axis([40e-6, 0.3, 1.2])(300, False).log
    linear = duration_axis([0.2, 0.3, 1.2])(300, False)
    assert not linear.log and linear.labels[0] == "0"
    assert "500 ms" in linear.labels or "1 s" in linear.labels


def test_tick_labels() -> None:
    assert [charts.duration_label(v) for v in (0, 5e-4, 2e-3, 0.25, 1.5, 10)] == [
        "0", "500 \u00b5s", "2 ms", "250 ms", "1.5 s", "10 s"]
    assert [charts.time_label(t, 40) for t in (0, 15)] == ["0 s", "15 s"]
    assert [charts.time_label(t, 300) for t in (0, 90, 300)] == ["0:00", "1:30", "5:00"]
    assert charts.time_label(5400, 7200) == "1:30"
    assert [count(v) for v in (0, 7, 0.25, 950, 1500, 12_000, 3_200_000)] == [
        "0", "7", "0.25", "950", "1.5k", "12k", "3.2M"]
    assert [charts.percentile_label(k) for k in range(5)] == ["0%", "90%", "99%", "99.9%", "99.99%"]


def test_long_names_keep_their_ends() -> None:
    room = charts.text_width("x" * 12)
    assert charts._truncate("endpoint-with-a-long-name-1", room) == "endpoi\u2026ame-1"
    assert charts._truncate("short", room) == "short"
    assert charts.text_width(charts._truncate("endpoint-with-a-long-name-1", room)) <= room
