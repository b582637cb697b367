"""Closed-form aligners on paired states: ridge regression (the default) and Procrustes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from expertsteer.align.base import Aligner, Scaler, fold, r2
from expertsteer.types import Tensor

__all__ = ["DEFAULT_PENALTIES", "Procrustes", "Ridge"]

# Ridge penalties, 1e-2 … 1e7 in half-decades; inputs are standardised, so ZᵀZ has trace N·d_E.
DEFAULT_PENALTIES: tuple[float, ...] = tuple(10.0 ** (k / 2) for k in range(-4, 15))


class Ridge(Aligner):
    """Multi-output ridge regression from standardised expert states to centred target states.

    The penalty is chosen from ``penalties`` by held-out R² (one eigendecomposition of the training
    split's Gram matrix serves the whole grid; features are standardised with all rows'
    statistics), then the map is refitted on all rows with the chosen ``penalty_``. ``r2_val`` is
    the held-out R² at ``penalty_`` (slightly optimistic: the same split picked it; pass
    ``groups`` to :meth:`fit` so that split holds out whole texts). Float64 throughout; works for
    d_E > N.
    """

    name = "ridge"
    target_aware = True

    def __init__(
        self,
        penalties: Sequence[float] = DEFAULT_PENALTIES,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.penalties = penalties
        self.val_fraction = val_fraction
        self.seed = seed

    penalty_: float

    def _check_params(self) -> None:
        super()._check_params()
        if len(self.penalties) == 0 or min(self.penalties) <= 0:
            raise ValueError(f"penalties must be non-empty and all positive; got {self.penalties}")

    def _fit(
        self, X_e: Tensor, X_t: Tensor | None, train: Tensor, val: Tensor
    ) -> tuple[Tensor, Tensor]:
        assert X_t is not None  # guaranteed by target_aware
        penalties = sorted(float(p) for p in self.penalties)
        # Standardised once with all rows' statistics: the Gram products over all rows then
        # serve both the grid (train = all - val) and the refit.
        s_e, s_t = Scaler.per_feature(X_e), Scaler.centre(X_t)
        Z, Y = s_e(X_e), s_t(X_t)
        primal = Z.shape[0] >= Z.shape[1]
        G, C = (Z.T @ Z, Z.T @ Y) if primal else (None, None)
        r2_grid = self._grid_r2(Z, Y, train, val, penalties, G, C)
        best = max(range(len(penalties)), key=r2_grid.__getitem__)
        self.penalty_ = penalties[best]
        self.quality_["r2_val"] = r2_grid[best]
        p = self.penalty_
        W = (self._solve_gram(G, C, p) if primal else self._solve(Z, Y, p)).T
        return fold(W, torch.zeros(W.shape[0], dtype=W.dtype), s_e, s_t)

    @classmethod
    def _grid_r2(cls, Z, Y, train, val, penalties, G=None, C=None) -> list[float]:
        """Held-out R² of a fit on the train rows (centred on their own means) at every penalty."""
        Zv, Yv = Z[val], Y[val]
        if G is None:  # dual (d_E > N): eigendecompose the train rows' own Gram matrix
            mz, my = Z[train].mean(0), Y[train].mean(0)
            P, lam, Q = cls._spectrum(Z[train] - mz, Y[train] - my)
            A = (Zv - mz) @ P
        else:  # primal: train Gram = all rows' minus the val rows', then centred
            n_t = len(train)
            mz, my = -Zv.sum(0) / n_t, -Yv.sum(0) / n_t  # Z and Y are centred on all rows
            G_t = G - Zv.T @ Zv - n_t * torch.outer(mz, mz)
            C_t = C - Zv.T @ Yv - n_t * torch.outer(mz, my)
            lam, V = torch.linalg.eigh(G_t)
            lam, Q, A = lam.clamp_min(0.0), V.T @ C_t, (Zv - mz) @ V
        # SSE(p) = |R|² - 2 Σ_k d_k c_k + dᵀ M d with d = 1/(λ+p) at penalty p, R the val residual
        # at d = 0: every penalty for the price of a few small products, not one prediction each.
        R = Yv - my
        c = ((A.T @ R) * Q).sum(1)
        M = (A.T @ A) * (Q @ Q.T)
        rr = float((R * R).sum())
        sst = float(((Yv - Yv.mean(0)) ** 2).sum())
        out = []
        for p in penalties:
            d = 1.0 / (lam + p)
            sse = max(rr - 2 * float(d @ c) + float(d @ M @ d), 0.0)
            out.append((1.0 if sse == 0.0 else -math.inf) if sst == 0.0 else 1.0 - sse / sst)
        return out

    @staticmethod
    def _solve_gram(G: Tensor, C: Tensor, penalty: float) -> Tensor:
        """Wᵀ = (G + pI)⁻¹ C at penalty p by Cholesky (G = ZᵀZ, C = ZᵀY): ~10× cheaper than eigh."""
        A = G.clone()
        A.diagonal().add_(penalty)
        chol, info = torch.linalg.cholesky_ex(A)
        return torch.cholesky_solve(C, chol) if info == 0 else torch.linalg.solve(A, C)

    @classmethod
    def _solve(cls, Z: Tensor, Y: Tensor, penalty: float) -> Tensor:
        """Wᵀ = (ZᵀZ + pI)⁻¹ ZᵀY at one penalty p (dual: Zᵀ (ZZᵀ + pI)⁻¹ Y when d_E > N)."""
        if Z.shape[0] >= Z.shape[1]:
            return cls._solve_gram(Z.T @ Z, Z.T @ Y, penalty)
        return Z.T @ cls._solve_gram(Z @ Z.T, Y, penalty)

    @staticmethod
    def _spectrum(Z: Tensor, Y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(P, λ, Q) with ridge coefficients ``Wᵀ(p) = P diag(1/(λ+p)) Q`` for every penalty p.

        One eigendecomposition of the smaller Gram matrix (λ = squared singular values of Z)
        serves the whole grid; it is cheaper than an SVD of Z and, in the dual form, handles
        d_E > N.
        """
        if Z.shape[0] >= Z.shape[1]:  # primal: (ZᵀZ + pI)⁻¹ ZᵀY with ZᵀZ = V Λ Vᵀ
            lam, V = torch.linalg.eigh(Z.T @ Z)
            P, Q = V, V.T @ (Z.T @ Y)
        else:  # dual: Zᵀ (ZZᵀ + pI)⁻¹ Y with ZZᵀ = U Λ Uᵀ
            lam, U = torch.linalg.eigh(Z @ Z.T)
            P, Q = Z.T @ U, U.T @ Y
        # Rounding can leave tiny negative eigenvalues; p > 0 keeps every 1/(λ+p) finite.
        return P, lam.clamp_min(0.0), Q


