"""Composition: each state-dict key taken whole from one run, chosen by name patterns."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from revise.errors import UsageError
from revise.models.architectures import head_module_name

Rule = tuple[str, int]  # (fnmatch pattern over state-dict keys, index of the source run)


def parse_rule(text: str) -> tuple[str, str]:
    """``"PATTERN=RUN"`` -> (pattern, run reference)."""
    pattern, sep, run = text.rpartition("=")
    if not sep or not pattern.strip() or not run.strip():
        raise UsageError(f"--take {text!r} is not PATTERN=RUN", hint='e.g. --take "fc.*=1"')
    return pattern.strip(), run.strip()


def split_rules(net: nn.Module, backbone: int, head: int, num_classes: int | None = None):
    """Rules taking the classifier head (found from the architecture) from run ``head`` and
    every other key from run ``backbone``."""
    name = head_module_name(net, num_classes)
    return [(f"{name}.*", head), ("*", backbone)]


def assign(keys: Sequence[str], rules: Sequence[Rule]) -> dict[str, int]:
    """{key: source run} by the first rule whose pattern matches the key; a key no rule
    matches is an error (nothing is taken silently from a default)."""
    out: dict[str, int] = {}
    for key in keys:
        for pattern, source in rules:
            if fnmatch.fnmatchcase(key, pattern):
                out[key] = source
                break
        else:
            patterns = ", ".join(repr(p) for p, _ in rules)
            raise UsageError(
                f"no --take pattern covers the key {key!r} (patterns: {patterns})",
                hint='end with a catch-all such as --take "*=0"',
            )
    return out


def compose(
    states: Sequence[Mapping[str, torch.Tensor]], rules: Sequence[Rule]
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The composed state dict and which run each key came from."""
    for pattern, source in rules:
        if not 0 <= source < len(states):
            raise UsageError(f"pattern {pattern!r} names run {source}: there are {len(states)}")
    keys = list(states[0])
    chosen = assign(keys, rules)
    merged = {key: states[chosen[key]][key].detach().clone() for key in keys}
    return merged, chosen
