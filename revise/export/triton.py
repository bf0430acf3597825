"""The bundle's Triton model repository, ``triton/<name>/``: the config of Triton's ONNX Runtime
backend, the class labels, and version 1 = the bundle's model.onnx.

Serve it with ``tritonserver --model-repository bundle/triton``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from revise._io.atomic import write_text_atomic
from revise.export.manifest import MODEL_ONNX, TRITON_DIR, TritonEntry
from revise.export.onnx import INPUT_NAME
from revise.models.card import ModelCard
from revise.models.outputs import OUTPUT_NAMES

TRITON_MAX_BATCH = 64


def triton_config(
    name: str,
    card: ModelCard,
    *,
    max_batch_size: int = TRITON_MAX_BATCH,
    output: str | None = None,
) -> str:
    """config.pbtxt for Triton's ONNX Runtime backend: batch dimension implicit (dynamic
    batching), input (C, H, W) fp32 normalised pixels, output with class labels, named as the
    exported graph names it (``output``; by default the name for the card's ``output``:
    ``logits``, ``probabilities``, ...)."""
    c, (h, w) = card.in_channels, card.input_size
    output = output or OUTPUT_NAMES[card.output_kind]
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        "input [\n"
        "  {\n"
        f'    name: "{INPUT_NAME}"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {c}, {h}, {w} ]\n"
        "  }\n"
        "]\n"
        "output [\n"
        "  {\n"
        f'    name: "{output}"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {card.num_classes} ]\n"
        '    label_filename: "labels.txt"\n'
        "  }\n"
        "]\n"
        "dynamic_batching { }\n"
    )


def write_triton(folder: Path, name: str, card: ModelCard, output: str) -> TritonEntry:
    """The Triton model repository ``triton/<name>/`` (version 1 = this bundle's model.onnx)."""
    root = folder / TRITON_DIR / name
    (root / "1").mkdir(parents=True)
    shutil.copyfile(folder / MODEL_ONNX, root / "1" / MODEL_ONNX)
    write_text_atomic(root / "config.pbtxt", triton_config(name, card, output=output))
    labels = list(card.class_names) or [str(i) for i in range(card.num_classes)]
    write_text_atomic(root / "labels.txt", "\n".join(labels) + "\n")
    return TritonEntry(repository=TRITON_DIR, model=name, version=1)
