"""Split a labelled manifest into the four sets a revision works with.

``forget`` / ``retain``: training-side rows inside / outside the forget selection (the model
saw them); ``heldout_forget`` / ``heldout_retain``: held-out rows (split == "heldout") inside /
outside it, for judging generalisation. Rows with an empty split count as training rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from revise.data.select import describe, select
from revise.data.select import mask as selection_mask
from revise.errors import DataError, SelectionError

log = logging.getLogger(__name__)

SETS = ("forget", "retain", "heldout_forget", "heldout_retain")


def partition(
    manifest: pd.DataFrame, forget: str | None, *, base_dir: Path | None = None
) -> dict[str, pd.DataFrame]:
    """The four sets; ``forget=None`` puts every row on the retain side (plain evaluation)."""
    labelled = manifest[manifest["label"].notna()]
    dropped = len(manifest) - len(labelled)
    if dropped:
        log.warning("%d of %d rows have no label and are left out", dropped, len(manifest))
    if labelled.empty:
        raise DataError(
            "no row of the manifest has a label",
            hint="join labels with `revise index --labels CSV`",
        )
    if forget is None:
        chosen = pd.Series(False, index=labelled.index)
    else:
        chosen = selection_mask(labelled, forget, base_dir=base_dir)
    heldout = labelled["split"].astype("string").fillna("").str.strip().str.lower() == "heldout"
    if not heldout.any():
        log.warning(
            "no row is held out (split == heldout): held-out accuracy cannot be measured; add "
            "a split column to the labels (revise index --labels) or validate with --heldout"
        )
    sets = {
        "forget": labelled[chosen & ~heldout],
        "retain": labelled[~chosen & ~heldout],
        "heldout_forget": labelled[chosen & heldout],
        "heldout_retain": labelled[~chosen & heldout],
    }
    if forget is None:
        pass
    elif sets["forget"].empty:
        training = labelled[~heldout]
        if not chosen.any():  # let the selection explain itself (existing values, spelling)
            select(training, forget, base_dir=base_dir)
        raise SelectionError(
            f"the forget selection '{describe(forget)}' matches no labelled training row "
            f"({int(chosen.sum())} held-out rows matched)",
            hint="check the selection with `revise select`",
        )
    elif sets["retain"].empty:
        raise SelectionError(
            f"the forget selection '{describe(forget)}' leaves nothing to retain",
            hint="narrow the selection so some training rows stay outside it",
        )
    return {name: df.reset_index(drop=True) for name, df in sets.items()}
