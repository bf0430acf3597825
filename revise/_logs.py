"""Quieting other libraries' logs where revise reports the failure itself."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def loggers_silenced(*names: str) -> Iterator[None]:
    """Raise the named loggers to CRITICAL for the block and restore their levels after: for
    libraries that log a traceback before raising what revise reports on one line."""
    levels = {logging.getLogger(name): logging.getLogger(name).level for name in names}
    for logger in levels:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in levels.items():
            logger.setLevel(level)
