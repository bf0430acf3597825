"""The validation report as one self-contained HTML file (``report.html``).

It is read by a clinical ML engineer and by a regulatory reviewer, possibly offline and years
later, so it fetches nothing: inline CSS, inline SVG figures (matplotlib, ``figures``), and one
small inline script that records in the DOM how many figures rendered (for automated checks).

The page is a Jinja2 template (``templates/report.html.j2``, one partial per section under
``templates/sections/``) with autoescaping on: every string from the report (group names,
paths, messages) is user data and is escaped by the template engine, not by hand. The only
markup marked safe is the figures' SVG, which ``figures`` generates from numbers and escaped
text. :mod:`revise.validate.report_sections` turns the typed report into a flat view of what
each section shows (:mod:`revise.validate.report_view`), so the templates hold no digging
through the report; :mod:`revise.validate.report_format` says its numbers and names.

    html = render_html(report)          # report: the ValidationReport (or its JSON object)
    write_html(report, out / "report.html")
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from revise._validation_record import ValidationReport
from revise.validate.change_control_record import ChangeControl
from revise.validate.report_format import ci, num, short_digest
from revise.validate.report_sections import page_view


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("revise.validate", "templates"),
        autoescape=True,  # every template here is HTML; report strings are user data
        undefined=jinja2.StrictUndefined,  # a misspelt field fails, not renders as nothing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(num=num, ci=ci, short_digest=short_digest)
    return env


def render_html(
    report: ValidationReport | Mapping[str, Any], change_control: ChangeControl | None = None
) -> str:
    """The whole report page as one self-contained HTML string; ``report`` is the typed report
    or the JSON object revision_report.json holds (a wrong one is a pydantic ValidationError).
    Its first section is ``change_control``, the change-control summary (made from the report
    alone when not given)."""
    if not isinstance(report, ValidationReport):
        report = ValidationReport.model_validate(report)
    page = page_view(report, change_control)
    return _environment().get_template("report.html.j2").render(page=page)


def write_html(
    report: ValidationReport | Mapping[str, Any],
    path: Path,
    *,
    change_control: ChangeControl | None = None,
) -> Path:
    """Render ``report`` and write it to ``path`` atomically (complete or absent)."""
    from revise._io.atomic import atomic_path

    path = Path(path)
    text = render_html(report, change_control)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
