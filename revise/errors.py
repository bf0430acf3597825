"""Every failure a user can meet, as one exception tree.

Each message says what failed, why, and what to do next; the CLI prints it on one line and exits
with ``exit_code`` (1 for failures, 2 for usage errors).
"""

from __future__ import annotations

from collections.abc import Callable


class RevisionError(Exception):
    """Base class: a failure the user can act on (no traceback by default).

    A message or hint that names options of a stage writes each as ``{name}`` (the library's
    name: a keyword argument, a field of the stage's options) and lists them in ``options``;
    each shell says them its own way (:meth:`said_as`: the CLI as flags, a recipe as keys)."""

    exit_code = 1

    def __init__(
        self, message: str, *, hint: str | None = None, options: tuple[str, ...] = ()
    ) -> None:
        self.message, self.hint, self.options = message, hint, options
        super().__init__(self.said_as())

    def said_as(self, spell: Callable[[str], str] = str) -> str:
        """The message (and hint) with every option named as ``spell`` says it."""

        def named(text: str) -> str:
            for option in self.options:
                text = text.replace("{" + option + "}", spell(option))
            return text

        text = named(self.message)
        return f"{text} ({named(self.hint)})" if self.hint else text

    def respell(self, spell: Callable[[str], str], *, before: str = "") -> None:
        """Name the options as ``spell`` says from now on (and start with ``before``): a shell
        passing a library's error on in its own words."""
        said = before + self.said_as(spell)
        self.message, self.hint, self.options = said, None, ()
        self.args = (said,)


class UsageError(RevisionError):
    """The command or recipe was asked for wrongly (exit code 2)."""

    exit_code = 2


class OptionError(UsageError):
    """One option of a stage has a wrong value: the message is ``<option> <rest>``, and
    ``rest`` or ``hint`` may name further ``options`` as ``{name}``."""

    def __init__(
        self, option: str, rest: str, *, hint: str | None = None, options: tuple[str, ...] = ()
    ) -> None:
        self.option = option
        super().__init__("{" + option + "} " + rest, hint=hint, options=(option, *options))


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