class Procrustes(Aligner):
    """Scaled orthogonal map: ``x -> s · W x`` between centred, Frobenius-normalised states.

    ``W`` maximises tr(Wᵀ X_tᵀX_e) over matrices with orthonormal rows or columns (a partial
    isometry d_T×d_E when d_E ≠ d_T), from the SVD of X_tᵀX_e; ``s`` is least-squares. Preserves
    angles between expert directions, at the cost of fit (``r2_val`` is from a fit on the training
    split; the final map is refitted on all rows).
    """

    name = "procrustes"
    target_aware = True

    def __init__(self, val_fraction: float = 0.1, seed: int = 0) -> None:
        self.val_fraction = val_fraction
        self.seed = seed

    def _fit(
        self, X_e: Tensor, X_t: Tensor | None, train: Tensor, val: Tensor
    ) -> tuple[Tensor, Tensor]:
        assert X_t is not None  # guaranteed by target_aware
        weight, bias = self._solve(X_e[train], X_t[train])
        self.quality_["r2_val"] = r2(X_e[val] @ weight.T + bias, X_t[val])
        return self._solve(X_e, X_t)

    @staticmethod
    def _solve(X_e: Tensor, X_t: Tensor) -> tuple[Tensor, Tensor]:
        s_e, s_t = Scaler.frobenius(X_e), Scaler.frobenius(X_t)
        A, B = s_e(X_e), s_t(X_t)
        U, _, Vh = torch.linalg.svd(B.T @ A, full_matrices=False)
        W = U @ Vh
        AW = A @ W.T
        denom = float((AW**2).sum())
        scale = float((AW * B).sum()) / denom if denom > 0 else 0.0
        return fold(scale * W, torch.zeros(W.shape[0], dtype=W.dtype), s_e, s_t)
