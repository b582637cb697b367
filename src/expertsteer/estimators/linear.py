"""Linear direction estimators: the baselines the field uses.

* :class:`MeanDiff` -- CAA, the difference of class means.
* :class:`PCADiff` -- RepE, the first principal component of paired differences.
* :class:`Logistic` -- an ITI-style linear probe.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from expertsteer.estimators.base import DirectionEstimator
from expertsteer.estimators.metrics import accuracy, auc, holdout_split
from expertsteer.types import Tensor

__all__ = ["Logistic", "MeanDiff", "PCADiff"]


def _group_means(X: Tensor, y: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """Per-group mean positive and mean negative, for groups that hold both classes."""
    n_groups = int(groups.max()) + 1
    sums = torch.zeros(2, n_groups, X.shape[1], dtype=X.dtype, device=X.device)
    counts = torch.zeros(2, n_groups, dtype=X.dtype, device=X.device)
    cls = y.long()
    sums.index_put_((cls, groups), X, accumulate=True)
    counts.index_put_((cls, groups), torch.ones_like(groups, dtype=X.dtype), accumulate=True)
    complete = (counts > 0).all(dim=0)
    if not complete.any():
        raise ValueError(
            "no group holds both a positive and a negative; groups must pair contrast examples "
            "(or pass groups=None)."
        )
    means = sums[:, complete] / counts[:, complete, None]
    return means[1], means[0]


class MeanDiff(DirectionEstimator):
    """CAA: mean of positives − mean of negatives (with groups: mean over pairs of pos − neg)."""

    def _fit_direction(
        self, X: Tensor, y: Tensor, groups: Tensor | None
    ) -> tuple[Tensor, dict[str, float]]:
        if groups is None:
            return X[y].mean(0) - X[~y].mean(0), {}
        pos, neg = _group_means(X, y, groups)
        return (pos - neg).mean(0), {"n_pairs": float(len(pos))}


class PCADiff(DirectionEstimator):
    """RepE: first principal component of paired differences (pos − neg).

    With groups, one difference per group (mean positive − mean negative of the group); without,
    each positive is paired with a random negative (seeded). The component is the top
    eigenvector of the *uncentred* second moment of the differences: RepE randomly flips each
    difference's sign before PCA, which centres them at zero, so the uncentred second moment is
    what it estimates. Centring instead would subtract the mean difference, i.e. the signal.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def _fit_direction(
        self, X: Tensor, y: Tensor, groups: Tensor | None
    ) -> tuple[Tensor, dict[str, float]]:
        if groups is None:
            pos, neg = X[y], X[~y]
            gen = torch.Generator().manual_seed(self.seed)
            perm = torch.randperm(len(neg), generator=gen).to(X.device)
            diffs = pos - neg[perm[torch.arange(len(pos), device=X.device) % len(neg)]]
        else:
            pos, neg = _group_means(X, y, groups)
            diffs = pos - neg
        # Top eigenvector of the d×d second moment: a fraction of the cost of an SVD of the
        # [pairs, d] differences, and float64 keeps the squared spectrum accurate at the top.
        evals, evecs = torch.linalg.eigh(diffs.T @ diffs)
        if not evals[-1] > 0:
            raise ValueError(
                "all paired differences are zero, so they have no principal component; the "
                "positives and negatives are identical in X."
            )
        explained = float(evals[-1] / evals.clamp_min(0).sum())
        return evecs[:, -1], {"n_pairs": float(len(diffs)), "explained_variance": explained}


class Logistic(DirectionEstimator):
    """ITI-style linear probe: L2 logistic regression on standardised features.

    ``C`` (inverse regularisation) is chosen by validation AUC (then accuracy; ties keep the
    stronger regularisation) from ``C_GRID`` on a seeded hold-out split when None, then the probe
    is refitted on all data. The direction is the
    coefficient vector mapped back to the original space (w / feature std).
    """

    C_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)

    def __init__(self, C: float | None = None, seed: int = 0, val_fraction: float = 0.2) -> None:
        if C is not None and not C > 0:
            raise ValueError(f"C must be positive (or None to choose it), got {C}.")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
        self.C = C
        self.seed = seed
        self.val_fraction = val_fraction

    def _probe(self, C: float, Z: np.ndarray, y: np.ndarray) -> LogisticRegression:
        return LogisticRegression(C=C, max_iter=2000, tol=1e-6).fit(Z, y)

    def _fit_direction(
        self, X: Tensor, y: Tensor, groups: Tensor | None
    ) -> tuple[Tensor, dict[str, float]]:
        mean, std = X.mean(0), X.std(0)
        # Constant features carry no information; a unit scale keeps them finite (they
        # standardise to 0, so their coefficient stays 0).
        scale = torch.where(std > 1e-12 * std.max().clamp_min(1e-300), std, torch.ones_like(std))
        Z = ((X - mean) / scale).cpu().numpy()
        labels = y.cpu().numpy()
        stats: dict[str, float] = {}
        C = self.C
        if C is None:
            gen = torch.Generator().manual_seed(self.seed)
            split = holdout_split(y, groups, self.val_fraction, gen)
            tr, va = split[0].numpy(), split[1].numpy()
            best = (-1.0, -1.0)
            for cand in self.C_GRID:
                probe = self._probe(cand, Z[tr], labels[tr])
                scores = torch.from_numpy(probe.decision_function(Z[va]))
                yv = torch.from_numpy(labels[va])
                score = (auc(scores, yv), accuracy(scores, yv))
                if score > best:
                    best, C = score, cand
            stats.update(val_auc=best[0], val_acc=best[1])
        probe = self._probe(C, Z, labels)
        w = torch.from_numpy(probe.coef_[0]).to(X.device, torch.float64) / scale
        stats["C"] = float(C)
        stats["train_acc"] = float(probe.score(Z, labels))
        return w, stats
