"""Every failure a user can meet, as one exception tree.

Each message says what failed, why, and what to do next; the CLI prints it on one line and exits
with ``exit_code`` (1 for failures, 2 for usage errors).
"""

from __future__ import annotations


class RevisionError(Exception):
    """Base class: a failure the user can act on (no traceback by default)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class UsageError(RevisionError):
    """The command or recipe was asked for wrongly (exit code 2)."""

    exit_code = 2


class DataError(RevisionError):
    """Input data (DICOM, manifest, labels) is missing, unreadable or inconsistent."""


class SelectionError(UsageError):
    """A selection expression does not parse, names an unknown column, or matches nothing."""


class ModelError(RevisionError):
    """A model file is unreadable, not what it claims to be, or does not fit its card."""


class ExportError(RevisionError):
    """ONNX export failed or the exported model disagrees with PyTorch."""


class PluginError(RevisionError):
    """A plugin could not be loaded or is not allowed."""


class UnknownNameError(UsageError):
    """A name looked up in a registry does not exist; the message lists close matches."""


class SignatureError(RevisionError):
    """A signing key or a signature is unusable (wrong password, unsupported key, bad file)."""


class DivergedError(RevisionError):
    """An unlearning run left non-finite weights (its learning rate was too high for it)."""
