"""Steering-direction estimators: fit a unit direction in hidden-state space from labelled states.

All estimators share one sklearn-style interface (hyper-parameters in ``__init__``, learned state
with a trailing ``_`` set by :meth:`DirectionEstimator.fit`):

* ``"rfm"`` / ``"self-rfm"`` -- :class:`RFM`, a Recursive Feature Machine (Laplace kernel ridge
  regression + AGOP feature learning); the direction is the top eigenvector of the learned feature
  matrix ``M`` (ExpertSteer step 3, after Beaglehole et al. 2025).
* ``"mean-diff"`` -- :class:`MeanDiff`, the CAA difference of class means.
* ``"pca"`` -- :class:`PCADiff`, RepE's first principal component of paired differences.
* ``"logistic"`` -- :class:`Logistic`, an ITI-style linear probe.

Every direction is a float32 unit vector whose sign puts the mean projection of the positives
above that of the negatives.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from expertsteer.types import Tensor

__all__ = [
    "ESTIMATORS",
    "MIN_PER_CLASS",
    "RFM",
    "DirectionEstimator",
    "Logistic",
    "MeanDiff",
    "PCADiff",
    "make_estimator",
]

# Below this many examples per class neither a hold-out split nor a direction means anything.
MIN_PER_CLASS = 4

_E = TypeVar("_E", bound="DirectionEstimator")


def auc(scores: Tensor, y: Tensor) -> float:
    return float(roc_auc_score(y.cpu().numpy(), scores.detach().double().cpu().numpy()))


def _accuracy(scores: Tensor, y: Tensor, threshold: float = 0.0) -> float:
    return float(((scores > threshold) == y).double().mean())


def _separation(proj: Tensor, y: Tensor) -> float:
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


def _cpu(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.cpu()


def _holdout_split(
    y: Tensor, groups: Tensor | None, fraction: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Seeded (train, validation) row indices.

    With groups, whole groups go to one side so a contrast pair never straddles the split (its
    two halves share content, which would leak); otherwise the split is stratified by class.
    """
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


def _param_names(cls: type) -> list[str]:
    """Hyper-parameter names: the named arguments of ``cls.__init__``."""
    params = inspect.signature(cls.__init__).parameters.values()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in named and p.name != "self"]


class DirectionEstimator(ABC):
    """Base class: validates inputs, fixes the sign, and fills the common ``stats_``.

    Subclasses implement :meth:`_fit_direction`, returning an (unnormalised) float64 direction and
    their method-specific statistics.
    """

    direction_: Tensor
    stats_: dict[str, float]

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
        self.stats_ = {"auc": auc(proj, y), "separation": _separation(proj, y), **extra}
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

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in _param_names(type(self)))
        return f"{type(self).__name__}({args})"

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
            split = _holdout_split(y.cpu(), _cpu(groups), self.val_fraction, gen)
            tr, va = split[0].numpy(), split[1].numpy()
            best = (-1.0, -1.0)
            for cand in self.C_GRID:
                probe = self._probe(cand, Z[tr], labels[tr])
                scores = torch.from_numpy(probe.decision_function(Z[va]))
                yv = torch.from_numpy(labels[va])
                score = (auc(scores, yv), _accuracy(scores, yv))
                if score > best:
                    best, C = score, cand
            stats.update(val_auc=best[0], val_acc=best[1])
        probe = self._probe(C, Z, labels)
        w = torch.from_numpy(probe.coef_[0]).to(X.device, torch.float64) / scale
        stats["C"] = float(C)
        stats["train_acc"] = float(probe.score(Z, labels))
        return w, stats


