"""What a site's acceptance criteria, fixed before the run, tell the automatic revision to aim at
(:func:`revise.unlearn.auto.auto_revise`'s ``forget_ceiling``): the highest held-out accuracy on
the forgotten group they accept, and the retention they let it lose."""

from __future__ import annotations

from revise.unlearn.target import Ceiling
from revise.validate.criteria import Criteria, Gate


def forget_ceiling(criteria: Criteria) -> Ceiling | None:
    """The lowest fixed upper bound (``at_most: X``, or ``between``'s upper end) of an
    ``accuracy`` gate on ``heldout_forget`` over the whole set (no where/per), with the
    retention the same criteria let the revision lose (:func:`retention_slack`); None when the
    criteria have no such bound. Bounds relative to a model are left out: the original's is read
    by the revision itself, and the reference does not exist yet."""
    bounds = [
        (gate.thresholds[-1].offset, gate.name)
        for gate in criteria.gates
        if gate.metric == "accuracy"
        and gate.set == "heldout_forget"
        and not gate.where
        and gate.per is None
        and gate.operator in ("at_most", "between")
        and gate.thresholds[-1].baseline is None
    ]
    if not bounds:
        return None
    value, name = min(bounds)
    return Ceiling(value, f"gate '{name}' of {criteria.source}", retention_slack(criteria))


def retention_slack(criteria: Criteria) -> float | None:
    """The least held-out accuracy outside the group that any gate lets the revision lose:
    ``accuracy`` on ``heldout_retain`` at least ``original - d``, or ``accuracy_change`` on it at
    least ``-d`` (over the whole set or per group, without where); None without such a gate."""
    slacks = [_slack(gate) for gate in criteria.gates]
    return min((s for s in slacks if s is not None), default=None)


def _slack(gate: Gate) -> float | None:
    if gate.set != "heldout_retain" or gate.where or gate.operator not in ("at_least", "between"):
        return None
    low = gate.thresholds[0]
    relative = gate.metric == "accuracy" and low.baseline == "original"
    change = gate.metric == "accuracy_change" and low.baseline is None
    return -low.offset if (relative or change) and low.offset <= 0 else None
