"""ModelCard: what a model expects and predicts, saved beside its weights as JSON."""

from __future__ import annotations

import json
import numbers
import os
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from revise._io import not_utf8, write_json_atomic
from revise.errors import ModelError
from revise.registry import did_you_mean

# Bounds on what a card may ask for, so that a card cannot make revise allocate without limit:
# each side of the input, the values of one input image (channels x height x width: 256 MiB as
# float32), and the number of classes.
MAX_INPUT_SIDE = 4096
MAX_INPUT_VALUES = 4 * 4096 * 4096
MAX_CLASSES = 100_000

# What a network may return (the card's ``output``), each named for the network's last
# operation, as ONNX and torch name it: what a user reads off the graph.
OUTPUT_KINDS = {
    "logits": "raw class scores",
    "softmax": "class probabilities (each row is non-negative and sums to 1)",
    "log_softmax": "log class probabilities",
    "sigmoid": "one probability per class, each in [0, 1] on its own (multi-label)",
}
# Names people give those outputs, for the did-you-mean of a card that uses one.
_OUTPUT_ALIASES = {
    "probabilities": "softmax",
    "probs": "softmax",
    "scores": "logits",
    "log_probabilities": "log_softmax",
    "logsoftmax": "log_softmax",
}


# The fields a card must give (the others have defaults), with what each means.
REQUIRED_FIELDS = {
    "architecture": 'the network: a built-in name such as "small_cnn", or "onnx"/"torchscript"',
    "num_classes": "how many classes the model predicts",
}


