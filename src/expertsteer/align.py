"""Step 1 of ExpertSteer: align an expert layer's hidden space (d_E) with the target's (d_T).

Every aligner learns an affine map ``x -> x @ weight_.T + bias_`` from expert states to
target-width vectors; steering directions found in expert space are carried across by the linear
part alone (:meth:`Aligner.map_direction`).

Four aligners, sklearn style (hyper-parameters in ``__init__``, learned state in ``fit`` with a
trailing underscore):

* ``"ae"`` -- the paper's affine auto-encoder, trained on expert states only. Reconstruction fixes
  the code space only up to an invertible linear map, so its output is *not* in the target's
  basis; kept as the paper's baseline.
* ``"paired-ae"`` -- the same auto-encoder plus a loss pulling the code onto paired target states.
* ``"ridge"`` -- closed-form multi-output ridge regression on paired states (the default).
* ``"procrustes"`` -- scaled orthogonal (partial-isometry) map on paired states.

Paired states are the same texts run through both models: ``X_e [N, d_E]`` and ``X_t [N, d_T]``.
Fitting runs on the CPU whatever device the inputs are on; ``transform`` runs on the input's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from expertsteer.types import Tensor

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "ALIGNERS",
    "Aligner",
    "AutoEncoder",
    "PairedAutoEncoder",
    "Procrustes",
    "Ridge",
    "make_aligner",
]

# Fewest rows in each of the train and held-out splits: R² needs a variance, i.e. two rows.
_MIN_SPLIT_ROWS = 2
# Ridge penalties, 1e-2 … 1e7 in half-decades; inputs are standardised, so ZᵀZ has trace N·d_E.
_DEFAULT_ALPHAS = tuple(10.0 ** (k / 2) for k in range(-4, 15))


# ----------------------------------------------------------------------------- shared helpers


def _as_matrix(X: Tensor, name: str) -> Tensor:
    """Validate a 2-D finite state matrix and return it as a float64 CPU tensor."""
    X = torch.as_tensor(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, d], one row per text; got {tuple(X.shape)}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(X.shape)}); collect hidden states first")
    X = X.detach().to("cpu", torch.float64)
    # One sum is far cheaper than an elementwise isfinite; any NaN/inf makes it non-finite.
    if not torch.isfinite(X.sum()):
        bad = ~torch.isfinite(X)
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN/inf values in {int(bad.any(dim=1).sum())} rows; "
            "drop those rows, or read the "
            "states in a wider dtype (fp16 activations can overflow)"
        )
    return X


def _split(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded train / held-out row indices."""
    n_val = max(_MIN_SPLIT_ROWS, math.ceil(n * val_fraction))
    if n - n_val < _MIN_SPLIT_ROWS:
        raise ValueError(
            f"too few samples: N={n} with val_fraction={val_fraction} leaves {n - n_val} training "
            f"rows; each split needs at least {_MIN_SPLIT_ROWS}, so collect hidden states for "
            "more texts"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]


def _r2(pred: Tensor, Y: Tensor) -> float:
    """Variance-weighted R²: 1 - SSE / SST, SST about the column means of ``Y``."""
    pred, Y = pred.to(torch.float64), Y.to(torch.float64)
    sst = float(((Y - Y.mean(dim=0)) ** 2).sum())
    sse = float(((Y - pred) ** 2).sum())
    if sst == 0.0:
        # Constant targets: R² is undefined; report perfect only for a perfect fit.
        return 1.0 if sse == 0.0 else -math.inf
    return 1.0 - sse / sst


