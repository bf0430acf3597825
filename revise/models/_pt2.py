"""torch.export archives (.pt2), opened without running anything from them.

``torch.export.load`` runs code from an archive in many ways: it unpickles the sample inputs
(falling back to ``weights_only=False``), weights and constants stored with ``use_pickle``,
opaque objects and legacy state dicts, and an older layout's ``serialized_*.pt`` files; it loads
AOTInductor libraries; it evaluates the program's symbolic sizes with ``sympy.sympify`` (an
``eval``) and ``exec``s its guards when the module is built. So revise reads an archive itself,
each member from an allow-list, in a way that runs nothing:

=====================================================  ==========================================
member (inside the archive's one folder)               read as
=====================================================  ==========================================
``archive_format``, ``archive_version``, ``byteorder``  text, compared with what torch writes
``models/model.json``                                   JSON: only ATen (and symbolic-size)
                                                        operators, tensor inputs, and arithmetic
                                                        in its symbolic sizes and guards
``data/weights/model_weights_config.json``,             JSON: each entry a raw tensor
``data/constants/model_constants_config.json``
the ``weight_N`` / ``tensor_N`` files those name        raw tensor bytes
``data/sample_inputs/model.pt`` (a pickle)              never read: the model does not need it
``.data/*``, ``extra/*``                                never read
=====================================================  ==========================================

Anything else is refused with a :class:`~revise.errors.ModelError` naming it. ``torch.export.load``
then reads a copy of the archive made of those members alone, with empty sample inputs.
"""

from __future__ import annotations

import ast
import io
import json
import math
import operator
import re
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from revise._logs import loggers_silenced
from revise.errors import ModelError

PROGRAM = "models/model.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
CONFIGS = {
    "weights": "data/weights/model_weights_config.json",
    "constants": "data/constants/model_constants_config.json",
}
_PAYLOAD = {"weights": re.compile(r"weight_\d+"), "constants": re.compile(r"tensor_\d+")}
_TEXT = {"archive_format": "pt2", "archive_version": "0", "byteorder": sys.byteorder}
_NEVER_READ = (".data/", "extra/")
_FIX = (
    "re-export it with torch.export.save() from a plain model (no custom objects or "
    "AOTInductor), or hand over ONNX, or safetensors + {arch}"
)

# Operators a classifier's program may call: ATen, and the builtins torch serialises for
# symbolic sizes. A higher-order operator or an extension could call any Python function.
_ATEN = "torch.ops.aten."
_SYMBOLIC_OPS = frozenset(
    f"{op.__module__}.{op.__name__}"
    for op in (
        *(operator.eq, operator.ne, operator.le, operator.ge, operator.lt, operator.gt),
        *(operator.neg, operator.pos, operator.mul, operator.add, operator.sub),
        *(operator.floordiv, operator.mod, operator.pow, operator.truediv),
        *(operator.and_, operator.or_, operator.lshift, operator.rshift, math.trunc),
        *(torch.sym_not, torch.sym_int, torch.sym_float, torch.sym_ite),
        *(torch.sym_max, torch.sym_min, torch.sym_sqrt),
    )
)

# Symbolic sizes and guards are Python expressions torch evaluates: they may only be arithmetic
# and comparisons of size symbols (s0, u1), the input (L['x']), its size()/stride(), numbers,
# and the sympy functions torch writes. No other names, no strings that sympy would parse again.
_EXPRESSION_NODES = (
    *(ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Call, ast.keyword),
    *(ast.Name, ast.Constant, ast.Subscript, ast.Attribute, ast.Tuple, ast.Load),
    *(ast.boolop, ast.operator, ast.unaryop, ast.cmpop),
)
_FUNCTIONS = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Max", "Min", "Abs", "Mod", "Eq", "Ne", "Lt", "Le",
    "Gt", "Ge", "And", "Or", "Not", "floor", "ceiling", "sqrt", "oo", "zoo", "nan", "Mul", "Add",
    "Pow", "FloorDiv", "CeilDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt",
    "FloorToInt", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
    "RoundDecimal", "ToFloat", "Identity", "L", "math", "inf",
})  # fmt: skip
_SYMBOL = re.compile(r"[a-z]+[0-9]+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ATTRIBUTES = frozenset({"size", "stride", "storage_offset"}) | {
    name for name in dir(math) if not name.startswith("_")
}