class RFM(DirectionEstimator):
    """Recursive Feature Machine; direction = top eigenvector of the learned feature matrix M.

    Each iteration fits Laplace-kernel ridge regression
    ``f(x) = Σ_i α_i exp(−‖x − c_i‖_M / L)`` to centred ±1 targets (float64, Cholesky), then sets
    M to the AGOP (average gradient outer product) of ``f`` over all rows, rescaled to
    ``trace(M) = d`` (the trace of its identity initialisation). The scale of M is otherwise
    irrelevant: the bandwidth ``L`` is always ``bandwidth × median pairwise M-distance`` of the
    centres, recomputed each iteration, so the kernel is invariant to rescaling X or M.

    The centres ``c_i`` are all rows up to ``max_centres``; beyond, a seeded subsample, and the
    regression becomes Nyström regression on all rows and labels (subset-of-data regression on the
    centres alone wasted most labels: cos 0.84 against 0.96 with the planted direction at
    N = 4000, d = 448, 1000 centres).

    Hyper-parameter selection: (bandwidth, ridge) is chosen on a seeded hold-out split by the
    validation AUC (then accuracy, then squared error) of the kernel predictor at the first
    iteration (M = I), where every pair costs one solve; searching over whole runs would multiply
    the cost of the iterations by the grid size. On planted data this criterion also tracked the
    held-out AUC of the final *direction* better than the final predictor's own validation AUC
    did (small ridges sharpen M but let the iterated predictor overfit). The chosen pair then
    runs ``n_iter`` iterations on the training split, to report honest validation metrics of the
    final RFM predictor (``val_auc``, ``val_acc``) and of its direction (``val_direction_auc``),
    and finally on all data for ``direction_``. Fitting therefore costs about two runs plus the
    grid search.

    Args:
        n_iter: AGOP updates of M.
        bandwidths: multipliers of the median pairwise M-distance to search.
        ridges: ridge values λ in (K + λI)α = y to search (K has a unit diagonal).
        val_fraction: hold-out fraction for the selection (whole groups when groups are given).
        center: subtract the feature mean (distances lose precision when states share a large
            offset; the kernel itself is translation-invariant) and the target mean (kernel ridge
            regression has no intercept, so α would otherwise spend itself on the class balance).
        max_centres: at most this many kernel centres (None: every row). The solve is cubic in
            their number and each iteration keeps an [N, centres] float64 distance matrix.
        seed: seeds the hold-out split and the centre subsample.
    """

    DEFAULT_BANDWIDTHS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    DEFAULT_RIDGES: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
    # Row batches bound the [batch, centres] float64 work matrices to ~32 MB each.
    _BATCH_ELEMENTS = 1 << 22
    # Distances below this fraction of the median count as zero: the Laplace kernel's gradient is
    # undefined there (a point and itself, or duplicate states), and the rounding error of a
    # float64 distance is far smaller.
    _ZERO_DISTANCE = 1e-6

    def __init__(
        self,
        n_iter: int = 8,
        bandwidths: tuple[float, ...] = DEFAULT_BANDWIDTHS,
        ridges: tuple[float, ...] = DEFAULT_RIDGES,
        val_fraction: float = 0.2,
        center: bool = True,
        max_centres: int | None = 2000,
        seed: int = 0,
    ) -> None:
        if n_iter < 1:
            raise ValueError(f"n_iter must be at least 1, got {n_iter}.")
        bandwidths, ridges = tuple(bandwidths), tuple(ridges)
        if not bandwidths or not all(b > 0 for b in bandwidths):
            raise ValueError(
                f"bandwidths must be a non-empty tuple of positives, got {bandwidths}."
            )
        if not ridges or not all(r > 0 for r in ridges):
            raise ValueError(f"ridges must be a non-empty tuple of positives, got {ridges}.")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
        if max_centres is not None and max_centres < 2 * MIN_PER_CLASS:
            raise ValueError(
                f"max_centres must be None or at least {2 * MIN_PER_CLASS}, got {max_centres}."
            )
        self.n_iter = n_iter
        self.bandwidths = bandwidths
        self.ridges = ridges
        self.val_fraction = val_fraction
        self.center = center
        self.max_centres = max_centres
        self.seed = seed

    # -- kernel pieces ----------------------------------------------------------------------

    @staticmethod
    def _distances(A: Tensor, AM: Tensor, C: Tensor, CM: Tensor) -> Tensor:
        """‖a − c‖_M for all rows of A and C, given A @ M and C @ M."""
        # In-place steps on one buffer: this runs on [batch, centres] matrices every iteration.
        sq = torch.addmm(torch.einsum("ij,ij->i", C, CM)[None, :], AM, C.T, alpha=-2.0)
        sq.add_(torch.einsum("ij,ij->i", A, AM)[:, None])
        return sq.clamp_min_(0.0).sqrt_()

    @staticmethod
    def _median_offdiag(D: Tensor) -> float:
        rows, cols = torch.triu_indices(len(D), len(D), offset=1, device=D.device)
        med = float(D[rows, cols].median())
        if not med > 0:
            raise ValueError(
                "the states are (nearly) identical under the RFM metric, so no kernel can be "
                "fitted (check for duplicated rows or a constant layer)."
            )
        return med

    @staticmethod
    def _solve(A: Tensor, t: Tensor) -> Tensor:
        """α with A α = t for a symmetric positive (semi-)definite, regularised A."""
        chol, info = torch.linalg.cholesky_ex(A)
        if info == 0:
            return torch.cholesky_solve(t[:, None], chol)[:, 0]
        # Only a tiny ridge on a near-singular kernel gets here; LU is slower but robust.
        return torch.linalg.solve(A, t)

    @staticmethod
    def _plus_ridge(K: Tensor, ridge: float) -> Tensor:
        A = K.clone()
        A.diagonal().add_(ridge)
        return A

    def _row_distances(
        self, X: Tensor, XM: Tensor, C: Tensor, CM: Tensor
    ) -> list[tuple[Tensor, Tensor]]:
        """Rows of X in batches, each with its M-distances to the centres."""
        step = max(1, self._BATCH_ELEMENTS // len(C))
        return [
            (X[i : i + step], self._distances(X[i : i + step], XM[i : i + step], C, CM))
            for i in range(0, len(X), step)
        ]

    @staticmethod
    def _normal_equations(
        batches: list[tuple[Tensor, Tensor]], t: Tensor, L: float
    ) -> tuple[Tensor, Tensor]:
        """K_nmᵀK_nm and K_nmᵀt, accumulated over the row batches."""
        m = batches[0][1].shape[1]
        KtK = t.new_zeros(m, m)
        Kt = t.new_zeros(m)
        start = 0
        for xb, Db in batches:
            Kb = Db.div(-L).exp_()
            KtK.addmm_(Kb.T, Kb)
            Kt.addmv_(Kb.T, t[start : start + len(xb)])
            start += len(xb)
        return KtK, Kt

    def _coefficients(
        self, K_cc: Tensor, normal: tuple[Tensor, Tensor] | None, t: Tensor, ridge: float, n: int
    ) -> Tensor:
        """α of kernel ridge regression (normal is None: every row is a centre) or Nyström.

        Nyström regression still uses every label: (K_nmᵀK_nm + λ(n/m)K_mm)α = K_nmᵀt, the same
        solution as (K + λI)α = t when m = n, with λ scaled so the penalty keeps its weight per
        row.
        """
        if normal is None:
            return self._solve(self._plus_ridge(K_cc, ridge), t)
        KtK, Kt = normal
        A = KtK + (ridge * n / len(K_cc)) * K_cc
        # K_mm can be numerically singular once M is low-rank; a relative jitter keeps the
        # Cholesky factorisation defined without changing the fit.
        A.diagonal().add_(1e-12 * float(A.diagonal().mean()))
        return self._solve(A, Kt)

    def _fit_kernel(
        self,
        X: Tensor,
        t: Tensor,
        is_centre: Tensor,
        M: Tensor,
        bandwidth: float,
        ridge: float,
    ) -> tuple[_KernelModel, list[tuple[Tensor, Tensor]]]:
        """Fit f on (X, t) with the centres X[is_centre]; also returns the row batches with
        their distances to the centres, for the AGOP."""
        n, m = len(X), int(is_centre.sum())
        C = X[is_centre]
        CM = C @ M
        D_cc = self._distances(C, CM, C, CM)
        med = self._median_offdiag(D_cc)
        L = bandwidth * med
        if m == n:
            batches, normal = [(C, D_cc)], None
        else:
            batches = self._row_distances(X, X @ M, C, CM)
            normal = self._normal_equations(batches, t, L)
        alpha = self._coefficients(D_cc.div(-L).exp_(), normal, t, ridge, n)
        return _KernelModel(C, CM, M, alpha, L, med), batches

    def _gradient_gram(self, X: Tensor, D: Tensor, model: _KernelModel) -> Tensor:
        """Σ over rows of H Hᵀ with H(x) = Σ_i α_i K(x,c_i)(x − c_i)/‖x − c_i‖_M.

        ∇f(x) = −(1/L) M H(x), so the caller applies M and 1/L once to this d×d sum instead of
        to every gradient.
        """
        W = D.div(-model.L).exp_().mul_(model.alpha[None, :]).div_(D)
        W.masked_fill_(D <= self._ZERO_DISTANCE * model.med, 0.0)
        H = X * W.sum(1, keepdim=True) - W @ model.C
        return H.T @ H

    def _centre_mask(self, n: int, gen: torch.Generator) -> Tensor:
        """Seeded subsample of at most max_centres rows, as a boolean mask."""
        mask = torch.ones(n, dtype=torch.bool)
        if self.max_centres is not None and n > self.max_centres:
            mask[:] = False
            mask[torch.randperm(n, generator=gen)[: self.max_centres]] = True
        return mask

    def _run(
        self, X: Tensor, t: Tensor, bandwidth: float, ridge: float, gen: torch.Generator
    ) -> _KernelModel:
        """n_iter RFM iterations on (X, t); returns the kernel predictor fitted with the final M."""
        d = X.shape[1]
        is_centre = self._centre_mask(len(X), gen).to(X.device)
        offset = float(t.mean()) if self.center else 0.0
        M = torch.eye(d, dtype=X.dtype, device=X.device)
        for _ in range(self.n_iter):
            model, batches = self._fit_kernel(X, t - offset, is_centre, M, bandwidth, ridge)
            HtH = sum(self._gradient_gram(xb, Db, model) for xb, Db in batches)
            agop = M @ HtH @ M
            trace = agop.trace()
            if not trace > 0:
                raise ValueError(
                    "the RFM predictor is constant (zero gradient everywhere); widen the "
                    "bandwidth grid or check that the labels carry signal."
                )
            # trace(M) = d as for the identity start; the 1/(L² n) factor of the AGOP cancels.
            M = agop * (d / trace)
            M = 0.5 * (M + M.T)  # rounding leaves M @ HtH @ M very slightly asymmetric
        model, _ = self._fit_kernel(X, t - offset, is_centre, M, bandwidth, ridge)
        model.offset = offset
        return model

    @staticmethod
    def _top_eigenvector(M: Tensor) -> tuple[Tensor, float]:
        """Top eigenvector of M and its share of the spectrum (1 = rank one)."""
        evals, evecs = torch.linalg.eigh(M)
        return evecs[:, -1], float(evals[-1] / evals.clamp_min(0).sum())

    # -- fit ----------------------------------------------------------------------------------

    def _select(
        self, Xtr: Tensor, ttr: Tensor, Xva: Tensor, yva: Tensor, gen: torch.Generator
    ) -> tuple[float, float, float]:
        """Grid search over (bandwidth, ridge) at M = I; returns (bandwidth, ridge, val AUC)."""
        n = len(Xtr)
        is_centre = self._centre_mask(n, gen).to(Xtr.device)
        C = Xtr[is_centre]
        D_cc, D_va = self._distances(C, C, C, C), self._distances(Xva, Xva, C, C)
        med = self._median_offdiag(D_cc)
        # Same regression as the run: all rows enter through Nyström when they exceed the centres.
        batches = None if len(C) == n else self._row_distances(Xtr, Xtr, C, C)
        offset = float(ttr.mean()) if self.center else 0.0
        t, tva = ttr - offset, yva.to(Xva.dtype) * 2.0 - 1.0 - offset
        best, choice = (-1.0, -1.0, -math.inf), (self.bandwidths[0], self.ridges[0])
        for bandwidth in self.bandwidths:
            L = bandwidth * med
            K_cc, K_va = D_cc.div(-L).exp_(), D_va.div(-L).exp_()
            normal = None if batches is None else self._normal_equations(batches, t, L)
            for ridge in self.ridges:
                scores = K_va @ self._coefficients(K_cc, normal, t, ridge, n)
                # AUC and accuracy often tie (at 1.0 on separable data); the squared error of the
                # ±1 regression then breaks the tie on how well the margin is fitted.
                neg_mse = -float((scores - tva).square().mean())
                score = (auc(scores, yva), _accuracy(scores, yva, -offset), neg_mse)
                if score > best:
                    best, choice = score, (bandwidth, ridge)
        return choice[0], choice[1], best[0]

    def _fit_direction(
        self, X: Tensor, y: Tensor, groups: Tensor | None
    ) -> tuple[Tensor, dict[str, float]]:
        gen = torch.Generator().manual_seed(self.seed)
        if self.center:
            X = X - X.mean(0)
        t = y.to(X.dtype) * 2.0 - 1.0
        split = _holdout_split(y.cpu(), _cpu(groups), self.val_fraction, gen)
        tr, va = (i.to(X.device) for i in split)
        bandwidth, ridge, select_auc = self._select(X[tr], t[tr], X[va], y[va], gen)

        # A run on the training split only, for honest validation numbers of the final predictor
        # and of its direction.
        val_model = self._run(X[tr], t[tr], bandwidth, ridge, gen)
        val_scores = val_model.predict(X[va])
        v_tr, _ = self._top_eigenvector(val_model.M)
        proj_tr = X[tr] @ v_tr
        if proj_tr[y[tr]].mean() < proj_tr[~y[tr]].mean():
            v_tr = -v_tr

        model = self._run(X, t, bandwidth, ridge, gen)
        direction, top_frac = self._top_eigenvector(model.M)
        stats = {
            "bandwidth": bandwidth,
            "ridge": ridge,
            "bandwidth_abs": model.L,
            "select_val_auc": select_auc,
            "val_auc": auc(val_scores, y[va]),
            # Scores exclude the target mean, so −offset is the ±1 midpoint threshold.
            "val_acc": _accuracy(val_scores, y[va], -val_model.offset),
            "val_direction_auc": auc(X[va] @ v_tr, y[va]),
            "top_eig_frac": top_frac,
            "n_centres": float(len(model.C)),
            "n_iter": float(self.n_iter),
        }
        return direction, stats


@dataclass
class _KernelModel:
    """f(x) = Σ_i alpha_i exp(−‖x − C_i‖_M / L) (+ offset, the centred-out target mean)."""

    C: Tensor
    CM: Tensor  # C @ M, reused by every distance computation
    M: Tensor
    alpha: Tensor
    L: float
    med: float  # median pairwise M-distance of the centres (L = bandwidth × med)
    offset: float = 0.0

    def predict(self, X: Tensor) -> Tensor:
        """Scores without the offset (rank-equivalent; threshold at −offset)."""
        D = RFM._distances(X, X @ self.M, self.C, self.CM)
        return D.div_(-self.L).exp_() @ self.alpha


ESTIMATORS: dict[str, type[DirectionEstimator]] = {
    "rfm": RFM,
    # Same estimator; the caller fits it on the target model's own states (the baseline that
    # ExpertSteer's cross-model transfer is compared to).
    "self-rfm": RFM,
    "mean-diff": MeanDiff,
    "pca": PCADiff,
    "logistic": Logistic,
}


def make_estimator(name: str, **kwargs: object) -> DirectionEstimator:
    """Build the estimator registered as ``name`` (see ``ESTIMATORS``) with hyper-parameters."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of: {', '.join(ESTIMATORS)}.")
    cls = ESTIMATORS[name]
    accepted = _param_names(cls)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"estimator {name!r} does not take {', '.join(unknown)}; its parameters are: "
            f"{', '.join(accepted) or '(none)'}."
        )
    return cls(**kwargs)
