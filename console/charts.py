"""The overview's charts: server-rendered SVG, so the Content-Security-Policy stays as strict
(no script draws them, and no ``style`` attribute: colours and patterns are SVG presentation
attributes, which the policy does not govern).

Every line is told apart without colour: its own dash pattern, its own marker shape (drawn
on a subset of its points), and a legend showing both beside its name. Each chart is an
``img`` for assistive technology, titled, with a description giving each line's total and
peak.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 190
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 30, 24
#: markers drawn per line at most (every k-th point), so dense lines stay readable
MARKERS = 24


@dataclass(frozen=True)
class Look:
    """How one line is drawn: colour, dash pattern (``""``: solid) and marker shape."""

    colour: str
    dash: str
    marker: str


#: the looks, in order: each differs from the others in dash and marker, not only colour
LOOKS = (
    Look("#2f5fd0", "", "circle"),
    Look("#b42318", "6 3", "square"),
    Look("#a15c00", "2 3", "triangle"),
    Look("#1f7a3d", "10 3 2 3", "diamond"),
)


@dataclass(frozen=True)
class Line:
    label: str
    values: Sequence[float | None]


@dataclass(frozen=True)
class Chart:
    """One chart: ``starts`` are the buckets' start times (unix seconds), ``width`` their
    length in seconds."""

    id: str
    title: str
    unit: str
    starts: Sequence[float]
    width: int
    lines: Sequence[Line]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above ``value`` (1 for 0)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power:
            return step * power
    return 10.0 * power  # pragma: no cover - the loop ends at 10


def _number(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"


def _clock(at: float) -> str:
    return time.strftime("%H:%M", time.gmtime(at))


def _marker(shape: str, x: float, y: float, colour: str) -> str:
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>'
    if shape == "square":
        return f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="{colour}"/>'
    if shape == "triangle":
        points = f"{x:.1f},{y - 4:.1f} {x - 4:.1f},{y + 3:.1f} {x + 4:.1f},{y + 3:.1f}"
        return f'<polygon points="{points}" fill="{colour}"/>'
    points = f"{x:.1f},{y - 4:.1f} {x + 4:.1f},{y:.1f} {x:.1f},{y + 4:.1f} {x - 4:.1f},{y:.1f}"
    return f'<polygon points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>'


def _ticks(starts: Sequence[float], width: int) -> list[int]:
    """Indexes of the buckets labelled on the time axis: on round times, about six."""
    span = len(starts) * width
    step = next((s for s in (600, 900, 1800, 3600, 7200, 14400) if span / s <= 8), 21600)
    return [i for i, at in enumerate(starts) if int(at) % step == 0]


def svg(chart: Chart) -> Markup:
    """The chart as an inline ``<svg>`` element."""
    n = len(chart.starts)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    peak = max((v for line in chart.lines for v in line.values if v is not None), default=0.0)
    top = nice_ceiling(peak)

    def x(i: int) -> float:
        return LEFT + (i + 0.5) * plot_w / max(n, 1)

    def y(v: float) -> float:
        return TOP + plot_h - v / top * plot_h

    cid = escape(chart.id)
    title = escape(chart.title)
    parts = [
        f'<svg class="chart" id="{cid}" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img"'
        f' aria-labelledby="{cid}-title {cid}-desc" xmlns="http://www.w3.org/2000/svg"'
        ' font-family="system-ui, sans-serif" font-size="11">',
        f'<title id="{cid}-title">{title}</title>',
        f'<desc id="{cid}-desc">{escape(_describe(chart))}</desc>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff"'
        ' stroke="#e3e6ec"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):  # grid and the value axis
        gy = y(top * fraction)
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{gy:.1f}" y2="{gy:.1f}" stroke="#e3e6ec"/>'
            f'<text x="{LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end" fill="#6b7280">'
            f"{escape(_number(top * fraction))}</text>"
        )
    parts.append(  # the unit, above the value axis
        f'<text x="4" y="{TOP - 8}" fill="#6b7280">{escape(chart.unit)}</text>'
    )
    for i in _ticks(chart.starts, chart.width):  # the time axis, UTC
        parts.append(
            f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{TOP + plot_h}" y2="{TOP + plot_h + 4}"'
            ' stroke="#6b7280"/>'
            f'<text x="{x(i):.1f}" y="{HEIGHT - 6}" text-anchor="middle" fill="#6b7280">'
            f"{_clock(chart.starts[i])}</text>"
        )
    every = max(1, math.ceil(n / MARKERS))
    legend_x = LEFT + 90
    for index, line in enumerate(chart.lines):
        look = LOOKS[index % len(LOOKS)]
        dash = f' stroke-dasharray="{look.dash}"' if look.dash else ""
        parts.append(f'<g class="series" data-label="{escape(line.label)}">')
        for run in _runs(line.values):
            points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in run)
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="{look.colour}"'
                f' stroke-width="1.8"{dash}/>'
            )
        for i, v in enumerate(line.values):
            if v is not None and (i % every == every - 1 or i == n - 1):
                parts.append(_marker(look.marker, x(i), y(v), look.colour))
        parts.append("</g>")
        # the legend: a sample of the line with its marker, then its name
        ly = 12
        parts.append(
            f'<g class="legend"><line x1="{legend_x}" x2="{legend_x + 26}" y1="{ly}" y2="{ly}"'
            f' stroke="{look.colour}" stroke-width="1.8"{dash}/>'
            + _marker(look.marker, legend_x + 13, ly, look.colour)
            + f'<text x="{legend_x + 32}" y="{ly + 4}" fill="#1d2330">{escape(line.label)}</text>'
            "</g>"
        )
        legend_x += 44 + 7 * len(line.label)
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text in it went through escape()


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """The stretches of consecutive known values (a gap breaks the line)."""
    runs: list[list[tuple[int, float]]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((i, v))
    return [r for r in runs if r]


def _describe(chart: Chart) -> str:
    """Each line's total (for counts) or peak, in words, for screen readers."""
    span = f"{_clock(chart.starts[0])} to {_clock(chart.starts[-1] + chart.width)} UTC"
    said = []
    for line in chart.lines:
        known = [v for v in line.values if v is not None]
        if not known:
            said.append(f"{line.label}: no data")
        else:
            said.append(
                f"{line.label}: total {_number(sum(known))}, peak {_number(max(known))}"
                if chart.unit.startswith("per ")
                else f"{line.label}: peak {_number(max(known))}, last {_number(known[-1])}"
            )
    return f"{chart.title}, {span}. " + "; ".join(said) + "."
