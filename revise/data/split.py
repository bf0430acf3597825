"""Split a labelled manifest into the four sets a revision works with.

``forget`` / ``retain``: training-side rows inside / outside the forget selection (the model
saw them); ``heldout_forget`` / ``heldout_retain``: held-out rows (split == "heldout") inside /
outside it, for judging generalisation. Rows with an empty split count as training rows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from revise.data.select import describe, select
from revise.data.select import mask as selection_mask
from revise.errors import DataError, SelectionError

log = logging.getLogger(__name__)

SETS = ("forget", "retain", "heldout_forget", "heldout_retain")


def is_heldout(manifest: pd.DataFrame) -> pd.Series:
    """Rows with ``split == heldout`` (any case and padding); an empty split is training."""
    return manifest["split"].astype("string").fillna("").str.strip().str.lower() == "heldout"


def share(chosen: int, training: int, chosen_heldout: int, heldout: int) -> str:
    """How much of the data a selection takes, e.g. ``435 of 1,363 training rows (and 110 of
    434 held-out rows)``: a selection of everything reads differently from a slice."""
    text = f"{chosen:,} of {training:,} training rows"
    if heldout:
        return text + f" (and {chosen_heldout:,} of {heldout:,} held-out rows)"
    return text + " (no row is held out)"


def share_of_sets(counts: Mapping[str, int]) -> str:
    """:func:`share` from the sizes of the four sets (e.g. ``DecodedSets.counts()``)."""
    return share(
        counts["forget"],
        counts["forget"] + counts["retain"],
        counts["heldout_forget"],
        counts["heldout_forget"] + counts["heldout_retain"],
    )


def selection_share(manifest: pd.DataFrame, chosen: pd.Series) -> str:
    """:func:`share` over the labelled rows of ``manifest`` (the rows a revision uses), for a
    boolean mask ``chosen`` aligned with it."""
    labelled = manifest["label"].notna()
    heldout = is_heldout(manifest) & labelled
    training = labelled & ~heldout
    return share(
        int((chosen & training).sum()),
        int(training.sum()),
        int((chosen & heldout).sum()),
        int(heldout.sum()),
    )


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
    heldout = is_heldout(labelled)
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
            f"the forget selection '{describe(forget)}' matches no labelled training row: it "
            f"selects {selection_share(labelled, chosen)}",
            hint="check the selection with `revise select`",
        )
    elif sets["retain"].empty:
        raise SelectionError(
            f"the forget selection '{describe(forget)}' leaves nothing to retain: it selects "
            f"{selection_share(labelled, chosen)}",
            hint="narrow the selection so some training rows stay outside it",
        )
    return {name: df.reset_index(drop=True) for name, df in sets.items()}
