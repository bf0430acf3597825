"""``~=`` patterns compiled with RE2 (linear time whatever the pattern), and the rewrite to
suggest for the constructs RE2 leaves out.
"""

from __future__ import annotations

import functools
import re

import re2

# What RE2 leaves out on purpose (it needs backtracking), as RE2's error reads, with the rewrite.
_UNSUPPORTED = (
    (re.compile(r"escape sequence: \\[1-9gk]|operator: \(\?P$"), "backreferences"),
    (re.compile(r"operator: \(\?<[=!]"), "lookbehinds"),
    (re.compile(r"operator: \(\?[=!]"), "lookaheads"),
    (re.compile(r"operator: \(\?>|repetition operator: [*+?]\+"), "atomic groups"),
)
_REWRITE = {
    "backreferences": "spell the repeated text out",
    "lookbehinds": "combine ~= comparisons with and / not instead",
    "lookaheads": "combine ~= comparisons with and / not instead",
    "atomic groups": "use plain groups and repeats: RE2 never backtracks anyway",
}


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # RE2 would print its own line (with the pattern) on stderr
    return options


_OPTIONS = _re2_options()


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> re2._Regexp:
    """Compile a ``~=`` pattern once, with RE2: its matching time is linear in the text whatever
    the pattern, so no pattern can make a selection hang (:mod:`re` backtracks, exponentially
    on e.g. ``(a|a)*b``). Raises ValueError saying what is wrong and how to fix it."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        raise ValueError(_problem(exc)) from None


def _problem(exc: re2.error) -> str:
    reason = exc.args[0] if exc.args else ""
    reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
    for construct, name in _UNSUPPORTED:
        if construct.search(reason):
            return (
                f"{name} are not supported: ~= matches with RE2, which runs in linear time and "
                f"has no {name}; rewrite the pattern without them ({_REWRITE[name]})"
            )
    return f"{reason} (~= uses RE2 syntax)"
