"""Charts for the HTML report, drawn as inline SVG: axes with round, evenly spaced ticks whose labels never
overlap, lines, stacked columns and areas, horizontal bars.

Hand-written rather than drawn by a plotting library: the page must fetch nothing and run no script, follow the
reader's light or dark theme (the SVG is styled by the page's CSS variables, not by colours baked in), and
stay readable at any width. An SVG scaled by its ``viewBox`` alone shrinks its text with it (11 px labels are
5 px on a phone), so each chart is drawn at a few widths (:data:`WIDTHS`) with as many ticks as fit each, and
the page shows the one nearest the width it has (CSS container queries): text stays 10 to 15 px.

Sizes below are in the chart's own units, which are CSS pixels at the drawn width.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

import attrs

__all__ = [
    "WIDTHS", "Axis", "Series", "bar_rows", "duration_axis", "labels_overlap", "line_chart", "linear_axis",
    "log_axis", "log_ticks", "nice_ticks", "percent_axis", "percentile_axis", "rate_axis", "responsive",
    "spectrum_chart", "stacked_chart", "time_axis", "time_ticks",
]

#: The widths each chart is drawn at, each shown from about the geometric mean with its neighbours, so it is
#: displayed at 0.8 to 1.25 times its drawn size (the page's CSS holds the same thresholds).
WIDTHS = (360, 560, 880)
#: Font size of the labels, and an upper bound of a character's width as a share of it (digits and most
#: letters of the sans-serif system fonts are 0.5-0.6 em wide): labels are spaced by this estimate.
FONT = 12.0
CHAR_WIDTH = 0.62
#: Least room between two labels.
LABEL_GAP = 8.0
#: Least distance between two ticks, along a vertical and a horizontal axis.
TICK_SPACING = {False: 28.0, True: 56.0}


def text_width(label: str) -> float:
    return len(label) * CHAR_WIDTH * FONT


# --- ticks ---------------------------------------------------------------------------------------------------


def _round(value: float) -> float:
    """``value`` without the float noise of ``i * step`` (0.30000000000000004 is 0.3)."""
    return float(f"{value:.12g}")


def nice_step(raw: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten that is at least ``raw`` (> 0)."""
    base = 10.0 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 5, 10):
        if multiple * base >= raw * (1 - 1e-9):
            return _round(multiple * base)
    raise AssertionError("unreachable: 10 * base > raw")


