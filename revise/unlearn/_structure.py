"""Where a network's blocks and head are, read from its module tree alone (any architecture).

Used by the methods that touch only the end of a network (CF-k, EU-k; Goel et al. 2022) and by
those that reshape the head (Boundary Expanding).

The rule, in registration order (the order ``head_module_name`` also relies on):

1. The head is ``head_module_name(net, num_classes)``: the last Linear / 1x1 conv with
   ``num_classes`` outputs.
2. Units: walk the children of ``net``. A child without parameters (pooling, ReLU, flatten,
   dropout) is skipped. A pure container (``Sequential``, ``ModuleList``, ``ModuleDict``) or a
   module that holds the head is opened and its children walked the same way; any other module
   with parameters (a Conv2d, a BatchNorm, a residual ``BasicBlock``) is one unit.
3. Blocks: a unit holding a weight matrix or kernel (a parameter of 2 or more dimensions: conv,
   linear, residual block) starts a new block; a unit with only vectors (BatchNorm, LayerNorm)
   joins the block before it. The head is not part of this list.
4. The last k blocks plus the head are "the last k blocks" (k=0: the head alone).

So small_cnn's last block is its last conv + BN (``features.4``, ``features.5``), allcnn's is its
last conv-BN-ReLU stage (``features.9.*``), resnet18_cifar's is its last residual block
(``layer4.1``), and a VGG-style ``classifier`` Sequential contributes one block per Linear.
Parameters held directly by a module that is opened (e.g. a root-level positional embedding)
belong to no unit, so they always stay with the frozen part.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from revise.errors import ModelError, UsageError
from revise.models.architectures import head_module_name
from revise.unlearn.base import seeded_global_rng

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_CONTAINER_NAMES = ("Sequential", "ModuleList", "ModuleDict")  # TorchScript keeps original_name


def _is_container(module: nn.Module) -> bool:
    return isinstance(module, _CONTAINERS) or (
        getattr(module, "original_name", None) in _CONTAINER_NAMES
    )


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _holds(prefix: str, name: str) -> bool:
    """Is the module called ``name`` the module ``prefix`` or inside it?"""
    return not prefix or name == prefix or name.startswith(prefix + ".")


def units(net: nn.Module, head: str) -> list[str]:
    """Dotted names of the parameterised units of ``net`` other than the head (rule 2)."""
    out: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if full == head or not _has_parameters(child):
                continue
            if _is_container(child) or head.startswith(full + "."):
                visit(child, full + ".")
            else:
                out.append(full)

    visit(net, "")
    return out


def blocks(net: nn.Module, head: str) -> list[list[str]]:
    """The units grouped into blocks (rule 3), in order; the head is not included."""
    grouped: list[list[str]] = []
    for name in units(net, head):
        module = net.get_submodule(name)
        computes = any(p.ndim >= 2 for p in module.parameters())
        if computes or not grouped:
            grouped.append([name])
        else:
            grouped[-1].append(name)
    return grouped


def last_blocks(net: nn.Module, k: int, num_classes: int | None = None) -> list[str]:
    """Module names of the last ``k`` blocks and the head (rule 4)."""
    head = head_module_name(net, num_classes)
    found = blocks(net, head)
    if k > len(found):
        raise UsageError(
            f"k={k} but the network has only {len(found)} blocks before its head",
            hint=f"use k <= {len(found)}",
        )
    chosen = found[len(found) - k :] if k else []
    return [name for block in chosen for name in block] + [head]


def frozen_modules(net: nn.Module, trainable: Sequence[str]) -> list[nn.Module]:
    """Stateful modules wholly outside ``trainable``: those with their own parameters or
    buffers (BatchNorm statistics), neither inside a trainable module nor holding one.
    Stateless layers (dropout, ReLU) are left to the ordinary train/eval switch."""
    out = []
    for name, module in net.named_modules():
        inside = any(_holds(t, name) for t in trainable)
        holds = any(_holds(name, t) for t in trainable)
        own = next(module.parameters(recurse=False), None) is not None
        own = own or next(module.buffers(recurse=False), None) is not None
        if own and not inside and not holds:
            out.append(module)
    return out


def hold_in_eval(modules: Sequence[nn.Module]) -> None:
    """Eval mode for each module itself (not recursive): BN statistics and dropout frozen."""
    for module in modules:
        module.training = False


@contextlib.contextmanager
def train_only(net: nn.Module, trainable: Sequence[str]) -> Iterator[list[nn.Parameter]]:
    """Parameters inside ``trainable`` require grad, all others not; the old flags come back."""
    before = {name: p.requires_grad for name, p in net.named_parameters()}
    chosen = []
    for name, p in net.named_parameters():
        inside = any(name.startswith(t + ".") for t in trainable)
        p.requires_grad_(inside)
        if inside:
            chosen.append(p)
    try:
        yield chosen
    finally:
        for name, p in net.named_parameters():
            p.requires_grad_(before[name])


def reinitialise(net: nn.Module, names: Sequence[str], seed: int, device: torch.device) -> int:
    """Fresh initialisation of the named modules (weights, biases, BatchNorm statistics).

    Every module inside ``names`` with a ``reset_parameters`` method is reset, under its own
    seeded random stream (the global stream is left as it was). Returns the number of parameters
    re-initialised; a parameter that no module can reset is an error, not silently kept.
    """
    covered: set[int] = set()
    targets = []
    for name in names:
        for module in net.get_submodule(name).modules():
            if callable(getattr(module, "reset_parameters", None)):
                targets.append(module)
                covered.update(id(p) for p in module.parameters(recurse=False))
    missing = [
        f"{name}.{pname}"
        for name in names
        for pname, p in net.get_submodule(name).named_parameters()
        if id(p) not in covered
    ]
    if missing:
        raise ModelError(
            f"cannot re-initialise {', '.join(missing[:3])}: no reset_parameters() in its module",
            hint="use cf_k (fine-tune without re-initialising) for this architecture",
        )
    with seeded_global_rng(seed, device), torch.no_grad():
        for module in targets:
            module.reset_parameters()
    return sum(p.numel() for name in names for p in net.get_submodule(name).parameters())
