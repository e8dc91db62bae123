"""Grouped bar charts as inline SVG geometry: no JavaScript, no CDN, readable on a phone.

The view computes rectangles here and `portal/_chart.html` draws them; the SVG scales to its
container through its viewBox, and each bar carries a `<title>` so a hover (or a screen reader)
gives the exact number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WIDTH = 520
HEIGHT = 200
LEFT = 44  # room for the y-axis labels
BOTTOM = 28  # room for the x-axis labels
TOP = 10


@dataclass(frozen=True)
class Series:
    name: str
    values: list[int]
    css_class: str  # colour comes from the stylesheet (`.bar-requests`, …)


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    css_class: str
    title: str


@dataclass(frozen=True)
class Tick:
    x: float
    y: float
    label: str


@dataclass
class BarChart:
    width: int = WIDTH
    height: int = HEIGHT
    bars: list[Bar] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    legend: list[Series] = field(default_factory=list)
    baseline_y: float = HEIGHT - BOTTOM
    left: int = LEFT
    empty: bool = True


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above `value`: round axis labels."""
    if value <= 0:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def bar_chart(labels: list[str], series: list[Series]) -> BarChart:
    """One group of bars per label (a day), one bar per series, on a shared y axis from zero."""
    chart = BarChart(legend=list(series))
    if not labels or not series:
        return chart
    peak = max((max(s.values, default=0) for s in series), default=0)
    chart.empty = peak == 0
    top = _nice_ceiling(peak)
    plot_height = HEIGHT - BOTTOM - TOP
    plot_width = WIDTH - LEFT - 8
    group_width = plot_width / len(labels)
    bar_width = max(1.0, group_width * 0.8 / len(series))
    label_every = max(1, round(len(labels) / 7))  # at most ~7 dates under the axis
    for index, label in enumerate(labels):
        group_x = LEFT + index * group_width + group_width * 0.1
        for offset, one in enumerate(series):
            value = one.values[index] if index < len(one.values) else 0
            height = plot_height * value / top
            chart.bars.append(
                Bar(
                    x=round(group_x + offset * bar_width, 2),
                    y=round(TOP + plot_height - height, 2),
                    width=round(bar_width, 2),
                    height=round(height, 2),
                    css_class=one.css_class,
                    title=f"{label}: {value} {one.name.lower()}",
                )
            )
        if index % label_every == 0:
            chart.x_ticks.append(
                Tick(x=round(group_x + bar_width * len(series) / 2, 2), y=HEIGHT - 8, label=label)
            )
    # A half-way tick only when it is a whole number (a peak of 1 gets 0 and 1).
    for fraction in (0, 0.5, 1) if top % 2 == 0 else (0, 1):
        chart.y_ticks.append(
            Tick(
                x=LEFT - 6,
                y=round(TOP + plot_height * (1 - fraction) + 4, 2),
                label=f"{int(top * fraction):,}",
            )
        )
    return chart
