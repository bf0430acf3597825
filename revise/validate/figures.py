"""The report's figures, drawn with matplotlib and returned as inline SVG for ``report.html``.

Each figure is a ``matplotlib.figure.Figure`` (the object API: no pyplot, no figure manager),
drawn under one fixed style whatever the user's matplotlibrc says, and saved as SVG with its
text kept as text (small, selectable, searchable). The SVG is then made fit to sit inline in an
HTML page: no XML prologue or DOCTYPE, ``class="figure"`` and an accessible ``<title>`` on the
root, ids made unique to the figure (several figures share one page), and ``<title>``
tooltips on the bars and cells (the value, its interval, n) and on shortened labels.

The output is deterministic: a fixed ``svg.hashsalt`` and no date, so one report renders to
the same bytes every time. Group and class names are user data; matplotlib escapes them in the
SVG, mathtext is off for them (a ``$`` in a name stays a dollar sign), and the tooltips are
escaped here; only then is the SVG marked safe for the template.

matplotlib is imported when a figure is drawn, not when this module is: the CLI does not pay
for it on commands that draw nothing.

Colours are the Okabe-Ito palette (distinguishable with the common colour-vision deficiencies);
the confusion matrix uses ColorBrewer's single-hue "Blues" ramp, which reads the same without
colour vision.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

from markupsafe import Markup, escape

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Okabe-Ito: blue, orange, bluish green, reddish purple, sky blue, vermillion, yellow.
SERIES_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
MEMBER_COLOUR = "#D55E00"  # vermillion
NONMEMBER_COLOUR = "#0072B2"  # blue
INK = "#222222"
MUTED = "#666666"
GRID = "#dddddd"

# Applied over matplotlib's own defaults (not the user's matplotlibrc) while a figure is drawn.
_STYLE = {
    "svg.fonttype": "none",  # text stays text: small files, selectable, the page's font
    "svg.hashsalt": "revise",  # clip-path and marker ids from content, not a random salt
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # layout metrics; the browser falls back to sans-serif
    "font.size": 9,
    "text.color": INK,
    "axes.edgecolor": MUTED,
    "axes.labelcolor": INK,
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "xtick.labelcolor": INK,
    "ytick.labelcolor": INK,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.frameon": False,
    "legend.fontsize": 9,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}
_PT = 1 / 72  # figure sizes below are in points (1/72 inch, the SVG's user unit)


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


# -- drawing and saving --------------------------------------------------------------------------


@contextmanager
def _style() -> Iterator[None]:
    """matplotlib's defaults plus ours, for the duration of one figure, whatever the user's
    matplotlibrc; a group name without a glyph in the layout font is not worth a warning (the
    browser draws it in its own font)."""
    import matplotlib

    with matplotlib.rc_context(), warnings.catch_warnings():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(_STYLE)
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        yield


def _text_width(texts: Sequence[str], size: float) -> float:
    """Width in points of the widest of ``texts`` in the layout font at ``size`` points."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    prop = FontProperties(family="sans-serif", size=size)
    return max(
        (text_to_path.get_text_width_height_descent(t, prop, ismath=False)[0] for t in texts),
        default=0.0,
    )


def _legend_width(names: Sequence[str], size: float = 9) -> float:
    return sum(_text_width([name], size) + 28 for name in names) + 8