class _Scaler:
    """Affine coordinate change ``z = (x - mean) / scale``; ``scale`` may be a scalar."""

    def __init__(self, mean: Tensor, scale: Tensor) -> None:
        self.mean, self.scale = mean, scale

    @classmethod
    def per_feature(cls, X: Tensor) -> _Scaler:
        # Constant features get scale 1 so they map to 0 instead of dividing by zero.
        std = X.std(dim=0, correction=0)
        return cls(X.mean(dim=0), torch.where(std > 0, std, torch.ones_like(std)))

    @classmethod
    def centre(cls, X: Tensor) -> _Scaler:
        return cls(X.mean(dim=0), torch.ones((), dtype=X.dtype))

    @classmethod
    def frobenius(cls, X: Tensor) -> _Scaler:
        """Centre, then divide by the Frobenius norm of the centred matrix."""
        mean = X.mean(dim=0)
        norm = torch.linalg.matrix_norm(X - mean)
        return cls(mean, norm if norm > 0 else torch.ones((), dtype=X.dtype))

    @classmethod
    def identity(cls, d: int) -> _Scaler:
        return cls(torch.zeros(d, dtype=torch.float64), torch.ones((), dtype=torch.float64))

    def __call__(self, X: Tensor) -> Tensor:
        return (X - self.mean) / self.scale


def _fold(W: Tensor, b: Tensor, s_in: _Scaler, s_out: _Scaler) -> tuple[Tensor, Tensor]:
    """Express ``x -> s_out⁻¹(W s_in(x) + b)`` as ``x @ weight.T + bias`` in original units."""
    out_scale = s_out.scale.reshape(-1, 1) if s_out.scale.ndim else s_out.scale
    weight = out_scale * W / s_in.scale
    bias = s_out.scale * (b - W @ (s_in.mean / s_in.scale)) + s_out.mean
    return weight, bias


# ----------------------------------------------------------------------------- base class


