"""BatchNorm running statistics re-estimated on retain data after the weights changed (a
weight-space merge, an update with frozen statistics)."""

from __future__ import annotations

import torch
from torch import nn

from revise.data.sets import DecodedSet
from revise.models.card import ModelCard
from revise.models.pixel import PixelSpaceModel, resolve_device

_BN = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def reestimate_batchnorm(
    net: nn.Module,
    card: ModelCard,
    data: DecodedSet,
    *,
    batch_size: int = 1024,
    device: str = "auto",
) -> int:
    """Reset every BatchNorm layer's running statistics and re-estimate them from ``data``.

    Each layer is reset (mean 0, var 1, num_batches_tracked 0) and fed the data in train mode,
    everything else in eval mode (dropout off), without gradients; the momenta come back and
    the network is left in eval mode on its device of entry. The data is cut into batches of
    near-equal size (at most ``batch_size``) and each batch's momentum is its share of the
    images seen so far, so the running statistics are the image-weighted average of the batch
    statistics (a cumulative average over batches would let a last batch of one image weigh as
    much as a full one). With one batch (``len(data) <= batch_size``) they are exactly the
    data's mean and unbiased variance; ``num_batches_tracked`` counts the batches. Returns the
    number of BatchNorm layers re-estimated (0: nothing to do).
    """
    layers = [m for m in net.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not layers or len(data) == 0:
        net.eval()
        return 0
    home = next(net.parameters()).device
    dev = resolve_device(device)
    model = PixelSpaceModel(net, card).to(dev).eval()
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.train()
    try:
        seen = 0
        for x in torch.tensor_split(data.x, -(-len(data) // batch_size)):
            for m in layers:
                m.momentum = len(x) / (seen + len(x))
            model(x.to(dev))
            seen += len(x)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        net.eval().to(home)
    return len(layers)