def load_program(path: Path) -> Any:
    """The ``torch.export.ExportedProgram`` in ``path``, read as the module docstring says."""
    members = _safe_members(path)
    try:
        from torch.export.pt2_archive import PT2ArchiveWriter

        buffer = io.BytesIO()
        with PT2ArchiveWriter(buffer) as writer:
            for name, data in members.items():
                writer.write_bytes(name, data)
        buffer.seek(0)
        with loggers_silenced("torch.export"):  # it logs a traceback, then raises
            return torch.export.load(buffer)
    except Exception as exc:
        raise ModelError(
            f"{path} is a torch.export archive but cannot be loaded: {_first_line(exc)}",
            hint="it may come from another PyTorch version; re-export it or use ONNX",
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def _refusal(path: Path, reason: str) -> ModelError:
    return ModelError(
        f"{path}: refusing to load this torch.export archive: {reason}",
        hint=_FIX,
        options=("arch",),
    )


def _broken(path: Path, reason: str) -> ModelError:
    return ModelError(
        f"{path} is not a readable torch.export archive: {reason}",
        hint="copy the file again, or re-export it with torch.export.save()",
    )


def _safe_members(path: Path) -> dict[str, bytes]:
    """The members torch.export.load needs, checked; sample inputs replaced by nothing."""
    try:
        with zipfile.ZipFile(path) as archive:
            root, names = _inner_names(path, archive)
            read = _reader(path, archive, root, names)
            configs = {name: read(name) for name in CONFIGS.values()}
            payloads = [p for kind in CONFIGS for p in _payloads(path, kind, configs)]
            for name in names:
                _check_member(path, name)
            members = {name: read(name) for name in _TEXT if name in names}
            for name, want in _TEXT.items():
                if name in members and members[name].decode(errors="replace").strip() != want:
                    raise _broken(path, f"its {name} is {members[name][:20]!r}, not {want!r}")
            members[PROGRAM] = _checked_program(path, read(PROGRAM))
            members.update(configs)
            members.update((name, read(name)) for name in payloads)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, ValueError) as exc:
        raise _broken(path, _first_line(exc)) from None
    members[SAMPLE_INPUTS] = b""
    return members


def _inner_names(path: Path, archive: zipfile.ZipFile) -> tuple[str, set[str]]:
    """The archive's one top folder and the names of the files inside it. torch reads files
    beside that folder too: as pickles, in the layout of torch 2.7."""
    files = [info.filename for info in archive.infolist() if not info.is_dir()]
    formats = [name for name in files if re.fullmatch(r"[^/]+/archive_format", name)]
    if not formats:
        raise _broken(path, "it has no archive_format (is it a torch.export.save() archive?)")
    root = formats[0].split("/")[0] + "/"
    stray = sorted(name for name in files if not name.startswith(root))
    if stray:
        shown = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
        raise _refusal(path, f"it holds {shown} outside its folder {root}")
    names = {name[len(root) :] for name in files}
    missing = [name for name in (PROGRAM, *CONFIGS.values()) if name not in names]
    if missing:
        raise _broken(path, f"it has no {missing[0]} (is it a torch.export.save() archive?)")
    return root, names


MAX_JSON_BYTES = 256 << 20  # the program and configs of a classifier are a few MB at most
MAX_PAYLOAD_BYTES = 8 << 30  # one tensor: architectures.MAX_PARAMETERS fp32 weights


def _reader(path: Path, archive: zipfile.ZipFile, root: str, names: set[str]):
    def read(name: str) -> bytes:
        if name not in names:
            raise _broken(path, f"it has no {name}")
        # zipfile reads no more than the size a member declares: a check of it bounds memory
        # (a few kB that inflate to many GB are refused before they are read)
        limit = MAX_PAYLOAD_BYTES if name.startswith("data/") else MAX_JSON_BYTES
        size = archive.getinfo(root + name).file_size
        if size > limit:
            raise _refusal(path, f"its {name} would inflate to {size:,} bytes (at most {limit:,})")
        return archive.read(root + name)

    return read


