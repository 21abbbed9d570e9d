"""Small SVG charts drawn on the server: no chart library, no script, nothing inline the
Content-Security-Policy forbids (presentation attributes and CSS classes only). Every text that
goes in is escaped here, so the result is safe to put in a template as is."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 360, 140
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 36, 8, 10, 22


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str = ""  # shown next to the point and in its tooltip, e.g. "v3"


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "-"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.1f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.0f}k"
    if abs(value) >= 1000:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}" if float(value).is_integer() or abs(value) >= 10 else f"{value:.2f}"


def _nice_max(value: float) -> float:
    """1, 2 or 5 times a power of ten at or above `value` (the y axis's top)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value)


def _frame(title: str, body: list[str], y_top: float, x_labels: list[tuple[float, str]]) -> Markup:
    plot_bottom = HEIGHT - PAD_BOTTOM
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{escape(title)}">', f"<title>{escape(title)}</title>",
             f'<line class="axis" x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{plot_bottom}"/>',
             f'<line class="axis" x1="{PAD_LEFT}" y1="{plot_bottom}" x2="{WIDTH - PAD_RIGHT}" y2="{plot_bottom}"/>',
             f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 4}" text-anchor="end">{escape(_fmt(y_top))}</text>',
             f'<text x="{PAD_LEFT - 4}" y="{plot_bottom}" text-anchor="end">0</text>']
    parts += body
    parts += [f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="middle">{escape(text)}</text>' for x, text in x_labels]
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(bars: Sequence[tuple[str, float]], *, title: str, label_every: int = 0) -> Markup:
    """One bar per (label, value), e.g. per day; every `label_every`-th label is printed under
    the axis (0: about six of them). Each bar's tooltip gives its label and value."""
    if not bars:
        return _frame(title, [], 1.0, [])
    top = _nice_max(max(v for _, v in bars))
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM
    slot = plot_w / len(bars)
    every = label_every or max(1, math.ceil(len(bars) / 6))
    body, labels = [], []
    for i, (label, value) in enumerate(bars):
        h = plot_h * max(0.0, value) / top
        x = PAD_LEFT + i * slot + slot * 0.15
        shown = max(h, 1.0)  # a zero day is a hairline, so "no data" and "zero" look different
        body.append(f'<rect class="bar{" zero" if value <= 0 else ""}" x="{x:.1f}" y="{HEIGHT - PAD_BOTTOM - shown:.1f}" '
                    f'width="{slot * 0.7:.1f}" height="{shown:.1f}"><title>{escape(label)}: {escape(_fmt(value))}'
                    f"</title></rect>")
        if i % every == 0:
            labels.append((PAD_LEFT + (i + 0.5) * slot, label))
    return _frame(title, body, top, labels)


def line_chart(points: Sequence[Point], *, title: str, x_label: str, y_max: float | None = None) -> Markup:
    """Points joined in x order, each marked and labelled (e.g. model versions: accuracy against
    labels spent). The x axis runs from 0 to the largest x."""
    points = sorted(points, key=lambda p: p.x)
    if not points:
        return _frame(title, [], y_max or 1.0, [])
    top = y_max if y_max is not None else _nice_max(max(p.y for p in points))
    right = _nice_max(max(p.x for p in points))
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM

    def xy(p: Point) -> tuple[float, float]:
        return PAD_LEFT + plot_w * p.x / right, HEIGHT - PAD_BOTTOM - plot_h * min(p.y, top) / top

    coords = [xy(p) for p in points]
    body = [f'<polyline class="line" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in coords)}"/>']
    for p, (x, y) in zip(points, coords):
        body.append(f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3"><title>{escape(p.label)}: '
                    f'{escape(_fmt(p.y))} at {escape(_fmt(p.x))} {escape(x_label)}</title></circle>')
        if p.label:
            body.append(f'<text x="{x:.1f}" y="{y - 6:.1f}" text-anchor="middle">{escape(p.label)}</text>')
    labels = [(PAD_LEFT, "0"), (PAD_LEFT + plot_w / 2, x_label), (WIDTH - PAD_RIGHT - 8, _fmt(right))]
    return _frame(title, body, top, labels)
