"""Membership inference, the two definitions in common use (see docs/validation.md):

* loss-MIA (the seed paper, NeurIPS 2023 unlearning kit): a logistic regression on the clipped
  per-sample cross-entropy tells members (the forget set) from non-members; its held-out
  accuracy over stratified shuffle splits. 0.5 = indistinguishable.
* MIA-Efficacy (SalUn, l1-sparse): an RBF SVC trained on the true-class probability of retain
  (member) vs test (non-member) samples; the share of the forget set it calls non-member.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from revise.errors import DataError

LOSS_CLIP = 100.0
MIN_PER_GROUP = 10  # below this a 10% test split holds no sample of one side
SVC_MAX_SHADOW = 5000  # an RBF SVC is quadratic in its training set; subsample above this


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Cross-entropy of every sample, clipped to [-100, 100] as in the kit."""
    loss = F.cross_entropy(logits.float(), labels.long(), reduction="none")
    return loss.clamp(-LOSS_CLIP, LOSS_CLIP).numpy()


def true_class_probability(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Softmax probability the model gives each sample's true class."""
    probs = torch.softmax(logits.float(), dim=1)
    return probs.gather(1, labels.long().view(-1, 1)).squeeze(1).numpy()


def loss_mia(
    member_losses: np.ndarray,
    nonmember_losses: np.ndarray,
    *,
    n_splits: int = 5,
    test_size: float = 0.1,
    seed: int = 0,
) -> dict[str, float | int]:
    """Loss-MIA: mean and std of a logistic regression's held-out accuracy at telling members
    from non-members by loss; the larger group is subsampled to the size of the smaller."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit

    members = np.asarray(member_losses, dtype=np.float64)
    nonmembers = np.asarray(nonmember_losses, dtype=np.float64)
    size = min(len(members), len(nonmembers))
    if size < MIN_PER_GROUP:
        raise DataError(
            f"loss-MIA needs at least {MIN_PER_GROUP} members and non-members "
            f"(have {len(members)} and {len(nonmembers)})",
            hint="validate on more forget-set and held-out images",
        )
    rng = np.random.default_rng(seed)
    members = rng.choice(members, size, replace=False) if len(members) > size else members
    nonmembers = (
        rng.choice(nonmembers, size, replace=False) if len(nonmembers) > size else nonmembers
    )
    x = np.concatenate([members, nonmembers]).reshape(-1, 1)
    y = np.concatenate([np.ones(size, dtype=int), np.zeros(size, dtype=int)])
    splits = StratifiedShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
    scores = []
    for train, test in splits.split(x, y):
        attack = LogisticRegression().fit(x[train], y[train])
        scores.append(attack.score(x[test], y[test]))
    return {
        "mean": round(float(np.mean(scores)), 4),
        "std": round(float(np.std(scores)), 4),
        "n_per_group": size,
        "n_splits": n_splits,
    }


def mia_efficacy(
    retain_probs: np.ndarray,
    test_probs: np.ndarray,
    forget_probs: np.ndarray,
    *,
    seed: int = 0,
) -> dict[str, float | int]:
    """MIA-Efficacy: an SVC(C=3, gamma="auto", rbf) learns member (the first N_test retain
    samples) vs non-member (the N_test test samples) from the true-class probability; the value
    is the share of the forget set it predicts non-member."""
    from sklearn.svm import SVC

    rng = np.random.default_rng(seed)
    test = np.asarray(test_probs, dtype=np.float64)
    if len(test) > SVC_MAX_SHADOW:
        test = rng.choice(test, SVC_MAX_SHADOW, replace=False)
    shadow = np.asarray(retain_probs, dtype=np.float64)[: len(test)]
    forget = np.asarray(forget_probs, dtype=np.float64)
    if min(len(shadow), len(test)) < MIN_PER_GROUP or len(forget) == 0:
        raise DataError(
            f"MIA-Efficacy needs at least {MIN_PER_GROUP} retain and test samples and a forget "
            f"set (have {len(shadow)}, {len(test)} and {len(forget)})",
            hint="validate on more images",
        )
    x = np.concatenate([shadow, test]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(shadow), dtype=int), np.zeros(len(test), dtype=int)])
    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    nonmember = attack.predict(forget.reshape(-1, 1)) == 0
    return {"value": round(float(nonmember.mean()), 4), "n_shadow": len(shadow)}


def loss_histogram(
    member_losses: np.ndarray, nonmember_losses: np.ndarray, *, bins: int = 30
) -> dict[str, list[float] | list[int]]:
    """Counts of both groups over shared bins from 0 to the 99th percentile of all losses
    (larger losses land in the last bin), for the report's overlay plot."""
    both = np.concatenate([member_losses, nonmember_losses])
    top = float(np.percentile(both, 99)) if both.size else 1.0
    edges = np.linspace(0.0, max(top, 1e-3), bins + 1)

    def counts(values: np.ndarray) -> list[int]:
        clipped = np.clip(values, edges[0], edges[-1])
        return np.histogram(clipped, bins=edges)[0].astype(int).tolist()

    return {
        "edges": [round(float(e), 5) for e in edges],
        "members": counts(member_losses),
        "nonmembers": counts(nonmember_losses),
    }
