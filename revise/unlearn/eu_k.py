"""Exact Unlearning-k (EU-k): re-initialise the last k blocks, then train them on the retain set.

Goel et al., "Towards Adversarial Evaluation of Inexact Machine Unlearning", arXiv:2201.06640
(2022). The frozen front of the network keeps what it learnt from D_f, but everything after it
is rebuilt from D_r alone, so the forget set can only reach the output through frozen features.

Blocks are found as in ``cf_k`` (see ``_structure``). Re-initialisation calls each module's own
``reset_parameters`` (weights, biases, BatchNorm affine and running statistics) under a seeded
stream; the training recipe is cf_k's.
"""

from __future__ import annotations

from typing import Any

from revise.unlearn._structure import last_blocks, reinitialise
from revise.unlearn.base import UnlearnContext, register
from revise.unlearn.cf_k import CFKConfig, fit_last_blocks
from revise.unlearn.settings import settings

REINIT_STREAM = 11  # ctx-seeded stream of the re-initialisation (data order uses stream 1)


@settings
class EUKConfig(CFKConfig):
    """cf_k's recipe (lr 0.04, 10 epochs, cosine decay); the k blocks start from scratch."""


@register("eu_k", EUKConfig, "EU-k: re-initialise the last k blocks, retrain on retain (Goel 2022)")
def eu_k(ctx: UnlearnContext, config: EUKConfig) -> dict[str, Any]:
    net = ctx.model.net
    names = last_blocks(net, config.k, ctx.card.num_classes)
    fresh = reinitialise(net, names, ctx.seed * 1000 + REINIT_STREAM, ctx.device)
    return {**fit_last_blocks(ctx, config, names), "reinitialised_parameters": fresh}