def _new_axes(
    width: float, height: float, *, left: float, right: float, top: float, bottom: float
) -> tuple[Figure, Any]:
    """A ``width`` x ``height`` figure (points) with one axes inside the given margins.

    The margins are computed from the labels' widths rather than by a layout engine, which
    would draw every figure twice.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * _PT, height * _PT))
    box = (left / width, bottom / height, 1 - (left + right) / width, 1 - (top + bottom) / height)
    return fig, fig.add_axes(box)


def _legend(fig: Figure, entries: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """A row of colour swatches with names across the top left of the figure."""
    from matplotlib.patches import Patch

    handles = [Patch(label=name, **props) for name, props in entries]
    legend = fig.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(0, 1),
        ncols=max(len(handles), 1),
        handlelength=1.0,
        handleheight=1.0,
        handletextpad=0.5,
        columnspacing=1.4,
        borderaxespad=0.3,
    )
    for text in legend.get_texts():
        text.set_parse_math(False)  # model and group names are user data: no mathtext


def _label(text_artist: Any, full: str, shown: str, tips: dict[str, str], gid: str) -> None:
    """No mathtext in user text; a shortened label gets the full text as its tooltip."""
    text_artist.set_parse_math(False)
    if shown != full:
        text_artist.set_gid(gid)
        tips[gid] = full


_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)
_STYLE_ELEMENT = re.compile(r"\s*<defs>\s*<style[^>]*>[^<]*</style>\s*</defs>")
_TAG = re.compile(r"<[^>]*>")  # text content is escaped by matplotlib: every "<" opens a tag
_ID = re.compile(r'(\bid="|xlink:href="#|url\(#)')
_GAP = re.compile(r">\s+<")
# What matplotlib draws these figures with; anything else (or an event-handler attribute) would
# mean text got out of its element, and the figure is refused rather than marked safe.
_ELEMENTS = frozenset({"svg", "g", "defs", "clipPath", "path", "rect", "use", "text", "title"})
_ELEMENT = re.compile(r"</?([^\s/>]+)")
_HANDLER = re.compile(r"\son\w+\s*=", re.I)


def _svg(fig: Figure, title: str, tips: dict[str, str]) -> Markup:
    """``fig`` as an inline ``<svg class="figure">`` element, marked safe for the template.

    Safe because every character of it comes from matplotlib's SVG writer (which escapes
    text and attribute values: group names reach it only as text) or from here (the tooltips
    and the title are escaped below); checked, too: only the elements these figures are drawn
    with, and no event-handler attribute.
    """
    buf = io.StringIO()
    fig.savefig(
        buf,
        format="svg",
        metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
    )
    svg = _PROLOGUE.sub("", buf.getvalue(), count=1)  # <?xml ...?> and <!DOCTYPE ...>
    # matplotlib's one stylesheet (``*{stroke-linejoin: round; ...}``) would apply to the whole
    # HTML page; as inherited presentation attributes on the root it applies to this figure.
    svg = _STYLE_ELEMENT.sub("", svg, count=1)
    # Ids unique on the page: several figures define "figure_1", "axes_1" and the same clip
    # paths; the prefix is a digest of the figure, so the output stays deterministic.
    prefix = "f" + hashlib.sha256((title + svg).encode()).hexdigest()[:8] + "-"
    svg = _TAG.sub(lambda tag: _ID.sub(lambda m: m.group(1) + prefix, tag.group(0)), svg)
    svg = _GAP.sub("><", svg).replace(" \n", " ").strip()
    for tag in _TAG.findall(svg):
        element = _ELEMENT.match(tag)
        if not element or element.group(1) not in _ELEMENTS or _HANDLER.search(tag):
            raise RuntimeError(f"unexpected markup in a report figure: {tag[:80]!r}")
    for gid, tip in tips.items():
        group = f'<g id="{prefix}{gid}">'
        svg = svg.replace(group, f"{group}<title>{escape(tip)}</title>", 1)
    root = '<svg class="figure" role="img" stroke-linejoin="round" stroke-linecap="butt"'
    svg = root + svg[len("<svg") :]
    head_end = svg.index(">") + 1
    return Markup(svg[:head_end] + f"<title>{escape(title)}</title>" + svg[head_end:])


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
    with _style():
        shown = [clip(str(g), 26) for g in groups]
        left = 10 + min(_text_width(shown, 8), 150)
        top, bottom, right = 24.0, 32.0, 32.0
        plot_h = n * (k * (7.5 if k <= 3 else 6.0) + 7)
        width = max(left + 290 + right, _legend_width([name for name, _ in series]))
        fig, ax = _new_axes(
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
            _label(label, str(group), shown[j], tips, f"group-{j}")
        ax.set_xlabel(axis_label, labelpad=2)
        ax.grid(axis="x", color=GRID, linewidth=0.8)
        ax.set_axisbelow(True)
        ax.spines["bottom"].set_visible(False)
        ax.tick_params(axis="both", length=0)
        _legend(
            fig,
            [(name, {"color": colours[i % len(colours)]}) for i, (name, _) in enumerate(series)],
        )
        return _svg(fig, title, tips)


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
    with _style():
        longest = _text_width(shown, 8)
        rotate = longest > cell - 3  # long column names are turned 45 degrees
        grid = max(k, 1) * cell
        left, right, top = 22 + longest + 6, 8.0, 6.0
        bottom = (longest * 0.72 + 12 if rotate else 14) + 16
        fig, ax = _new_axes(
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
                _label(label, names[i], shown[i], tips, f"{tag}-{i}")
        ax.tick_params(length=0, pad=3)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel("predicted class", labelpad=2)
        ax.set_ylabel("true class", labelpad=2)
        return _svg(fig, title, tips)


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
    with _style():
        width = max(330.0, _legend_width([name for name, _, _ in groups]))
        fig, ax = _new_axes(width, 195, left=38, right=10, top=24, bottom=32)
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
        _legend(fig, [(name, p) for (name, _, _), p in zip(groups, props, strict=True)])
        return _svg(fig, title, {})
