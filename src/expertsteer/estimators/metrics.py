"""Scores of a direction on labelled states, and the seeded hold-out split the estimators use.

Shared by the estimators (model selection, ``stats_``) and by the domain gate (its threshold).
"""

from __future__ import annotations

import math

import torch
from sklearn.metrics import roc_auc_score

from expertsteer.types import Tensor

__all__ = ["accuracy", "auc", "holdout_split", "separation"]


def auc(scores: Tensor, y: Tensor) -> float:
    """ROC AUC of scores [N] against bool / 0-1 labels [N]."""
    return float(roc_auc_score(y.cpu().numpy(), scores.detach().double().cpu().numpy()))


def accuracy(scores: Tensor, y: Tensor, threshold: float = 0.0) -> float:
    """Share of rows where ``scores > threshold`` agrees with the label."""
    return float(((scores > threshold) == y).double().mean())


def separation(proj: Tensor, y: Tensor) -> float:
    """(mean positive − mean negative) / pooled within-class std of a projection."""
    pos, neg = proj[y].double(), proj[~y].double()
    dof = len(pos) + len(neg) - 2
    pooled = math.sqrt(
        ((len(pos) - 1) * float(pos.var()) + (len(neg) - 1) * float(neg.var())) / dof
    )
    gap = float(pos.mean() - neg.mean())
    if pooled == 0.0:
        return math.copysign(math.inf, gap) if gap != 0.0 else 0.0
    return gap / pooled


def holdout_split(
    y: Tensor, groups: Tensor | None, fraction: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Seeded (train, validation) row indices (CPU tensors, sorted), both holding both classes.

    With groups, whole groups go to one side so a contrast pair never straddles the split (its
    two halves share content, which would leak); otherwise the split is stratified by class.
    Each class needs at least two rows.
    """
    y = y.cpu()
    groups = None if groups is None else groups.cpu()
    if groups is not None:
        uniq = torch.unique(groups)
        perm = uniq[torch.randperm(len(uniq), generator=generator)]
        n_val = min(max(1, round(fraction * len(uniq))), len(uniq) - 1)
        is_val = torch.isin(groups, perm[:n_val])
        # Groups of one class only could leave a side without a class; fall back to strata.
        if y[is_val].any() and (~y[is_val]).any() and y[~is_val].any() and (~y[~is_val]).any():
            return torch.nonzero(~is_val).squeeze(1), torch.nonzero(is_val).squeeze(1)
    train, val = [], []
    for cls in (False, True):
        idx = torch.nonzero(y == cls).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_val = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values