@dataclass
class ModelCard:
    """Everything needed to feed a model pixels and read its answer.

    The model consumes ``(pixels - mean) / std`` where pixels lie in ``pixel_range`` (per
    channel); the boundary attack works in pixel space, so the normalisation must be known.
    Sizes are bounded (``MAX_INPUT_SIDE`` pixels per side, ``MAX_INPUT_VALUES`` values per
    image, ``MAX_CLASSES`` classes), and class names are one line of printable text each: they
    become the lines of a Triton labels file.
    """

    architecture: str  # registry name, or "torchscript" / "onnx" for opaque graphs
    num_classes: int
    in_channels: int = 1
    input_size: tuple[int, int] = (32, 32)  # (height, width)
    pixel_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    class_names: list[str] = field(default_factory=list)
    # What the network returns (OUTPUT_KINDS); None: not stated, load_model finds it.
    output: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    source_format: str = "safetensors"
    source_sha256: str = ""
    # How stored values become [0, 1] before scaling to pixel_range:
    #   "minmax": per image, min..max (robust to rescale slope/intercept differences);
    #   "voi": the file's own VOI window (WindowCenter/Width), falling back to minmax;
    #   "fixed": intensity_range (lo, hi) in modality units, e.g. a CT HU window.
    intensity: str = "minmax"
    intensity_range: tuple[float, float] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        self.num_classes = _whole("num_classes", self.num_classes, minimum=1, maximum=MAX_CLASSES)
        self.in_channels = _whole("in_channels", self.in_channels, minimum=1)
        self.input_size = _numbers("input_size", self.input_size, 2, whole=True)  # type: ignore[assignment]
        _check_input_size(self.in_channels, self.input_size)
        self.pixel_range = _numbers("pixel_range", self.pixel_range, 2)  # type: ignore[assignment]
        if not self.pixel_range[0] < self.pixel_range[1]:
            raise ModelError(
                f"model card: pixel_range must be [low, high] with low < high, not "
                f"{list(self.pixel_range)}"
            )
        self.mean = _numbers("mean", self.mean)
        self.std = _numbers("std", self.std)
        if len(self.mean) not in (1, self.in_channels) or len(self.std) not in (
            1,
            self.in_channels,
        ):
            raise ModelError(f"model card: mean/std must have 1 or {self.in_channels} values")
        if min(self.std) <= 0:
            raise ModelError(f"model card: std must be > 0 (it divides), not {list(self.std)}")
        if self.intensity not in ("minmax", "voi", "fixed"):
            raise ModelError(
                f"model card: intensity must be minmax, voi or fixed, not {self.intensity!r}"
            )
        if self.intensity == "fixed" and self.intensity_range is None:
            raise ModelError("model card: intensity 'fixed' needs intensity_range [lo, hi]")
        if self.intensity_range is not None:
            self.intensity_range = _numbers("intensity_range", self.intensity_range, 2)  # type: ignore[assignment]
            if not self.intensity_range[0] < self.intensity_range[1]:
                raise ModelError("model card: intensity_range must be [lo, hi] with lo < hi")
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ModelError(
                f"model card: {len(self.class_names)} class names for {self.num_classes} classes"
            )
        for i, name in enumerate(self.class_names):
            _check_class_name(i, name)
        _check_output(self.output)

    @property
    def output_kind(self) -> str:
        """What the network returns: ``output``, or ``"logits"`` where the card does not say."""
        return self.output or "logits"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """A card from its JSON fields; every unknown or missing field is named at once."""
        fields = cls.__dataclass_fields__
        problems = []
        for name in sorted(set(data) - set(fields), key=str):
            close = did_you_mean(str(name), fields)
            problems.append(f"unknown field {name!r}" + (f" ({close})" if close else ""))
        missing = [name for name in REQUIRED_FIELDS if name not in data]
        if missing:
            listed = ", ".join(f"{name} ({REQUIRED_FIELDS[name]})" for name in missing)
            problems.append(f"missing {listed}")
        if problems:
            raise ModelError(
                "model card: " + "; ".join(problems),
                hint="every field is described in docs/model-card.md",
            )
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelCard:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(
                f"model card {path} does not exist", hint="pass --card CARD.json"
            ) from None
        except UnicodeDecodeError:
            raise not_utf8(path, "model card", ModelError) from None
        except json.JSONDecodeError as exc:
            raise ModelError(f"model card {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelError(f"model card {path} is not a JSON object")
        try:
            return cls.from_dict(data)
        except ModelError as exc:  # say which card: validate reads three
            raise ModelError(f"{path}: {exc}") from None


def _whole(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != int(value):
        raise ModelError(f"model card: {name} must be a whole number, not {value!r}")
    if value < minimum:
        raise ModelError(f"model card: {name} must be at least {minimum}, not {value!r}")
    if maximum is not None and value > maximum:
        raise ModelError(f"model card: {name} must be at most {maximum}, not {value!r}")
    return int(value)


def _check_input_size(channels: int, size: tuple[int, int]) -> None:
    if min(size) < 1:
        raise ModelError(f"model card: input_size must be positive, not {list(size)}")
    if max(size) > MAX_INPUT_SIDE:
        raise ModelError(
            f"model card: input_size must be at most {MAX_INPUT_SIDE} pixels per side, not "
            f"{list(size)}",
            hint="give the size the network takes; revise resizes each image to it",
        )
    values = channels * size[0] * size[1]
    if values > MAX_INPUT_VALUES:
        raise ModelError(
            f"model card: in_channels x input_size must be at most {MAX_INPUT_VALUES:,} values "
            f"per image (256 MiB as float32), not {channels}x{size[0]}x{size[1]} = {values:,}",
            hint="check in_channels and input_size",
        )


def _check_output(output: Any) -> None:
    if output is None or output in OUTPUT_KINDS:
        return
    close = _OUTPUT_ALIASES.get(str(output).lower()) if isinstance(output, str) else None
    suggestion = f"did you mean {close}?" if close else did_you_mean(str(output), OUTPUT_KINDS)
    raise ModelError(
        f"model card: output must be one of {', '.join(OUTPUT_KINDS)}, not {output!r}"
        + (f" ({suggestion})" if suggestion else ""),
        hint="; ".join(f"{kind}: {meaning}" for kind, meaning in OUTPUT_KINDS.items()),
    )


def _check_class_name(index: int, name: Any) -> None:
    """One line of text: a line break or control character would shift every label after it
    in a line-based file (Triton's labels.txt)."""
    if not isinstance(name, str):
        raise ModelError(f"model card: class_names[{index}] must be text, not {name!r}")
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        raise ModelError(
            f"model card: class_names[{index}] {name!r} holds a line break or control character",
            hint="class names become the lines of a labels file: use one line of printable text",
        )


def _numbers(
    name: str, values: Any, count: int | None = None, *, whole: bool = False
) -> tuple[Any, ...]:
    """``values`` as a tuple of floats (ints with ``whole``), ``count`` of them if given."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ModelError(f"model card: {name} must be a list of numbers, not {values!r}")
    if count is not None and len(values) != count:
        raise ModelError(f"model card: {name} must have {count} values, not {list(values)}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v:
            raise ModelError(f"model card: {name} must be numbers, not {list(values)}")
        if whole and v != int(v):
            raise ModelError(f"model card: {name} must be whole numbers, not {list(values)}")
        out.append(int(v) if whole else float(v))
    return tuple(out)
