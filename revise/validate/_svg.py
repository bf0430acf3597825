"""Small inline-SVG figures for the HTML report: no plotting library, no external resources.

Every figure is an ``<svg class="figure">`` with a ``viewBox`` (so CSS can scale it down), a
``<title>`` (its accessible name), and every string in it passed through ``html.escape``:
group and class names are user data.

Colours are the Okabe-Ito palette (distinguishable with the common colour-vision deficiencies);
the heatmap uses a single-hue sequential ramp, which reads the same without colour vision.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import NamedTuple

# Okabe-Ito: blue, orange, bluish green, reddish purple, sky blue, vermillion, yellow.
SERIES_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
MEMBER_COLOUR = "#D55E00"  # vermillion
NONMEMBER_COLOUR = "#0072B2"  # blue
# ColorBrewer "Blues" (9 classes): sequential, single hue, perceptually ordered.
_HEAT_RAMP = (
    "#f7fbff",
    "#deebf7",
    "#c6dbef",
    "#9ecae1",
    "#6baed6",
    "#4292c6",
    "#2171b5",
    "#08519c",
    "#08306b",
)
_INK = "#222"
_MUTED = "#666"
_GRID = "#ddd"
_FONT = 12
_CHAR_W = 0.6  # average glyph width of a sans-serif font, in em (for layout only)


class Bar(NamedTuple):
    """One bar: a proportion with its 95% interval (or None) and the number of images."""

    value: float | None
    ci95: tuple[float, float] | None = None
    n: int | None = None


def esc(value: object) -> str:
    """Escape for HTML text and attribute values (SVG inline in HTML is parsed the same way)."""
    return html.escape(str(value), quote=True)


def _f(x: float) -> str:
    """Coordinates to one decimal: small files, no visible rounding."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _text_width(text: str, size: float = _FONT) -> float:
    return len(text) * size * _CHAR_W


