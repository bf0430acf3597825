"""ModelCard: what a model expects and predicts, saved beside its weights as JSON."""

from __future__ import annotations

import json
import numbers
import os
import unicodedata
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from revise._io.atomic import write_json_atomic
from revise._io.text import not_utf8
from revise._schema import MISSING, UNKNOWN, Hint, fail, problems, refusal
from revise.errors import ModelError

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
OutputKind = Literal[tuple(OUTPUT_KINDS)]  # type: ignore[valid-type]
_OUTPUT_HINT = "; ".join(f"{kind}: {meaning}" for kind, meaning in OUTPUT_KINDS.items())
_DOCS_HINT = "every field is described in docs/model-card.md"

_INTENSITY_HINT = "give the window [lo, hi] in modality units, or use intensity minmax or voi"
_SIZE_HINT = "give the size the network takes; revise resizes each image to it"
_LABELS_HINT = "class names become the lines of a labels file: use one line of printable text"


def _as_int(value: Any) -> Any:
    """Whole numbers of any numeric type (16.0, numpy's) as int; 16.5, "16" and true stay
    refused, as JSON Schema's integer refuses them."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    whole = number and (isinstance(value, numbers.Integral) or float(value).is_integer())
    return int(value) if whole else value


def _as_float(value: Any) -> Any:
    """Numbers of any numeric type as float; text and true/false stay refused."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return float(value) if real else value


# Numbers as a card gives them: numbers only (not "10", not true), and finite.
Whole = Annotated[int, Strict(), BeforeValidator(_as_int)]
Number = Annotated[float, Strict(), BeforeValidator(_as_float)]
Side = Annotated[int, Strict(), Field(ge=1, le=MAX_INPUT_SIDE), BeforeValidator(_as_int)]
Positive = Annotated[float, Strict(), Field(gt=0), BeforeValidator(_as_float)]


def _one_line(name: str) -> str:
    """A line break or control character would shift every label after it in a line-based file
    (Triton's labels.txt)."""
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        raise fail(f"{name!r} holds a line break or control character", _LABELS_HINT)
    return name


def _increasing(pair: tuple[float, float]) -> tuple[float, float]:
    if not pair[0] < pair[1]:
        raise fail(f"must be [low, high] with low < high, not {list(pair)}")
    return pair


ClassName = Annotated[str, AfterValidator(_one_line)]
Range = Annotated[tuple[Number, Number], AfterValidator(_increasing)]


