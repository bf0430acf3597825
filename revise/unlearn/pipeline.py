"""The revision path as plain functions that the CLI, the demo and the Python API share: the
decoded sets of a run (:func:`revise.data.tensors.prepare`) -> unlearning run with its record."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from torch import nn

from revise._run_record import Calibration
from revise.data.select import describe
from revise.data.sets import DecodedSets, split_calibration
from revise.distributed import is_main_process
from revise.errors import UsageError
from revise.models.card import ModelCard
from revise.unlearn.api import UnlearnResult, unlearn
from revise.unlearn.auto import AUTO, MISS_MARGIN, auto_revise
from revise.unlearn.evaluate import evaluate
from revise.unlearn.target import Ceiling, check_against_target, forgetting_kind

log = logging.getLogger(__name__)


def run_unlearning(
    net: nn.Module,
    card: ModelCard,
    data: DecodedSets,
    *,
    method: str,
    config: dict[str, Any] | None = None,
    device: str = "auto",
    seed: int = 0,
    base_digest: str = "",
    progress: Any = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    compile: bool = False,
    forget_ceiling: Ceiling | None = None,
) -> UnlearnResult:
    """Unlearn, then evaluate the revised model on all four sets and complete the run record.

    ``checkpoint_dir``, ``checkpoint_every``, ``resume`` and ``compile`` are :func:`unlearn`'s.
    ``method="auto"`` is the automatic revision (:func:`revise.unlearn.auto.auto_revise`): it
    takes a calibration slice of the held-out rows (``revise.data.calibration``), which the
    record's metrics and `revise validate` then leave out; it has no settings or checkpoints.
    ``forget_ceiling``: the site's ceiling on the group's held-out accuracy, which auto aims under
    (a method run with chosen settings has nothing to aim, and is refused one)."""
    check_criteria_use(method, forget_ceiling is not None)
    if method == AUTO:
        return _run_auto(net, card, data, config, device, seed, base_digest, forget_ceiling)
    result = unlearn(
        net,
        card,
        data.sets["forget"],
        data.sets["retain"],
        method=method,
        config=config,
        device=device,
        seed=seed,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        compile=compile,
    )
    return _complete(result, net, card, data, device, base_digest)


def check_criteria_use(method: str, given: bool) -> None:
    """Refuse acceptance criteria (a ceiling to aim under) for a method run with chosen
    settings: they guide only the automatic revision."""
    if given and method != AUTO:
        raise UsageError(
            f"acceptance criteria guide only the automatic revision, not {method}",
            hint="validate with them (revise validate --criteria), or drop the method to run auto",
        )


def _complete(
    result: UnlearnResult,
    net: nn.Module,
    card: ModelCard,
    data: DecodedSets,
    device: str,
    base_digest: str,
) -> UnlearnResult:
    """Evaluate the revised model on the sets and add what the run record still lacks."""
    record = result.record
    record.wall_clock_s["data"] = data.seconds
    if not is_main_process():  # rank 0 evaluates and writes; the others are done
        return result
    t0 = time.perf_counter()
    metrics = evaluate(result.model, card, data.sets, device=device)
    if record.target is None:  # a method run with chosen settings: how close did it get?
        original = evaluate(net, card, data.sets, by=(), device=device)
        kind = forgetting_kind(data.sets["forget"], data.sets["retain"])
        record.target = check_against_target(kind, original, metrics, MISS_MARGIN)
        if record.target.warning:
            record.warning = record.target.warning
            log.warning("%s", record.warning)
    record.wall_clock_s["evaluation"] = round(time.perf_counter() - t0, 4)
    record.forget_selection = describe(data.forget_selection) if data.forget_selection else None
    record.selection_digests = data.digests
    record.base_model_digest = base_digest
    record.decode_failures = len(data.failures)
    record.decode_left_out = data.left_out_record()
    record.metrics = metrics
    return result


def _run_auto(
    net: nn.Module,
    card: ModelCard,
    data: DecodedSets,
    config: dict[str, Any] | None,
    device: str,
    seed: int,
    base_digest: str,
    forget_ceiling: Ceiling | None,
) -> UnlearnResult:
    from revise.data import calibration

    if config:
        raise UsageError(
            f"the automatic revision takes no settings (got {', '.join(sorted(config))})",
            hint="drop --set, or choose a method (e.g. --method psg) to set its hyperparameters",
        )
    judged, calib = split_calibration(data, calibration.FRACTION)
    result = auto_revise(
        net,
        card,
        data.sets["forget"],
        data.sets["retain"],
        calib["heldout_forget"],
        calib["heldout_retain"],
        device=device,
        seed=seed,
        forget_ceiling=forget_ceiling,
        progress=log.info,
    )
    rows = {name: s.rows for name, s in calib.items()}
    result.record.calibration = Calibration(**calibration.describe(calibration.FRACTION, rows))
    return _complete(result, net, card, judged, device, base_digest)