def _clip(text: str, max_chars: int) -> str:
    """Shorten a long label for the axis, keeping both ends (names often differ only at the
    end: "finding 3", "CR-7 v2"); the full text goes in a <title> tooltip."""
    if len(text) <= max_chars:
        return text
    tail = (max_chars - 1) // 2
    return text[: max_chars - 1 - tail] + "…" + text[len(text) - tail :]


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt(x: float | None, digits: int = 3) -> str:
    if not _finite(x):
        return "n/a"
    return f"{x:.{digits}f}"


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(target, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-6:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _tick_label(t: float, ticks: Sequence[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    if decimals and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
        decimals += 1  # 0.25 steps need two decimals
    return f"{t:.{decimals}f}"


def _svg_open(width: float, height: float, title: str) -> str:
    return (
        f'<svg class="figure" role="img" viewBox="0 0 {_f(width)} {_f(height)}" '
        f'width="{_f(width)}" height="{_f(height)}" '
        f'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif" '
        f'font-size="{_FONT}"><title>{esc(title)}</title>'
    )


def _legend(items: Sequence[tuple[str, str]], x: float, y: float, opacity: float = 1.0) -> str:
    """A row of colour swatches with names, starting at (x, y) (y = text baseline)."""
    parts = []
    for name, colour in items:
        parts.append(
            f'<rect x="{_f(x)}" y="{_f(y - 10)}" width="12" height="12" fill="{colour}" '
            f'fill-opacity="{opacity}" stroke="{colour}"/>'
            f'<text x="{_f(x + 17)}" y="{_f(y)}" fill="{_INK}">{esc(name)}</text>'
        )
        x += 17 + _text_width(name) + 16
    return "".join(parts)


def _legend_width(items: Sequence[tuple[str, str]]) -> float:
    return sum(17 + _text_width(name) + 16 for name, _ in items)


def grouped_hbar(
    groups: Sequence[str],
    series: Sequence[tuple[str, Sequence[Bar | None]]],
    *,
    title: str,
    axis_label: str = "accuracy",
    domain: tuple[float, float] = (0.0, 1.0),
    colours: Sequence[str] = SERIES_COLOURS,
) -> str:
    """Grouped horizontal bars (one bar per series within each group) with 95% interval
    whiskers and the value printed beside each bar.

    Horizontal, because group names ("Borealis CR-7", class names) read best on the left and
    the chart grows downwards for 2-20 groups. ``series[i][1][j]`` is series i in group j;
    None (or a None value) is a missing bar, marked "n/a".
    """
    k = max(len(series), 1)
    bar_h = 10.0 if k <= 3 else 8.0
    gap = 9.0
    label_chars = 26
    shown = [_clip(str(g), label_chars) for g in groups]
    label_w = min(max((_text_width(s) for s in shown), default=0) + 10, 190)
    plot_w = 280.0
    value_w = 46.0
    left = 8 + label_w
    top = 30.0
    band = k * bar_h + gap
    plot_h = max(len(groups), 1) * band
    legend_w = _legend_width([(name, "") for name, _ in series])
    width = max(left + plot_w + value_w + 8, legend_w + 16)
    height = top + plot_h + 40
    lo, hi = domain

    def x_of(v: float) -> float:
        v = min(max(v, lo), hi)
        return left + (v - lo) / (hi - lo) * plot_w

    out = [_svg_open(width, height, title)]
    out.append(
        _legend([(name, colours[i % len(colours)]) for i, (name, _) in enumerate(series)], 8, 16)
    )
    ticks = nice_ticks(lo, hi, 5)
    for t in ticks:
        x = x_of(t)
        out.append(
            f'<line x1="{_f(x)}" y1="{_f(top)}" x2="{_f(x)}" y2="{_f(top + plot_h)}" '
            f'stroke="{_GRID}"/>'
            f'<text x="{_f(x)}" y="{_f(top + plot_h + 15)}" text-anchor="middle" '
            f'fill="{_MUTED}" font-size="11">{esc(_tick_label(t, ticks))}</text>'
        )
    out.append(
        f'<text x="{_f(left + plot_w / 2)}" y="{_f(top + plot_h + 32)}" text-anchor="middle" '
        f'fill="{_INK}">{esc(axis_label)}</text>'
    )
    for j, (group, label) in enumerate(zip(groups, shown, strict=True)):
        y0 = top + j * band + gap / 2
        out.append(
            f'<text x="{_f(left - 6)}" y="{_f(y0 + k * bar_h / 2 + 4)}" text-anchor="end" '
            f'fill="{_INK}"><title>{esc(group)}</title>{esc(label)}</text>'
        )
        for i, (name, bars) in enumerate(series):
            bar = bars[j] if j < len(bars) else None
            y = y0 + i * bar_h
            colour = colours[i % len(colours)]
            if bar is None or not _finite(bar.value):
                out.append(
                    f'<text x="{_f(left + 4)}" y="{_f(y + bar_h - 1.5)}" font-size="9" '
                    f'fill="{_MUTED}">n/a ({esc(name)})</text>'
                )
                continue
            tip = f"{group} - {name}: {_fmt(bar.value)}"
            if bar.ci95:
                tip += f" (95% CI {_fmt(bar.ci95[0])}-{_fmt(bar.ci95[1])})"
            if bar.n is not None:
                tip += f", n={bar.n}"
            x1 = x_of(bar.value)
            out.append(
                f'<rect x="{_f(left)}" y="{_f(y + 0.5)}" width="{_f(max(x1 - left, 0.5))}" '
                f'height="{_f(bar_h - 1)}" fill="{colour}"><title>{esc(tip)}</title></rect>'
            )
            if bar.ci95 and all(_finite(c) for c in bar.ci95):
                a, b = x_of(bar.ci95[0]), x_of(bar.ci95[1])
                yc = y + bar_h / 2
                cap = bar_h * 0.35
                out.append(
                    f'<path d="M{_f(a)} {_f(yc)}H{_f(b)}M{_f(a)} {_f(yc - cap)}V{_f(yc + cap)}'
                    f'M{_f(b)} {_f(yc - cap)}V{_f(yc + cap)}" stroke="{_INK}" '
                    f'stroke-width="1.2" fill="none"/>'
                )
            out.append(
                f'<text x="{_f(left + plot_w + 6)}" y="{_f(y + bar_h - 1.5)}" font-size="9" '
                f'fill="{_MUTED}">{esc(_fmt(bar.value))}</text>'
            )
    out.append(
        f'<line x1="{_f(left)}" y1="{_f(top)}" x2="{_f(left)}" y2="{_f(top + plot_h)}" '
        f'stroke="{_MUTED}"/></svg>'
    )
    return "".join(out)


def _heat_colour(share: float) -> str:
    """Colour of a share in [0, 1], interpolated between the stops of the ramp."""
    pos = min(max(share, 0.0), 1.0) * (len(_HEAT_RAMP) - 1)
    i = min(int(pos), len(_HEAT_RAMP) - 2)
    lo, hi = _HEAT_RAMP[i], _HEAT_RAMP[i + 1]
    t = pos - i
    rgb = (round(int(lo[k : k + 2], 16) * (1 - t) + int(hi[k : k + 2], 16) * t) for k in (1, 3, 5))
    return "#" + "".join(f"{c:02x}" for c in rgb)


def confusion_heatmap(matrix: Sequence[Sequence[int]], labels: Sequence[str], *, title: str) -> str:
    """Confusion matrix, rows true class and columns predicted: counts in the cells, colour by
    the share of the row (so a rare class's errors are as visible as a common one's)."""
    k = len(matrix)
    names = [str(labels[i]) if i < len(labels) else str(i) for i in range(k)]
    shown = [_clip(n, 18) for n in names]
    cell = min(max(440 / max(k, 1), 22.0), 40.0)
    longest = max((_text_width(s, 11) for s in shown), default=0)
    rotate = longest > cell - 4  # long column names are turned 45 degrees
    left = 28 + longest + 8
    top = 10.0
    grid = k * cell
    below = (longest * 0.72 + 14 if rotate else 18) + 22
    width = left + grid + 12
    height = top + grid + below
    font = min(11.0, cell * 0.42)
    out = [_svg_open(width, height, title)]
    for i, row in enumerate(matrix):
        total = sum(row)
        for j, count in enumerate(row):
            share = count / total if total else 0.0
            x, y = left + j * cell, top + i * cell
            ink = "#fff" if share > 0.45 else _INK
            tip = f"true {names[i]}, predicted {names[j]}: {count} ({share:.1%} of the row)"
            out.append(
                f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(cell)}" height="{_f(cell)}" '
                f'fill="{_heat_colour(share)}" stroke="#fff" stroke-width="1">'
                f"<title>{esc(tip)}</title></rect>"
            )
            if count:
                out.append(
                    f'<text x="{_f(x + cell / 2)}" y="{_f(y + cell / 2 + font * 0.35)}" '
                    f'text-anchor="middle" font-size="{_f(font)}" fill="{ink}" '
                    f'pointer-events="none">{count}</text>'
                )
    for i, (name, label) in enumerate(zip(names, shown, strict=True)):
        yc = top + i * cell + cell / 2 + 4
        out.append(
            f'<text x="{_f(left - 5)}" y="{_f(yc)}" text-anchor="end" font-size="11" '
            f'fill="{_INK}"><title>{esc(name)}</title>{esc(label)}</text>'
        )
        xc = left + i * cell + cell / 2
        if rotate:
            yb = top + grid + 8
            out.append(
                f'<text x="{_f(xc)}" y="{_f(yb)}" text-anchor="end" font-size="11" '
                f'fill="{_INK}" transform="rotate(-45 {_f(xc)} {_f(yb)})" dy="0.6em">'
                f"<title>{esc(name)}</title>{esc(label)}</text>"
            )
        else:
            out.append(
                f'<text x="{_f(xc)}" y="{_f(top + grid + 14)}" text-anchor="middle" '
                f'font-size="11" fill="{_INK}"><title>{esc(name)}</title>{esc(label)}</text>'
            )
    out.append(
        f'<text x="{_f(left + grid / 2)}" y="{_f(height - 6)}" text-anchor="middle" '
        f'fill="{_INK}">predicted class</text>'
        f'<text x="12" y="{_f(top + grid / 2)}" text-anchor="middle" fill="{_INK}" '
        f'transform="rotate(-90 12 {_f(top + grid / 2)})">true class</text></svg>'
    )
    return "".join(out)


def overlaid_histogram(
    edges: Sequence[float],
    first: Sequence[int],
    second: Sequence[int],
    *,
    first_label: str,
    second_label: str,
    title: str,
    x_label: str = "per-sample cross-entropy loss",
    colours: tuple[str, str] = (MEMBER_COLOUR, NONMEMBER_COLOUR),
) -> str:
    """Two histograms over shared bins, each as a share of its own group (groups differ in
    size), drawn as translucent bars with a solid step outline so overlaps stay readable."""
    bins = max(len(edges) - 1, 0)
    n1, n2 = sum(first), sum(second)
    legend = [(f"{first_label} (n={n1})", colours[0]), (f"{second_label} (n={n2})", colours[1])]
    width, height = max(440.0, _legend_width(legend) + 16), 260.0
    left, right, top, bottom = 48.0, 12.0, 34.0, 44.0
    plot_w, plot_h = width - left - right, height - top - bottom
    shares = [
        [c / n1 if n1 else 0.0 for c in first[:bins]],
        [c / n2 if n2 else 0.0 for c in second[:bins]],
    ]
    y_max = max((s for group in shares for s in group), default=0.0) or 1.0
    y_ticks = nice_ticks(0.0, y_max, 5)
    if len(y_ticks) > 1 and y_ticks[-1] < y_max * 0.999:  # head room: end on a tick above
        y_ticks.append(round(y_ticks[-1] + y_ticks[1] - y_ticks[0], 10))
    y_top = max(y_ticks[-1], y_max)
    x_lo = float(edges[0]) if bins else 0.0
    x_hi = float(edges[-1]) if bins else 1.0
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0

    def x_of(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * plot_w

    def y_of(v: float) -> float:
        return top + plot_h - v / y_top * plot_h

    out = [_svg_open(width, height, title)]
    out.append(_legend(legend, 8, 16, opacity=0.45))
    for t in y_ticks:
        y = y_of(t)
        out.append(
            f'<line x1="{_f(left)}" y1="{_f(y)}" x2="{_f(left + plot_w)}" y2="{_f(y)}" '
            f'stroke="{_GRID}"/><text x="{_f(left - 5)}" y="{_f(y + 4)}" text-anchor="end" '
            f'font-size="11" fill="{_MUTED}">{esc(_tick_label(t, y_ticks))}</text>'
        )
    for colour, group in zip(colours, shares, strict=True):
        path = []
        for b, share in enumerate(group):
            xa, xb = x_of(float(edges[b])), x_of(float(edges[b + 1]))
            if share > 0:
                out.append(
                    f'<rect x="{_f(xa)}" y="{_f(y_of(share))}" width="{_f(max(xb - xa, 0.5))}" '
                    f'height="{_f(y_of(0) - y_of(share))}" fill="{colour}" fill-opacity="0.4"/>'
                )
            path.append(f"{'M' if b == 0 else 'L'}{_f(xa)} {_f(y_of(share))}H{_f(xb)}")
        if path:
            out.append(
                f'<path d="{"".join(path)}" stroke="{colour}" stroke-width="1.6" fill="none"/>'
            )
    x_ticks = nice_ticks(x_lo, x_hi, 6)
    for t in x_ticks:
        x = x_of(t)
        out.append(
            f'<line x1="{_f(x)}" y1="{_f(top + plot_h)}" x2="{_f(x)}" '
            f'y2="{_f(top + plot_h + 4)}" stroke="{_MUTED}"/>'
            f'<text x="{_f(x)}" y="{_f(top + plot_h + 16)}" text-anchor="middle" '
            f'font-size="11" fill="{_MUTED}">{esc(_tick_label(t, x_ticks))}</text>'
        )
    out.append(
        f'<line x1="{_f(left)}" y1="{_f(top + plot_h)}" x2="{_f(left + plot_w)}" '
        f'y2="{_f(top + plot_h)}" stroke="{_MUTED}"/>'
        f'<text x="{_f(left + plot_w / 2)}" y="{_f(height - 8)}" text-anchor="middle" '
        f'fill="{_INK}">{esc(x_label)}</text>'
        f'<text x="12" y="{_f(top + plot_h / 2)}" text-anchor="middle" fill="{_INK}" '
        f'transform="rotate(-90 12 {_f(top + plot_h / 2)})">share of group</text></svg>'
    )
    return "".join(out)
