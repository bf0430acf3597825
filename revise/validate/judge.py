"""Acceptance gates as a judge of candidate models (a merge's strength search steers by it)."""

from __future__ import annotations

import dataclasses
import logging

from torch import nn

from revise.data.sets import DecodedSets
from revise.errors import UsageError
from revise.merge.search import GateJudge
from revise.models.card import ModelCard
from revise.validate.api import validate
from revise.validate.criteria import Criteria
from revise.validate.gate_checks import check_models
from revise.validate.gate_metrics import METRICS

log = logging.getLogger(__name__)


def gate_judge(
    criteria: Criteria,
    data: DecodedSets,
    original: nn.Module,
    reference: nn.Module | None,
    card: ModelCard,
    device: str,
) -> GateJudge:
    """A judge whose ``failed(candidate)`` counts the gates of ``criteria`` the candidate
    fails, judged as ``revise validate`` judges them (against the original and, if given, the
    reference; the baselines are measured once). Gates on the exported ONNX model are left to
    validation: no candidate is exported."""
    on_weights = tuple(g for g in criteria.gates if METRICS[g.metric].requires != "onnx")
    if len(on_weights) < len(criteria.gates):
        log.info(
            "%d gate(s) of %s judge the ONNX export: left to validation",
            len(criteria.gates) - len(on_weights),
            criteria.source,
        )
    if not on_weights:
        raise UsageError(
            f"{criteria.source}: every gate judges the ONNX export, none the merged weights",
            hint="give criteria with accuracy, MIA or distance gates",
        )
    criteria = dataclasses.replace(criteria, gates=on_weights)
    baselines = {"original": original}
    if reference is not None:
        baselines["reference"] = reference
    check_models(criteria, list(baselines))  # before any candidate: a gate we cannot judge

    measured: dict = {}  # the baselines' predictions and attacks, computed for the first only

    def failed(candidate: nn.Module) -> int:
        models = {"candidate": candidate, **baselines}
        result = validate(models, data, criteria, card=card, device=device, reuse=measured)
        return len(result.failed())

    return GateJudge(failed, str(criteria.source), criteria.sha256)