def _check_member(path: Path, name: str) -> None:
    """Refuse a member that is not in the allow-list (payloads are checked with their configs)."""
    for kind, pattern in _PAYLOAD.items():
        folder = f"data/{kind}/"
        if name.startswith(folder) and pattern.fullmatch(name[len(folder) :]):
            return
    known = name in _TEXT or name in (PROGRAM, SAMPLE_INPUTS, *CONFIGS.values())
    if not known and not name.startswith(_NEVER_READ):
        raise _refusal(
            path,
            f"it holds {name}, which a plain torch.export.save() archive does not have "
            "(it could be pickled data or compiled code)",
        )


def _payloads(path: Path, kind: str, configs: dict[str, bytes]) -> list[str]:
    """The raw tensor files a weights/constants config names; any other entry is refused."""
    try:
        entries = json.loads(configs[CONFIGS[kind]])["config"]
        items = list(entries.items())
    except (ValueError, TypeError, KeyError, AttributeError):
        raise _broken(path, f"{CONFIGS[kind]} is not a payload config") from None
    names = []
    for fqn, meta in items:
        stored = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(stored, str) or not isinstance(meta.get("tensor_meta"), dict):
            why = f"stored as {stored!r}, a Python object" if stored else "malformed"
        elif meta.get("use_pickle") is not False:
            why = f"stored as a pickle ({stored}, use_pickle)"
        elif not _PAYLOAD[kind].fullmatch(stored):
            why = f"stored as {stored!r}, not as a raw tensor"
        else:
            names.append(f"data/{kind}/{stored}")
            continue
        raise _refusal(path, f"its {kind} entry {fqn!r} is {why}")
    return names


def _checked_program(path: Path, data: bytes) -> bytes:
    """``data`` (models/model.json) if every operator, input, symbolic size and guard in it is
    one that runs no Python code from the file."""
    try:
        program = json.loads(data)
    except (ValueError, RecursionError):
        raise _broken(path, f"{PROGRAM} is not JSON") from None
    if not isinstance(program, dict):
        raise _broken(path, f"{PROGRAM} is not a program")
    guards = program.get("guards_code") or []
    for guard in guards if isinstance(guards, list) else [guards]:
        if not _plain_expression(guard):
            raise _refusal(path, f"its guard {_shown(guard)} is not a plain size check")
    graph = (program.get("graph_module") or {}).get("graph") or {}
    for value in graph.get("inputs") or []:
        if not (isinstance(value, dict) and set(value) == {"as_tensor"}):
            raise _refusal(path, f"its graph takes {_shown(value)}, not only tensors")
    _check_graph_values(path, program)
    return data


def _check_graph_values(path: Path, program: dict) -> None:
    """Every operator a node calls or passes, and every symbolic expression, anywhere."""
    stack: list[Any] = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                if key in ("target", "as_operator") and not _allowed_operator(value):
                    raise _refusal(
                        path,
                        f"its graph calls {_shown(value)}; revise loads programs of ATen "
                        "operators only",
                    )
                if key == "expr_str" and not _plain_expression(value):
                    raise _refusal(
                        path, f"its symbolic expression {_shown(value)} is not plain arithmetic"
                    )
                stack.append(value)


def _allowed_operator(name: Any) -> bool:
    return isinstance(name, str) and (name.startswith(_ATEN) or name in _SYMBOLIC_OPS)


def _plain_expression(text: Any) -> bool:
    """Whether ``text`` is an expression of the kinds the module docstring allows."""
    if not isinstance(text, str) or any(c in text for c in "#\\\n\r"):
        return False  # no comments or line tricks: torch pastes guards into generated code
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return all(_plain_node(node) for node in ast.walk(tree))


def _plain_node(node: ast.AST) -> bool:
    if not isinstance(node, _EXPRESSION_NODES):
        return False
    if isinstance(node, ast.Name):
        return node.id in _FUNCTIONS or bool(_SYMBOL.fullmatch(node.id))
    if isinstance(node, ast.Attribute):
        return node.attr in _ATTRIBUTES
    if isinstance(node, ast.Call):
        return isinstance(node.func, (ast.Name, ast.Attribute))
    if isinstance(node, ast.keyword):
        return node.arg is not None and not node.arg.startswith("_")
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return bool(_IDENTIFIER.fullmatch(node.value))  # a symbol's name, L['x']
    return not isinstance(node, ast.Constant) or isinstance(node.value, (int, float, bool))


def _shown(value: Any) -> str:
    """A value from the file, short and on one line, for a message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