class Aligner:
    """Affine map from expert hidden states (d_E) to target-width vectors (d_T).

    After :meth:`fit`: ``weight_`` [d_T, d_E] and ``bias_`` [d_T] (float32, original units, so
    ``transform(x) == x @ weight_.T + bias_``) and ``quality_`` (held-out metrics).
    """

    name: ClassVar[str]
    target_aware: ClassVar[bool] = True

    val_fraction: float
    seed: int
    weight_: Tensor
    bias_: Tensor
    quality_: dict[str, float]

    def fit(self, X_e: Tensor, X_t: Tensor | None = None) -> Self:
        """Learn the map from expert states ``X_e`` [N, d_E] (and paired target states ``X_t``)."""
        X_e = _as_matrix(X_e, "X_e")
        if X_t is None:
            if self.target_aware:
                raise ValueError(
                    f"the {self.name!r} aligner needs paired target states X_t [N, d_T]: run the "
                    "same texts through the target model; or use 'ae' (expert states only, the "
                    "paper's baseline)"
                )
        else:
            X_t = _as_matrix(X_t, "X_t")
            if X_t.shape[0] != X_e.shape[0]:
                raise ValueError(
                    f"X_e has {X_e.shape[0]} rows but X_t has {X_t.shape[0]}; the rows must be "
                    "the same texts, in the same order, read through both models"
                )
        self._check_params()
        train, val = _split(X_e.shape[0], self.val_fraction, self.seed)
        self.quality_ = {"n_train": float(len(train)), "n_val": float(len(val))}
        weight, bias = self._fit(X_e, X_t, train, val)
        self.weight_ = weight.to(torch.float32)
        self.bias_ = bias.to(torch.float32)
        return self

    def transform(self, X_e: Tensor) -> Tensor:
        """Map expert states [..., d_E] to target-width vectors [..., d_T] (float32)."""
        W, b = self._linear_on(X_e)
        return torch.as_tensor(X_e).to(W.device, torch.float32) @ W.T + b

    def map_direction(self, v_e: Tensor) -> Tensor:
        """Carry expert direction(s) [d_E] or [k, d_E] through the linear part, unit-normed."""
        W, _ = self._linear_on(v_e)
        v_t = torch.as_tensor(v_e).to(W.device, torch.float32) @ W.T
        norm = torch.linalg.vector_norm(v_t, dim=-1, keepdim=True)
        if bool((norm <= torch.finfo(torch.float32).tiny).any()):
            raise ValueError(
                "a direction maps to the zero vector (it lies in the aligner's null space, e.g. "
                "the d_E - d_T dimensions a narrower target cannot represent); check v_e"
            )
        return v_t / norm

    def score(self, X_e: Tensor, X_t: Tensor) -> float:
        """Variance-weighted R² of ``transform(X_e)`` against target states ``X_t``."""
        self._check_fitted()
        X_e, X_t = _as_matrix(X_e, "X_e"), _as_matrix(X_t, "X_t")
        d_t, d_e = self.weight_.shape
        if X_e.shape[0] != X_t.shape[0] or X_e.shape[1] != d_e or X_t.shape[1] != d_t:
            raise ValueError(
                f"score needs X_e [N, {d_e}] and X_t [N, {d_t}]; got {tuple(X_e.shape)} and "
                f"{tuple(X_t.shape)}"
            )
        return _r2(self.transform(X_e), X_t)

    # -- internals --------------------------------------------------------------------------

    def _fit(
        self, X_e: Tensor, X_t: Tensor | None, train: Tensor, val: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Return (weight, bias) in original units (float64); may add to ``quality_``."""
        raise NotImplementedError

    def _check_params(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1); got {self.val_fraction}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "weight_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit() first")

    def _linear_on(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Fitted (weight_, bias_) on the device of ``X``, after checking its last dimension."""
        self._check_fitted()
        X = torch.as_tensor(X)
        d_e = self.weight_.shape[1]
        if X.ndim == 0 or X.shape[-1] != d_e:
            raise ValueError(f"expected expert vectors of width d_E={d_e}; got {tuple(X.shape)}")
        return self.weight_.to(X.device), self.bias_.to(X.device)


# ----------------------------------------------------------------------------- closed form


class Ridge(Aligner):
    """Multi-output ridge regression from standardised expert states to centred target states.

    The penalty is chosen from ``alphas`` by held-out R² (one eigendecomposition of the training
    split's Gram matrix serves the whole grid; features are standardised with all rows'
    statistics), then the map is refitted on all rows with the chosen ``alpha_``. ``r2_val`` is
    the held-out R² at ``alpha_`` (slightly optimistic: the same split picked it). Float64
    throughout; works for d_E > N.
    """

    name = "ridge"
    target_aware = True

    def __init__(
        self,
        alphas: Sequence[float] = _DEFAULT_ALPHAS,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.alphas = alphas
        self.val_fraction = val_fraction
        self.seed = seed

    alpha_: float

    def _check_params(self) -> None:
        super()._check_params()
        if len(self.alphas) == 0 or min(self.alphas) <= 0:
            raise ValueError(f"alphas must be non-empty and all positive; got {self.alphas}")

    def _fit(
        self, X_e: Tensor, X_t: Tensor | None, train: Tensor, val: Tensor
    ) -> tuple[Tensor, Tensor]:
        assert X_t is not None  # guaranteed by target_aware
        alphas = sorted(float(a) for a in self.alphas)
        # Standardised once with all rows' statistics: the Gram products over all rows then
        # serve both the grid (train = all - val) and the refit.
        s_e, s_t = _Scaler.per_feature(X_e), _Scaler.centre(X_t)
        Z, Y = s_e(X_e), s_t(X_t)
        primal = Z.shape[0] >= Z.shape[1]
        G, C = (Z.T @ Z, Z.T @ Y) if primal else (None, None)
        r2 = self._grid_r2(Z, Y, train, val, alphas, G, C)
        best = max(range(len(alphas)), key=r2.__getitem__)
        self.alpha_ = alphas[best]
        self.quality_["r2_val"] = r2[best]
        W = (self._solve_gram(G, C, self.alpha_) if primal else self._solve(Z, Y, self.alpha_)).T
        return _fold(W, torch.zeros(W.shape[0], dtype=W.dtype), s_e, s_t)

    @classmethod
    def _grid_r2(cls, Z, Y, train, val, alphas, G=None, C=None) -> list[float]:
        """Held-out R² of a fit on the train rows (centred on their own means) at every α."""
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
        # SSE(α) = |R|² - 2 Σ_k d_k c_k + dᵀ M d with d = 1/(λ+α), R the val residual at d = 0:
        # every α for the price of a few small products instead of one prediction per α.
        R = Yv - my
        c = ((A.T @ R) * Q).sum(1)
        M = (A.T @ A) * (Q @ Q.T)
        rr = float((R * R).sum())
        sst = float(((Yv - Yv.mean(0)) ** 2).sum())
        out = []
        for a in alphas:
            d = 1.0 / (lam + a)
            sse = max(rr - 2 * float(d @ c) + float(d @ M @ d), 0.0)
            out.append((1.0 if sse == 0.0 else -math.inf) if sst == 0.0 else 1.0 - sse / sst)
        return out

    @staticmethod
    def _solve_gram(G: Tensor, C: Tensor, alpha: float) -> Tensor:
        """Wᵀ = (G + αI)⁻¹ C by Cholesky (G = ZᵀZ, C = ZᵀY): ~10× cheaper than an eigh."""
        A = G.clone()
        A.diagonal().add_(alpha)
        chol, info = torch.linalg.cholesky_ex(A)
        return torch.cholesky_solve(C, chol) if info == 0 else torch.linalg.solve(A, C)

    @classmethod
    def _solve(cls, Z: Tensor, Y: Tensor, alpha: float) -> Tensor:
        """Wᵀ = (ZᵀZ + αI)⁻¹ ZᵀY at one α (the dual form Zᵀ (ZZᵀ + αI)⁻¹ Y when d_E > N)."""
        if Z.shape[0] >= Z.shape[1]:
            return cls._solve_gram(Z.T @ Z, Z.T @ Y, alpha)
        return Z.T @ cls._solve_gram(Z @ Z.T, Y, alpha)

    @staticmethod
    def _spectrum(Z: Tensor, Y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(P, λ, Q) with ridge coefficients ``Wᵀ(α) = P diag(1/(λ+α)) Q`` for every α.

        One eigendecomposition of the smaller Gram matrix (λ = squared singular values of Z)
        serves the whole grid; it is cheaper than an SVD of Z and, in the dual form, handles
        d_E > N.
        """
        if Z.shape[0] >= Z.shape[1]:  # primal: (ZᵀZ + αI)⁻¹ ZᵀY with ZᵀZ = V Λ Vᵀ
            lam, V = torch.linalg.eigh(Z.T @ Z)
            P, Q = V, V.T @ (Z.T @ Y)
        else:  # dual: Zᵀ (ZZᵀ + αI)⁻¹ Y with ZZᵀ = U Λ Uᵀ
            lam, U = torch.linalg.eigh(Z @ Z.T)
            P, Q = Z.T @ U, U.T @ Y
        # Rounding can leave tiny negative eigenvalues; α > 0 keeps every 1/(λ+α) finite.
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
        self.quality_["r2_val"] = _r2(X_e[val] @ weight.T + bias, X_t[val])
        return self._solve(X_e, X_t)

    @staticmethod
    def _solve(X_e: Tensor, X_t: Tensor) -> tuple[Tensor, Tensor]:
        s_e, s_t = _Scaler.frobenius(X_e), _Scaler.frobenius(X_t)
        A, B = s_e(X_e), s_t(X_t)
        U, _, Vh = torch.linalg.svd(B.T @ A, full_matrices=False)
        W = U @ Vh
        AW = A @ W.T
        denom = float((AW**2).sum())
        scale = float((AW * B).sum()) / denom if denom > 0 else 0.0
        return _fold(scale * W, torch.zeros(W.shape[0], dtype=W.dtype), s_e, s_t)


# ----------------------------------------------------------------------------- auto-encoders


class AutoEncoder(Aligner):
    """The paper's affine auto-encoder: encoder d_E→d_T, decoder d_T→d_E, reconstruction MSE only.

    Inputs are standardised per feature (training-split statistics, folded into ``weight_``).
    Trained with Adam on minibatches, early-stopped on a seeded held-out split (stop after
    ``patience`` epochs without a relative improvement of ``tol``; best weights restored).
    Bit-identical across fits with the same ``seed`` on the same machine and thread count.

    The code space is only determined up to an invertible linear map, so ``transform`` does *not*
    land in the target's basis; ``X_t``, if given, is used only to report ``r2_val``.
    ``quality_["recon_r2_val"]`` is the held-out reconstruction R² of expert states (variance
    weighted, original units, like ``score``). Also learned: ``decoder_weight_`` [d_E, d_T],
    ``decoder_bias_`` (see :meth:`inverse_transform`) and ``n_epochs_`` (epochs run).
    """

    name = "ae"
    target_aware = False
    # Weight of the alignment term; the plain auto-encoder has none (PairedAutoEncoder sets it).
    lam: float = 0.0

    def __init__(
        self,
        out_dim: int | None = None,
        epochs: int = 200,
        lr: float = 1e-3,
        batch_size: int = 256,
        weight_decay: float = 0.0,
        val_fraction: float = 0.1,
        patience: int = 10,
        tol: float = 1e-4,
        seed: int = 0,
    ) -> None:
        self.out_dim = out_dim
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.val_fraction = val_fraction
        self.patience = patience
        self.tol = tol
        self.seed = seed

    decoder_weight_: Tensor
    decoder_bias_: Tensor
    n_epochs_: int

    def inverse_transform(self, Y: Tensor) -> Tensor:
        """Decode code vectors [..., d_T] back to expert states [..., d_E] (float32)."""
        self._check_fitted()
        Y = torch.as_tensor(Y)
        W, b = self.decoder_weight_.to(Y.device), self.decoder_bias_.to(Y.device)
        return Y.to(torch.float32) @ W.T + b

    def _check_params(self) -> None:
        super()._check_params()
        for key in ("epochs", "batch_size", "patience"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1; got {getattr(self, key)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.tol < 0:
            raise ValueError("lr must be > 0, and weight_decay and tol >= 0")

    def _code_dim(self, X_t: Tensor | None) -> int:
        if X_t is None:
            if self.out_dim is None:
                raise ValueError(
                    "the code width d_T is unknown: pass out_dim=<target hidden size> or give X_t"
                )
            return self.out_dim
        if self.out_dim is not None and self.out_dim != X_t.shape[1]:
            raise ValueError(f"out_dim={self.out_dim} but X_t has width {X_t.shape[1]}")
        return X_t.shape[1]

    def _target_scaler(self, X_t: Tensor | None, train: Tensor) -> _Scaler | None:
        """Coordinates the code is trained to match, or None for reconstruction only."""
        return None

    def _fit(
        self, X_e: Tensor, X_t: Tensor | None, train: Tensor, val: Tensor
    ) -> tuple[Tensor, Tensor]:
        d_t = self._code_dim(X_t)
        s_e = _Scaler.per_feature(X_e[train])
        s_t = self._target_scaler(X_t, train)
        Z = s_e(X_e).to(torch.float32)
        T = None if s_t is None else s_t(X_t).to(torch.float32)
        We, be, Wd, bd = self._train(Z, T, train, val, d_t)

        s_code = s_t if s_t is not None else _Scaler.identity(d_t)
        We, be, Wd, bd = (p.to(torch.float64) for p in (We, be, Wd, bd))
        dec_w, dec_b = _fold(Wd, bd, s_code, s_e)
        self.decoder_weight_, self.decoder_bias_ = dec_w.float(), dec_b.float()
        weight, bias = _fold(We, be, s_e, s_code)

        X_val = X_e[val]
        code_val = X_val @ weight.T + bias
        self.quality_["recon_r2_val"] = _r2(code_val @ dec_w.T + dec_b, X_val)
        if X_t is not None:
            self.quality_["r2_val"] = _r2(code_val, X_t[val])
        return weight, bias

    def _train(
        self, Z: Tensor, T: Tensor | None, train: Tensor, val: Tensor, d_t: int
    ) -> tuple[Tensor, ...]:
        """Adam on (standardised) rows; returns the best (We, be, Wd, bd) by held-out loss."""
        gen = torch.Generator().manual_seed(self.seed)
        d_e = Z.shape[1]

        def init(d_out: int, d_in: int) -> list[Tensor]:
            # nn.Linear's default U(±1/√fan_in), drawn from our generator for reproducibility.
            bound = 1.0 / math.sqrt(d_in)
            return [
                ((torch.rand(shape, generator=gen) * 2 - 1) * bound).requires_grad_()
                for shape in ((d_out, d_in), (d_out,))
            ]

        params = init(d_t, d_e) + init(d_e, d_t)
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

        def loss(rows: Tensor) -> Tensor:
            We, be, Wd, bd = params
            z = Z[rows]
            code = torch.addmm(be, z, We.T)
            out = torch.nn.functional.mse_loss(torch.addmm(bd, code, Wd.T), z)
            if T is not None:
                out = out + self.lam * torch.nn.functional.mse_loss(code, T[rows])
            return out

        best, best_params, bad = math.inf, [p.detach().clone() for p in params], 0
        for epoch in range(1, self.epochs + 1):
            self.n_epochs_ = epoch
            perm = train[torch.randperm(len(train), generator=gen)]
            for rows in perm.split(self.batch_size):
                opt.zero_grad(set_to_none=True)
                loss(rows).backward()
                opt.step()
            with torch.no_grad():
                val_loss = float(loss(val))
            if val_loss < best * (1 - self.tol):
                best, best_params, bad = val_loss, [p.detach().clone() for p in params], 0
            else:
                bad += 1
                if bad >= self.patience:
                    break
        return tuple(best_params)


class PairedAutoEncoder(AutoEncoder):
    """Auto-encoder whose code is also pulled onto paired target states.

    Loss: reconstruction MSE + ``lam`` · MSE(f(h_e), h_t), both in per-feature standardised units
    (target statistics folded back, so ``transform`` outputs target coordinates). Initialised at
    random exactly like ``ae`` (not from ridge), so the comparison with ``ae`` isolates the
    alignment term.
    """

    name = "paired-ae"
    target_aware = True

    def __init__(
        self,
        lam: float = 1.0,
        out_dim: int | None = None,
        epochs: int = 200,
        lr: float = 1e-3,
        batch_size: int = 256,
        weight_decay: float = 0.0,
        val_fraction: float = 0.1,
        patience: int = 10,
        tol: float = 1e-4,
        seed: int = 0,
    ) -> None:
        super().__init__(
            out_dim=out_dim,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            weight_decay=weight_decay,
            val_fraction=val_fraction,
            patience=patience,
            tol=tol,
            seed=seed,
        )
        self.lam = lam

    def _check_params(self) -> None:
        super()._check_params()
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0; got {self.lam}")

    def _target_scaler(self, X_t: Tensor | None, train: Tensor) -> _Scaler | None:
        assert X_t is not None  # guaranteed by target_aware
        return _Scaler.per_feature(X_t[train])


# ----------------------------------------------------------------------------- registry

ALIGNERS: dict[str, type[Aligner]] = {
    cls.name: cls for cls in (AutoEncoder, PairedAutoEncoder, Ridge, Procrustes)
}


def make_aligner(name: str, **kwargs: Any) -> Aligner:
    """Build an aligner by name (``"ae"``, ``"paired-ae"``, ``"ridge"``, ``"procrustes"``)."""
    try:
        cls = ALIGNERS[name]
    except KeyError:
        raise ValueError(
            f"unknown aligner {name!r}; valid names: {', '.join(sorted(ALIGNERS))}"
        ) from None
    return cls(**kwargs)