def nice_ticks(lo: float, hi: float, max_count: int) -> list[float]:
    """At most ``max_count`` (>= 2) ticks, evenly spaced by 1, 2 or 5 times a power of ten, the first at or
    below ``lo`` and the last at or above ``hi``: the smallest such step. A range across zero has at least
    three (two round ticks cannot enclose it)."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    max_count = max(3 if lo < 0 < hi else 2, max_count)
    step = nice_step((hi - lo) / (max_count - 1))
    while True:
        first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
        if last - first < max_count:
            return [_round(i * step) for i in range(first, last + 1)]
        step = nice_step(step * 1.01)


def log_ticks(lo: float, hi: float, max_count: int) -> list[float]:
    """Ticks of a log axis from ``lo`` to ``hi`` (> 0): 1, 2 and 5 times each power of ten when they fit in
    ``max_count``, else the powers of ten, else every second (third...) one. The first and last ticks are powers
    of ten enclosing the range."""
    low = math.floor(math.log10(lo) + 1e-9)
    high = max(low + 1, math.ceil(math.log10(max(hi, lo)) - 1e-9))
    ticks = [_round(m * 10.0**e) for e in range(low, high) for m in (1, 2, 5)] + [_round(10.0**high)]
    if len(ticks) <= max_count:
        return ticks
    every = max(1, math.ceil((high - low) / max(1, max_count - 1)))
    high = low + math.ceil((high - low) / every) * every
    return [_round(10.0**e) for e in range(low, high + 1, every)]


#: Steps of a time axis, in seconds: the round ones of a clock.
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def time_ticks(span: float, max_count: int) -> list[float]:
    """At most ``max_count`` ticks from 0 to at least ``span`` seconds, on a clock's round steps (15 s, 5 min,
    1 h...); runs shorter than the count in seconds get decimal steps (0.2 s)."""
    span = span if span > 0 else 1.0
    max_count = max(2, max_count)
    for step in TIME_STEPS:
        if step * (max_count - 1) >= span * (1 - 1e-9):
            if step == 1 and span < max_count - 1:
                break  # a short run: 0.1 / 0.2 / 0.5 s steps fit better than whole seconds
            return [float(i * step) for i in range(math.ceil(span / step - 1e-9) + 1)]
    return nice_ticks(0.0, span, max_count)


def time_label(seconds: float, last: float) -> str:
    """A tick of a time axis whose last tick is ``last``: ``"45 s"`` below a minute, else ``"m:ss"`` or
    ``"h:mm"``, one form per axis."""
    if last < 60:
        return f"{seconds:g} s"
    whole = round(seconds)
    if last < 3600:
        return f"{whole // 60}:{whole % 60:02d}"
    return f"{whole // 3600}:{whole % 3600 // 60:02d}"


def duration_label(seconds: float) -> str:
    """A tick of a latency axis in the unit that fits it: ``500 us`` (the micro sign), ``2 ms``, ``1.5 s``."""
    if seconds == 0:
        return "0"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("\u00b5s", 1e-6)):
        if abs(seconds) >= scale * (1 - 1e-9):
            return f"{_round(seconds / scale):g} {unit}"
    return f"{_round(seconds * 1e9):g} ns"


def rate_label(value: float) -> str:
    """A tick of a count or rate axis: ``950``, ``1.5k``, ``0.2``."""
    if abs(value) >= 1000:
        return f"{_round(value / 1000):g}k"
    return f"{_round(value):g}"


def labels_overlap(positions: Sequence[float], sizes: Sequence[float], gap: float = LABEL_GAP) -> bool:
    """Whether labels centred at ``positions`` (ascending), each ``sizes`` long along the axis, come closer than
    ``gap`` to each other."""
    return any(
        (sizes[i] + sizes[i + 1]) / 2 + gap > positions[i + 1] - positions[i] for i in range(len(positions) - 1)
    )


# --- axes ----------------------------------------------------------------------------------------------------


@attrs.frozen
class Axis:
    """Ticks and their labels over a domain ``lo..hi`` (the first and last tick), linear or log."""

    ticks: list[float]
    labels: list[str]
    log: bool = False

    @property
    def lo(self) -> float:
        return self.ticks[0]

    @property
    def hi(self) -> float:
        return self.ticks[-1]

    def fraction(self, value: float) -> float:
        """Where ``value`` lies, 0 at ``lo`` and 1 at ``hi`` (clamped to the domain)."""
        if self.log:
            value = max(value, self.lo)
            position = math.log10(value / self.lo) / math.log10(self.hi / self.lo)
        else:
            position = (value - self.lo) / (self.hi - self.lo)
        return min(1.0, max(0.0, position))


#: Builds an axis to fit a length (the plot's width or height), horizontal or not.
AxisMaker = Callable[[float, bool], Axis]


def _fitted(make: Callable[[int], tuple[list[float], Callable[[float], str]]], length: float, horizontal: bool,
            log: bool = False) -> Axis:
    """The axis with the most ticks (from ``make(max_count)``) whose labels do not overlap along ``length``,
    at most one per ``TICK_SPACING``: a grid line every few pixels would be noise, not a scale."""
    for count in range(max(2, int(length / TICK_SPACING[horizontal]) + 1), 1, -1):
        ticks, label = make(count)
        axis = Axis(ticks, [label(t) for t in ticks], log)
        positions = [axis.fraction(t) * length for t in ticks]
        sizes = [text_width(text) if horizontal else FONT for text in axis.labels]
        if not labels_overlap(positions, sizes):
            return axis
    ticks, label = make(2)
    return Axis([ticks[0], ticks[-1]], [label(ticks[0]), label(ticks[-1])], log)


def linear_axis(lo: float, hi: float, label: Callable[[float], str]) -> AxisMaker:
    return lambda length, horizontal: _fitted(lambda n: (nice_ticks(lo, hi, n), label), length, horizontal)


def log_axis(lo: float, hi: float, label: Callable[[float], str]) -> AxisMaker:
    return lambda length, horizontal: _fitted(lambda n: (log_ticks(lo, hi, n), label), length, horizontal, log=True)


def duration_axis(values: Sequence[float]) -> AxisMaker:
    """A latency axis: log when the values span more than 20 times (cache hits and upstream calls on one chart),
    else linear from 0."""
    positive = [v for v in values if v > 0]
    if not positive:
        return linear_axis(0.0, 1.0, duration_label)
    lo, hi = min(positive), max(positive)
    if hi / lo > 20:
        return log_axis(lo, hi, duration_label)
    return linear_axis(0.0, hi, duration_label)


def rate_axis(values: Sequence[float]) -> AxisMaker:
    return linear_axis(0.0, max([*values, 0.0]) or 1.0, rate_label)


def percent_axis() -> AxisMaker:
    return linear_axis(0.0, 1.0, lambda v: f"{_round(v * 100):g}%")


def time_axis(span: float) -> AxisMaker:
    def make(count: int) -> tuple[list[float], Callable[[float], str]]:
        ticks = time_ticks(span, count)
        return ticks, lambda t: time_label(t, ticks[-1])

    return lambda length, horizontal: _fitted(make, length, horizontal)


def nines(percentile: float) -> float:
    """Where a percentile lies on a percentile axis: ``log10(1 / (1 - p))``, so 0% is 0, 90% is 1, 99% is 2."""
    return math.log10(1 / max(1e-12, 1 - percentile / 100))


def percentile_label(position: float) -> str:
    """The percentile at a whole number of nines: ``0%``, ``90%``, ``99%``, ``99.9%``."""
    count = round(position)
    return "0%" if count == 0 else f"{100 - 10.0 ** (2 - count):.{max(0, count - 2)}f}%"


def percentile_axis(last: float) -> AxisMaker:
    """A percentile axis (in nines, see :func:`nines`) from 0% to the whole number of nines at or past
    ``last``, labelled at every nine (or every second, third... where labels would overlap)."""
    top = max(1, math.ceil(last - 1e-9))

    def make(count: int) -> tuple[list[float], Callable[[float], str]]:
        every = max(1, math.ceil(top / max(1, count - 1)))
        return [float(k) for k in range(0, math.ceil(top / every) * every + 1, every)], percentile_label

    return lambda length, horizontal: _fitted(make, length, horizontal)


# --- drawing -------------------------------------------------------------------------------------------------


def _e(text: str) -> str:
    return html.escape(text, quote=True)


@attrs.frozen
class Series:
    """One line, stack layer or area of a chart: its name (legend and tooltips), its colour (an index into the
    page's palette: ``--c0``..``--c7``) and one value per point (``None``: no value there, a gap)."""

    name: str
    colour: int
    values: Sequence[float | None]


@attrs.define
class _Plot:
    """A chart's geometry: margins sized by its labels, the plot area, and its axes."""

    width: float
    height: float
    x: Axis
    y: Axis
    left: float
    top: float
    right: float
    bottom: float

    @classmethod
    def build(cls, width: float, height: float, x: AxisMaker, y: AxisMaker, top: float = 10.0) -> _Plot:
        bottom = FONT + 14
        y_axis = y(height - top - bottom, False)
        left = max(text_width(label) for label in y_axis.labels) + 10
        right = 12.0
        for _ in range(2):  # the last x label is centred on the plot's edge: leave room for its half
            x_axis = x(width - left - right, True)
            right = max(12.0, text_width(x_axis.labels[-1]) / 2 + 2)
        return cls(width, height, x_axis, y_axis, left, top, right, bottom)

    @property
    def plot_width(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> float:
        return self.height - self.top - self.bottom

    def px(self, value: float) -> float:
        return self.left + self.x.fraction(value) * self.plot_width

    def py(self, value: float) -> float:
        return self.top + (1 - self.y.fraction(value)) * self.plot_height

    def frame(self) -> str:
        """Grid lines, axes and tick labels."""
        parts = []
        x0, x1, y0, y1 = self.left, self.width - self.right, self.top, self.height - self.bottom
        for tick, label in zip(self.y.ticks, self.y.labels, strict=True):
            y = self.py(tick)
            parts.append(f'<line class="grid" x1="{x0:.1f}" x2="{x1:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>'
                         f'<text class="tick" x="{x0 - 6:.1f}" y="{y:.1f}" dy="0.35em" text-anchor="end">'
                         f"{_e(label)}</text>")
        for tick, label in zip(self.x.ticks, self.x.labels, strict=True):
            x = self.px(tick)
            parts.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{y0:.1f}" y2="{y1:.1f}"/>'
                         f'<text class="tick" x="{x:.1f}" y="{y1 + FONT + 6:.1f}" text-anchor="middle">'
                         f"{_e(label)}</text>")
        parts.append(f'<line class="axis" x1="{x0:.1f}" x2="{x1:.1f}" y1="{y1:.1f}" y2="{y1:.1f}"/>')
        return "".join(parts)

    def svg(self, body: str, variant: int, title: str) -> str:
        return (f'<svg class="v{variant}" viewBox="0 0 {self.width:.0f} {self.height:.0f}" role="img" '
                f'aria-label="{_e(title)}" xmlns="http://www.w3.org/2000/svg">{self.frame()}{body}</svg>')


def responsive(draw: Callable[[int, int], str]) -> str:
    """``draw(width, variant)`` at each of :data:`WIDTHS`: the SVGs the page chooses among by its width."""
    return "".join(draw(width, variant) for variant, width in enumerate(WIDTHS))


def _height(width: int) -> int:
    return round(min(300.0, max(220.0, width * 0.34)))


def _runs(values: Sequence[float | None]) -> list[list[int]]:
    """The indexes of ``values`` in runs without a gap."""
    runs: list[list[int]] = []
    for i, value in enumerate(values):
        if value is None:
            continue
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _lines(plot: _Plot, xs: Sequence[float], series: Sequence[Series], describe: Callable[[float], str],
           value_label: Callable[[float], str]) -> str:
    parts = []
    for line in series:
        for run in _runs(line.values):
            points = " ".join(f"{plot.px(xs[i]):.1f},{plot.py(_value(line, i)):.1f}" for i in run)
            parts.append(f'<polyline class="line s{line.colour}" points="{points}"/>')
        for i in range(len(xs)):
            value = line.values[i]
            if value is not None:
                parts.append(f'<circle class="dot f{line.colour}" cx="{plot.px(xs[i]):.1f}" '
                             f'cy="{plot.py(value):.1f}" r="2.2"><title>{_e(describe(xs[i]))}: {_e(line.name)} '
                             f"{_e(value_label(value))}</title></circle>")
    return "".join(parts)


def _value(series: Series, index: int) -> float:
    value = series.values[index]
    assert value is not None  # only called on the indexes of a run
    return value


def line_chart(title: str, xs: Sequence[float], span: float, series: Sequence[Series], y: AxisMaker,
               value_label: Callable[[float], str], marks: Sequence[tuple[float, str]] = ()) -> str:
    """Lines over time (``xs`` seconds since the start, the axis to ``span``), with horizontal reference lines
    at ``marks`` (value, label)."""

    def draw(width: int, variant: int) -> str:
        plot = _Plot.build(width, _height(width), time_axis(span), y)
        last = plot.x.ticks[-1]
        body = "".join(_reference(plot, value, label) for value, label in marks)
        body += _lines(plot, xs, series, lambda t: time_label(t, last), value_label)
        return plot.svg(body, variant, title)

    return responsive(draw)


def _reference(plot: _Plot, value: float, label: str) -> str:
    """A dashed horizontal line at ``value`` (a target), labelled at its right end; none when ``value`` is off
    the axis (a line clamped to the edge would point at the wrong value)."""
    if not plot.y.lo <= value <= plot.y.hi:
        return ""
    y = plot.py(value)
    x = plot.width - plot.right
    return (f'<line class="ref" x1="{plot.left:.1f}" x2="{x:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="ref-label" x="{x - 4:.1f}" y="{y - 4:.1f}" text-anchor="end">{_e(label)}</text>')


def stacked_chart(title: str, xs: Sequence[float], bucket: float, span: float, layers: Sequence[Series],
                  y: AxisMaker, value_label: Callable[[float], str], *, area: bool = False,
                  marks: Sequence[tuple[float, str]] = ()) -> str:
    """Layers stacked over time buckets (``xs`` their middles, ``bucket`` their width): columns, or an area
    (flat across the first and last bucket of each run, so a lone bucket is still seen). A bucket where a
    layer is ``None`` is a gap in every layer."""

    def draw(width: int, variant: int) -> str:
        plot = _Plot.build(width, _height(width), time_axis(span), y)
        last = plot.x.ticks[-1]
        gaps = [any(layer.values[i] is None for layer in layers) for i in range(len(xs))]
        base = [0.0] * len(xs)
        parts = []
        for layer in layers:
            top = [base[i] + (layer.values[i] or 0.0) for i in range(len(xs))]
            if area:
                for run in _runs([None if gap else 0.0 for gap in gaps]):
                    edge = [(xs[run[0]] - bucket / 2, run[0]), *((xs[i], i) for i in run),
                            (xs[run[-1]] + bucket / 2, run[-1])]
                    upper = [f"{plot.px(max(0.0, x)):.1f},{plot.py(top[i]):.1f}" for x, i in edge]
                    lower = [f"{plot.px(max(0.0, x)):.1f},{plot.py(base[i]):.1f}" for x, i in reversed(edge)]
                    parts.append(f'<polygon class="area f{layer.colour}" points="{" ".join(upper + lower)}">'
                                 f"<title>{_e(layer.name)}</title></polygon>")
            else:
                for i, x in enumerate(xs):
                    value = layer.values[i]
                    if not value:
                        continue
                    left, right = plot.px(x - bucket / 2), plot.px(x + bucket / 2)
                    y0, y1 = plot.py(base[i]), plot.py(top[i])
                    parts.append(
                        f'<rect class="f{layer.colour}" x="{left + 0.5:.1f}" y="{y1:.1f}" '
                        f'width="{max(0.5, right - left - 1):.1f}" height="{max(0.0, y0 - y1):.1f}"><title>'
                        f"{_e(time_label(x, last))}: {_e(layer.name)} {_e(value_label(value))}</title></rect>")
            base = top
        parts += [_reference(plot, value, label) for value, label in marks]
        return plot.svg("".join(parts), variant, title)

    return responsive(draw)


def spectrum_chart(title: str, points: Sequence[tuple[float, float]], marked: Sequence[float]) -> str:
    """The latency percentile spectrum: latency (y) at each percentile (x, on a log axis of ``1 / (1 - p)``,
    so the tail gets room), HdrHistogram's plot. ``marked`` percentiles and the maximum get a dot and their name
    (their values are in the dot's tooltip; the page lists them under the chart, where they cannot collide)."""
    positions = [nines(p) for p, _ in points]
    latencies = [v for _, v in points]

    def draw(width: int, variant: int) -> str:
        plot = _Plot.build(width, _height(width), percentile_axis(positions[-1]), duration_axis(latencies),
                           top=FONT + 12)
        line = " ".join(f"{plot.px(x):.1f},{plot.py(v):.1f}" for x, v in zip(positions, latencies, strict=True))
        parts = [f'<polyline class="line s0" points="{line}"/>']
        placed: list[tuple[float, float, float, float]] = []
        for p, v in points:
            if p not in marked and p != points[-1][0]:
                continue
            x, y = plot.px(nines(p)), plot.py(v)
            name = "max" if p == points[-1][0] and p not in marked else f"p{p:g}"
            parts.append(f'<circle class="mark" cx="{x:.1f}" cy="{y:.1f}" r="3.5"><title>{_e(name)} '
                         f"{_e(duration_label_exact(v))}</title></circle>")
            box = _label_box(plot, x, y, name, placed)
            if box is not None:
                placed.append(box)
                parts.append(f'<text class="mark-label" x="{box[0]:.1f}" y="{box[3] - 3:.1f}">{_e(name)}</text>')
        return plot.svg("".join(parts), variant, title)

    return responsive(draw)


def duration_label_exact(seconds: float) -> str:
    """A measured latency, three significant digits: ``812 ms``, ``41.2 us``, ``1.53 s``."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("\u00b5s", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e6:.2g} \u00b5s"


def _label_box(plot: _Plot, x: float, y: float, label: str,
               placed: Sequence[tuple[float, float, float, float]]) -> tuple[float, float, float, float] | None:
    """Where a marker's label goes (``left, top, right, bottom``): above and to the left of the dot (above a
    rising curve, so clear of it), else above and to the right, else below; ``None`` when every place overlaps
    a label already placed or leaves the chart."""
    w, h = text_width(label), FONT + 2
    for left, bottom in ((x - 6 - w, y - 5), (x + 6, y - 5), (x + 6, y + 5 + h)):
        box = (left, bottom - h, left + w, bottom)
        inside = box[0] >= plot.left and box[2] <= plot.width - 2 and box[1] >= 0 and box[3] <= plot.height
        if inside and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            return box
    return None


def bar_rows(title: str, rows: Sequence[tuple[str, Sequence[tuple[int, float, str]], str]]) -> str:
    """Horizontal bars, one per row ``(label, [(colour, value, name), ...], note)``: the segments stacked, the
    note (count, share) after the bar, all on one scale. Narrow charts put the label above its bar."""
    longest = max((sum(v for _, v, _ in segments) for _, segments, _ in rows), default=0.0) or 1.0

    def draw(width: int, variant: int) -> str:
        stacked = width < 500
        note_width = max((text_width(note) for _, _, note in rows), default=0.0) + 8
        label_width = 0.0 if stacked else min(max(text_width(label) for label, _, _ in rows) + 10, width * 0.36)
        row_height = 44.0 if stacked else 28.0
        bar_left, bar_span = label_width, width - label_width - note_width
        parts = []
        for i, (label, segments, note) in enumerate(rows):
            top = 6 + i * row_height
            bar_top = top + (FONT + 6 if stacked else 5)
            shown = _truncate(label, (width if stacked else label_width - 10))
            parts.append(f'<text class="bar-label" x="{0 if stacked else label_width - 8:.1f}" '
                         f'y="{(top + FONT if stacked else bar_top + 9):.1f}" dy="{0 if stacked else 0.35}em" '
                         f'text-anchor="{"start" if stacked else "end"}"><title>{_e(label)}</title>{_e(shown)}</text>')
            x = bar_left
            for colour, value, name in segments:
                w = value / longest * bar_span
                if w > 0:
                    parts.append(f'<rect class="f{colour}" x="{x:.1f}" y="{bar_top:.1f}" width="{w:.1f}" '
                                 f'height="18"><title>{_e(label)}: {_e(name)} {value:g}</title></rect>')
                x += w
            parts.append(f'<text class="bar-note" x="{x + 6:.1f}" y="{bar_top + 9:.1f}" dy="0.35em">'
                         f"{_e(note)}</text>")
        height = 10 + len(rows) * row_height
        return (f'<svg class="v{variant}" viewBox="0 0 {width} {height:.0f}" role="img" aria-label="{_e(title)}" '
                f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')

    return responsive(draw)


def _truncate(label: str, room: float) -> str:
    """``label``, its middle replaced by an ellipsis to fit ``room``: names that differ only at the end
    (``endpoint-eu-1``, ``endpoint-eu-2``) stay apart."""
    if text_width(label) <= room:
        return label
    keep = max(2, int(room / (CHAR_WIDTH * FONT)) - 1)
    return label[: (keep + 1) // 2] + "\u2026" + label[len(label) - keep // 2:]
