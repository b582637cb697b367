"""The estimator interface: validate labelled states, fit a unit direction, fix its sign.

sklearn style: hyper-parameters are the ``__init__`` arguments (stored under the same names, see
:meth:`DirectionEstimator.get_params`), learned state carries a trailing ``_`` and is set by
:meth:`DirectionEstimator.fit`. Every direction is a float32 unit vector whose sign puts the mean
projection of the positives above that of the negatives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TypeVar

import torch

from expertsteer.estimators.metrics import auc, separation
from expertsteer.registry import HyperParams
from expertsteer.types import MIN_PER_CLASS, Tensor

__all__ = ["DirectionEstimator"]

_E = TypeVar("_E", bound="DirectionEstimator")


class DirectionEstimator(HyperParams, ABC):
    """Base class: validates inputs, fixes the sign, and fills the common ``stats_``.

    Subclasses implement :meth:`_fit_direction`, returning an (unnormalised) float64 direction and
    their method-specific statistics.
    """

    direction_: Tensor
    stats_: dict[str, float]

    # -- fit / project ------------------------------------------------------------------------

    def fit(self: _E, X: Tensor, y: Tensor, groups: Tensor | None = None) -> _E:
        """Learn ``direction_`` (float32 [d], unit norm) and ``stats_`` from states and labels.

        Args:
            X: hidden states [N, d] (any float dtype; computed in float64).
            y: labels [N], 0/1 or bool; 1 = the concept to steer towards.
            groups: optional [N] group id per row; a positive and a negative sharing an id form a
                contrast pair.
        """
        X, y, groups = self._validate(X, y, groups)
        raw, extra = self._fit_direction(X, y, groups)
        norm = raw.norm()
        if not torch.isfinite(norm) or norm == 0:
            raise ValueError(
                f"{type(self).__name__} produced a zero or non-finite direction; the classes are "
                "indistinguishable in X (check that the labels match the rows)."
            )
        direction = raw / norm
        proj = X @ direction
        if proj[y].mean() < proj[~y].mean():
            direction, proj = -direction, -proj
        self.direction_ = direction.to(torch.float32).cpu()
        self.stats_ = {"auc": auc(proj, y), "separation": separation(proj, y), **extra}
        return self

    def project(self, X: Tensor) -> Tensor:
        """Projection ``X @ direction_`` (float32 [N]) of states [N, d] (or one state [d])."""
        if not hasattr(self, "direction_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet; call fit(X, y) first.")
        X = torch.as_tensor(X)
        if X.shape[-1] != self.direction_.shape[0]:
            raise ValueError(
                f"X has {X.shape[-1]} features but the direction was fitted on "
                f"{self.direction_.shape[0]}; pass states from the same model layer."
            )
        return X.to(torch.float32) @ self.direction_.to(X.device)

    @abstractmethod
    def _fit_direction(
        self, X: Tensor, y: Tensor, groups: Tensor | None
    ) -> tuple[Tensor, dict[str, float]]:
        """Unnormalised float64 direction [d] and method-specific stats from validated inputs."""

    @staticmethod
    def _validate(
        X: Tensor, y: Tensor, groups: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        X = torch.as_tensor(X)
        if X.ndim != 2:
            raise ValueError(
                f"X must be a 2-D [n_examples, hidden_size] tensor, got shape {tuple(X.shape)}; "
                "stack one state per row."
            )
        if not (X.is_floating_point() or X.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"X must be a real-valued tensor, got dtype {X.dtype}.")
        X = X.to(torch.float64)
        if not torch.isfinite(X).all():
            bad = torch.nonzero(~torch.isfinite(X).all(dim=1)).squeeze(1)
            raise ValueError(
                f"X contains NaN or inf in {len(bad)} row(s) (first: {bad[:5].tolist()}); drop "
                "them or re-extract the states (a float16 overflow is a common cause)."
            )
        y = torch.as_tensor(y).to(X.device)
        if y.ndim != 1 or len(y) != len(X):
            raise ValueError(
                f"y must be 1-D with one label per row of X ({len(X)}), got shape {tuple(y.shape)}."
            )
        if y.dtype != torch.bool:
            values = torch.unique(y).tolist()
            if not set(values) <= {0, 1}:
                raise ValueError(f"y must be 0/1 or bool, got values {values[:10]}.")
            y = y == 1
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        if n_pos == 0 or n_neg == 0:
            raise ValueError(
                f"y has only one class ({n_pos} positive, {n_neg} negative); a direction needs "
                "examples of both."
            )
        if min(n_pos, n_neg) < MIN_PER_CLASS:
            raise ValueError(
                f"need at least {MIN_PER_CLASS} examples per class, got {n_pos} positive and "
                f"{n_neg} negative; add more examples."
            )
        if groups is not None:
            groups = torch.as_tensor(groups).to(X.device)
            if groups.ndim != 1 or len(groups) != len(X):
                raise ValueError(
                    f"groups must be 1-D with one id per row of X ({len(X)}), got shape "
                    f"{tuple(groups.shape)}."
                )
            if groups.is_floating_point() or groups.is_complex():
                raise ValueError(f"groups must hold integer ids, got dtype {groups.dtype}.")
            groups = torch.unique(groups, return_inverse=True)[1]
        return X, y, groups