@dataclass(config=ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True))
class ModelCard:
    """Everything needed to feed a model pixels and read its answer.

    The model consumes ``(pixels - mean) / std`` where pixels lie in ``pixel_range`` (per
    channel); the boundary attack works in pixel space, so the normalisation must be known.
    Sizes are bounded (``MAX_INPUT_SIDE`` pixels per side, ``MAX_INPUT_VALUES`` values per
    image, ``MAX_CLASSES`` classes), and class names are one line of printable text each: they
    become the lines of a Triton labels file. The fields below are the card's only checks and
    the source of docs/model-card.schema.json (revise.models.card_schema).
    """

    architecture: str = Field(
        min_length=1,
        description="The network: a built-in name (small_cnn, allcnn, resnet18_cifar, or one a "
        "plugin registers), or onnx / torchscript for a graph revise runs as it is.",
    )
    num_classes: Whole = Field(
        ge=1, le=MAX_CLASSES, description="How many classes the model predicts."
    )
    in_channels: Whole = Field(1, ge=1, description="Channels of one input image (1 grey, 3 RGB).")
    input_size: Annotated[tuple[Side, Side], Hint(_SIZE_HINT)] = Field(
        (32, 32), description="[height, width] the images are resized to."
    )
    pixel_range: Range = Field(
        (0.0, 1.0),
        description="[low, high] of pixels before normalisation, e.g. [0, 255]; psg's eps, eta, "
        "gamma and lam are fractions of it.",
    )
    mean: tuple[Number, ...] = Field(
        (0.0,),
        min_length=1,
        description="The model consumes (pixels - mean) / std: one value, or one per channel.",
    )
    std: tuple[Positive, ...] = Field(
        (1.0,),
        min_length=1,
        description="Divisor of the normalisation: one value, or one per channel; each > 0.",
    )
    class_names: list[ClassName] = Field(
        default_factory=list,
        validate_default=True,
        description="One name per class, in output order; each one line of printable text.",
    )
    # What the network returns (OUTPUT_KINDS); None: not stated, load_model finds it.
    output: Annotated[OutputKind | None, Hint(_OUTPUT_HINT)] = Field(
        None,
        description="What the network returns, named for its last operation; null: logits "
        f"unless revise finds an activation. {_OUTPUT_HINT}",
    )
    arch_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description='Keyword arguments of the built-in architecture, e.g. {"widths": [16, 32]}.',
    )
    source_format: str = Field(
        "safetensors",
        description="Where the weights came from (revise fills it in when it loads a model).",
    )
    source_sha256: str = Field(
        "", description="Digest of the file the weights came from (filled in by revise)."
    )
    # How stored values become [0, 1] before scaling to pixel_range:
    #   "minmax": per image, min..max (robust to rescale slope/intercept differences);
    #   "voi": the file's own VOI window (WindowCenter/Width), falling back to minmax;
    #   "fixed": intensity_range (lo, hi) in modality units, e.g. a CT HU window.
    intensity: Literal["minmax", "voi", "fixed"] = Field(
        "minmax",
        description="How stored DICOM values become [0, 1]: minmax per image, voi (the file's "
        "window, else minmax), or fixed (intensity_range).",
    )
    intensity_range: Range | None = Field(
        None,
        validate_default=True,
        description="[lo, hi] in modality units for intensity = fixed, e.g. [-1000, 400] HU.",
    )
    description: str = Field(
        "", description="Free text for people; copied into the bundle's metadata."
    )

    # Rules between fields; each runs only when the fields it reads are valid themselves.
    @field_validator("input_size")
    @classmethod
    def _fits_in_memory(cls, size: tuple[int, int], info: ValidationInfo) -> tuple[int, int]:
        channels = info.data.get("in_channels")
        if channels and channels * size[0] * size[1] > MAX_INPUT_VALUES:
            raise fail(
                f"with in_channels {channels} is {channels}x{size[0]}x{size[1]} = "
                f"{channels * size[0] * size[1]:,} values per image, more than the "
                f"{MAX_INPUT_VALUES:,} (256 MiB as float32) revise allows",
                "check in_channels and input_size",
            )
        return size

    @field_validator("mean", "std")
    @classmethod
    def _one_per_channel(cls, values: tuple[float, ...], info: ValidationInfo) -> tuple:
        channels = info.data.get("in_channels")
        if channels and len(values) not in (1, channels):
            count = "1 value" if channels == 1 else f"1 or {channels} values (in_channels)"
            raise fail(f"must have {count}, not {list(values)}")
        return values

    @field_validator("class_names")
    @classmethod
    def _one_per_class(cls, names: list[str], info: ValidationInfo) -> list[str]:
        count = info.data.get("num_classes")
        if count and not names:
            return [str(i) for i in range(count)]
        if count and len(names) != count:
            raise fail(f"has {len(names)} names for {count} classes")
        return names

    @field_validator("intensity_range")
    @classmethod
    def _given_when_fixed(cls, window: tuple | None, info: ValidationInfo) -> tuple | None:
        if window is None and info.data.get("intensity") == "fixed":
            raise fail("must be given for intensity 'fixed'", _INTENSITY_HINT)
        return window

    @model_validator(mode="wrap")
    @classmethod
    def _refuse(cls, data: Any, handler: Any) -> Any:
        """A card with mistakes is refused with all of them, as one ModelError."""
        try:
            return handler(data)
        except ValidationError as exc:
            found = problems(exc, cls, aliases=_OUTPUT_ALIASES)
            message, hint = refusal("model card", found)
            if any(p.kind in UNKNOWN + MISSING for p in found):
                hint = "; ".join(filter(None, (hint, _DOCS_HINT)))
            raise ModelError(message, hint=hint) from None

    @property
    def output_kind(self) -> str:
        """What the network returns: ``output``, or ``"logits"`` where the card does not say."""
        return self.output or "logits"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """A card from its JSON fields; every unknown, missing or wrong field is named at once."""
        return cls(**{str(name): value for name, value in data.items()})

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelCard:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(
                f"model card {path} does not exist", hint="pass {card} CARD.json", options=("card",)
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
