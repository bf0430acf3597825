"""The report's figures, drawn with matplotlib and returned as inline SVG for ``report.html``:
grouped bars of accuracy by group, the confusion matrix, and the loss histograms of members
and non-members. How they are drawn and made fit for the page (the style, the palette, the
inline SVG, escaping) is :mod:`revise.validate.figure_style`.

Bars and series are coloured from the Okabe-Ito palette; the confusion matrix uses
ColorBrewer's single-hue "Blues" ramp, which reads the same without colour vision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from markupsafe import Markup

from revise.validate.figure_style import (
    GRID,
    INK,
    MEMBER_COLOUR,
    MUTED,
    NONMEMBER_COLOUR,
    SERIES_COLOURS,
    inline_svg,
    label_text,
    legend,
    legend_width,
    new_axes,
    style,
    text_width,
)


class Bar(NamedTuple):
    """One bar: a proportion with its 95% interval (or None) and the number of images."""

    value: float | None
    ci95: tuple[float, float] | None = None
    n: int | None = None


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt(x: float | None, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if _finite(x) else "n/a"


def clip(text: str, max_chars: int) -> str:
    """Shorten a long label for the axis, keeping both ends (names often differ only at the
    end: "finding 3", "CR-7 v2"); the full text goes in a tooltip."""
    if len(text) <= max_chars:
        return text
    tail = (max_chars - 1) // 2
    return text[: max_chars - 1 - tail] + "…" + text[len(text) - tail :]


# -- the figures -----------------------------------------------------------------------------------


def grouped_hbar(
    groups: Sequence[str],
    series: Sequence[tuple[str, Sequence[Bar | None]]],
    *,
    title: str,
    axis_label: str = "accuracy",
    domain: tuple[float, float] = (0.0, 1.0),
    colours: Sequence[str] = SERIES_COLOURS,
) -> Markup:
    """Grouped horizontal bars (one bar per series within each group) with 95% interval
    whiskers and the value printed beside each bar.

    Horizontal, because group names ("Borealis CR-7", class names) read best on the left and
    the chart grows downwards for 2-20 groups. ``series[i][1][j]`` is series i in group j;
    None (or a None value) is a missing bar, marked "n/a".
    """
    k = max(len(series), 1)
    n = max(len(groups), 1)
    slot = 0.82 / k  # each group takes 0.82 of its row, split between the series
    lo, hi = domain
    tips: dict[str, str] = {}
    with style():
        shown = [clip(str(g), 26) for g in groups]
        left = 10 + min(text_width(shown, 8), 150)
        top, bottom, right = 24.0, 32.0, 32.0
        plot_h = n * (k * (7.5 if k <= 3 else 6.0) + 7)
        width = max(left + 290 + right, legend_width([name for name, _ in series]))
        fig, ax = new_axes(
            width, top + plot_h + bottom, left=left, right=right, top=top, bottom=bottom
        )
        beside = ax.get_yaxis_transform()  # x in axes fraction, y in data
        for i, (name, bars) in enumerate(series):
            colour = colours[i % len(colours)]
            ys, values, whiskers, gids = [], [], [], []
            for j, group in enumerate(groups):
                bar = bars[j] if j < len(bars) else None
                y = j - 0.41 + (i + 0.5) * slot
                if bar is None or not _finite(bar.value):
                    ax.annotate(
                        f"n/a ({name})",
                        xy=(0.0, y),
                        xycoords=beside,
                        xytext=(3, 0),
                        textcoords="offset points",
                        va="center",
                        fontsize=6.5,
                        color=MUTED,
                        parse_math=False,
                    )
                    continue
                value = min(max(float(bar.value), lo), hi)
                tip = f"{group} - {name}: {_fmt(bar.value)}"
                if bar.ci95:
                    tip += f" (95% CI {_fmt(bar.ci95[0])}-{_fmt(bar.ci95[1])})"
                if bar.n is not None:
                    tip += f", n={bar.n}"
                gids.append(f"bar-{i}-{j}")
                tips[gids[-1]] = tip
                ys.append(y)
                values.append(value)
                if bar.ci95 and all(_finite(c) for c in bar.ci95):
                    a, b = (min(max(float(c), lo), hi) for c in bar.ci95)
                    whiskers.append((y, value, max(value - a, 0.0), max(b - value, 0.0)))
                ax.annotate(
                    _fmt(bar.value),
                    xy=(1.0, y),
                    xycoords=beside,
                    xytext=(4, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=6.5,
                    color=MUTED,
                )
            rects = ax.barh(ys, [v - lo for v in values], height=slot * 0.9, left=lo, color=colour)
            for rect, key in zip(
                rects, [t for t in tips if t.startswith(f"bar-{i}-")], strict=True
            ):
                rect.set_gid(key)
            if whiskers:
                wy, wx, below, above = zip(*whiskers, strict=True)
                ax.errorbar(
                    wx,
                    wy,
                    xerr=[below, above],
                    fmt="none",
                    ecolor=INK,
                    elinewidth=1.0,
                    capsize=2.2,
                    capthick=1.0,
                )
        ax.set_xlim(lo, hi)
        ax.set_ylim(n - 0.5, -0.5)  # the first group on top
        ax.set_yticks(range(len(groups)), labels=shown)
        for j, (label, group) in enumerate(zip(ax.get_yticklabels(), groups, strict=True)):
            label_text(label, str(group), shown[j], tips, f"group-{j}")
        ax.set_xlabel(axis_label, labelpad=2)
        ax.grid(axis="x", color=GRID, linewidth=0.8)
        ax.set_axisbelow(True)
        ax.spines["bottom"].set_visible(False)
        ax.tick_params(axis="both", length=0)
        legend(
            fig,
            [(name, {"color": colours[i % len(colours)]}) for i, (name, _) in enumerate(series)],
        )
        return inline_svg(fig, title, tips)


def confusion_heatmap(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], *, title: str
) -> Markup:
    """Confusion matrix, rows true class and columns predicted: counts in the cells, colour by
    the share of the row (so a rare class's errors are as visible as a common one's)."""
    import matplotlib
    from matplotlib.patches import Rectangle

    k = len(matrix)
    names = [str(labels[i]) if i < len(labels) else str(i) for i in range(k)]
    shown = [clip(name, 18) for name in names]
    cell = min(max(330 / max(k, 1), 16.5), 30.0)  # points
    font = min(8.0, cell * 0.42)
    ramp = matplotlib.colormaps["Blues"]
    tips: dict[str, str] = {}
    with style():
        longest = text_width(shown, 8)
        rotate = longest > cell - 3  # long column names are turned 45 degrees
        grid = max(k, 1) * cell
        left, right, top = 22 + longest + 6, 8.0, 6.0
        bottom = (longest * 0.72 + 12 if rotate else 14) + 16
        fig, ax = new_axes(
            left + grid + right, top + grid + bottom, left=left, right=right, top=top, bottom=bottom
        )
        for i, row in enumerate(matrix):
            total = sum(row)
            for j, count in enumerate(row):
                share = count / total if total else 0.0
                gid = f"cell-{i}-{j}"
                cell_patch = Rectangle(
                    (j - 0.5, i - 0.5), 1, 1, facecolor=ramp(share), edgecolor="white", lw=1.0
                )
                cell_patch.set_gid(gid)
                ax.add_artist(cell_patch)  # not add_patch: the limits are set below
                tips[gid] = (
                    f"true {names[i]}, predicted {names[j]}: {count} ({share:.1%} of the row)"
                )
                if count:
                    ink = "white" if share > 0.45 else INK
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=font, color=ink)
        ax.set_xlim(-0.5, k - 0.5)
        ax.set_ylim(k - 0.5, -0.5)
        ax.set_yticks(range(k), labels=shown)
        if rotate:
            ax.set_xticks(range(k), labels=shown, rotation=45, ha="right", rotation_mode="anchor")
        else:
            ax.set_xticks(range(k), labels=shown)
        for axis_labels, tag in ((ax.get_xticklabels(), "column"), (ax.get_yticklabels(), "row")):
            for i, label in enumerate(axis_labels):
                label_text(label, names[i], shown[i], tips, f"{tag}-{i}")
        ax.tick_params(length=0, pad=3)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel("predicted class", labelpad=2)
        ax.set_ylabel("true class", labelpad=2)
        return inline_svg(fig, title, tips)


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
) -> Markup:
    """Two histograms over shared bins, each as a share of its own group (groups differ in
    size), drawn as translucent bars with a solid step outline so overlaps stay readable."""
    bins = max(len(edges) - 1, 0)
    edges = [float(e) for e in edges[: bins + 1]]
    n1, n2 = sum(first), sum(second)
    groups = [
        (f"{first_label} (n={n1})", colours[0], [c / n1 if n1 else 0.0 for c in first[:bins]]),
        (f"{second_label} (n={n2})", colours[1], [c / n2 if n2 else 0.0 for c in second[:bins]]),
    ]
    with style():
        width = max(330.0, legend_width([name for name, _, _ in groups]))
        fig, ax = new_axes(width, 195, left=38, right=10, top=24, bottom=32)
        for _, colour, shares in groups:
            if not bins:
                continue
            shares = shares + [0.0] * (bins - len(shares))
            ax.stairs(shares, edges, fill=True, color=colour, alpha=0.4, linewidth=0)
            ax.stairs(shares, edges, baseline=None, color=colour, linewidth=1.6)
        if bins and edges[-1] > edges[0]:
            ax.set_xlim(edges[0], edges[-1])
        top = max((share for _, _, shares in groups for share in shares), default=0.0)
        ax.set_ylim(0, top * 1.08 or 1.0)  # head room above the tallest bar
        ax.grid(axis="y", color=GRID, linewidth=0.8)
        ax.set_axisbelow(True)
        ax.spines["left"].set_visible(False)
        ax.tick_params(axis="y", length=0)
        ax.set_xlabel(x_label, labelpad=2)
        ax.set_ylabel("share of group", labelpad=2)
        props = [{"facecolor": c, "edgecolor": c, "alpha": 0.45} for _, c, _ in groups]
        legend(fig, [(name, p) for (name, _, _), p in zip(groups, props, strict=True)])
        return inline_svg(fig, title, {})
