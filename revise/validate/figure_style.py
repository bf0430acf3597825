"""The style and the inline SVG of the report's figures (:mod:`revise.validate.figures`).

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

Colours are the Okabe-Ito palette (distinguishable with the common colour-vision deficiencies).
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

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


# -- drawing --------------------------------------------------------------------------


@contextmanager
def style() -> Iterator[None]:
    """matplotlib's defaults plus ours, for the duration of one figure, whatever the user's
    matplotlibrc; a group name without a glyph in the layout font is not worth a warning (the
    browser draws it in its own font)."""
    import matplotlib

    with matplotlib.rc_context(), warnings.catch_warnings():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(_STYLE)
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        yield


def text_width(texts: Sequence[str], size: float) -> float:
    """Width in points of the widest of ``texts`` in the layout font at ``size`` points."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    prop = FontProperties(family="sans-serif", size=size)
    return max(
        (text_to_path.get_text_width_height_descent(t, prop, ismath=False)[0] for t in texts),
        default=0.0,
    )


def legend_width(names: Sequence[str], size: float = 9) -> float:
    return sum(text_width([name], size) + 28 for name in names) + 8


def new_axes(
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


def legend(fig: Figure, entries: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """A row of colour swatches with names across the top left of the figure."""
    from matplotlib.patches import Patch

    handles = [Patch(label=name, **props) for name, props in entries]
    box = fig.legend(
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
    for text in box.get_texts():
        text.set_parse_math(False)  # model and group names are user data: no mathtext


def label_text(text_artist: Any, full: str, shown: str, tips: dict[str, str], gid: str) -> None:
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


def inline_svg(fig: Figure, title: str, tips: dict[str, str]) -> Markup:
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
