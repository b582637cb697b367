"""The closed-form aligners: ridge regression (penalty grid, primal / dual) and Procrustes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from expertsteer.align.linear import DEFAULT_PENALTIES, Procrustes, Ridge

# ----------------------------------------------------------------------------- ridge


@pytest.mark.parametrize(("d_e", "d_t"), [(32, 12), (12, 32)])
def test_ridge_recovers_the_linear_map(linear_pair, d_e, d_t):
    X_e, X_t, A, b = linear_pair(800, d_e, d_t, noise=0.01)
    al = Ridge().fit(X_e, X_t)
    W = al.weight_.double()
    assert torch.linalg.matrix_norm(W - A) / torch.linalg.matrix_norm(A) < 0.02
    # The intercept is extrapolated from far-off-centre states (means of 5), hence looser.
    assert torch.linalg.vector_norm(al.bias_.double() - b) / torch.linalg.vector_norm(b) < 0.03
    assert al.quality_["r2_val"] > 0.999
    assert al.penalty_ in Ridge().penalties


def test_ridge_with_more_features_than_samples_generalises(gen):
    # d_E=120 > N=60; states live on a 5-dim latent, so a well-regularised map still transfers.
    g = gen(3)
    latent = torch.randn(120, 5, generator=g, dtype=torch.float64)
    P_e = torch.randn(5, 120, generator=g, dtype=torch.float64)
    P_t = torch.randn(5, 16, generator=g, dtype=torch.float64)
    X_e = latent @ P_e + 0.05 * torch.randn(120, 120, generator=g, dtype=torch.float64)
    X_t = latent @ P_t
    al = Ridge().fit(X_e[:60], X_t[:60])
    assert al.weight_.shape == (16, 120) and torch.isfinite(al.weight_).all()
    assert al.score(X_e[60:], X_t[60:]) > 0.95


@pytest.mark.parametrize(("n", "d_e"), [(200, 40), (30, 40)])
def test_ridge_refit_solve_equals_the_spectral_form(gen, n, d_e):
    # The refit at the chosen penalty (Cholesky) must equal the grid's eigendecomposition form.
    g = gen(5)
    Z = torch.randn(n, d_e, generator=g, dtype=torch.float64)
    Y = torch.randn(n, 7, generator=g, dtype=torch.float64)
    P, lam, Q = Ridge._spectrum(Z, Y)
    for penalty in (1e-2, 1.0, 30.0):
        ref = (P / (lam + penalty)) @ Q
        assert torch.allclose(Ridge._solve(Z, Y, penalty), ref, rtol=1e-9, atol=1e-10)
        sk = np.linalg.solve(Z.T @ Z + penalty * torch.eye(d_e, dtype=torch.float64), Z.T @ Y)
        assert np.allclose(Ridge._solve(Z, Y, penalty).numpy(), sk, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("n", "d_e"), [(300, 40), (40, 60)])
def test_ridge_grid_r2_equals_explicit_fits_on_the_train_rows(gen, n, d_e):
    # The grid's closed form (primal: Gram of all rows minus the val rows'; dual: eigh of the
    # train rows) must give the R² of an explicit centred ridge fit on the train rows per penalty.
    g = gen(6)
    Z = torch.randn(n, d_e, generator=g, dtype=torch.float64) * 2 + 1
    Y = Z[:, :5] @ torch.randn(5, 9, generator=g, dtype=torch.float64)
    Y = Y + torch.randn(n, 9, generator=g, dtype=torch.float64)
    Z, Y = Z - Z.mean(0), Y - Y.mean(0)  # as _fit passes them: centred on all rows
    train, val = torch.arange(n // 4, n), torch.arange(n // 4)
    penalties = [1e-2, 1.0, 30.0, 1e4]
    G, C = (Z.T @ Z, Z.T @ Y) if n >= d_e else (None, None)
    got = Ridge._grid_r2(Z, Y, train, val, penalties, G, C)
    mz, my = Z[train].mean(0), Y[train].mean(0)
    for p, r2 in zip(penalties, got):
        Wt = Ridge._solve(Z[train] - mz, Y[train] - my, p)
        pred = my + (Z[val] - mz) @ Wt
        want = r2_score(Y[val], pred, multioutput="variance_weighted")
        assert r2 == pytest.approx(want, abs=1e-9)


def test_ridge_picks_a_stronger_penalty_for_noisier_targets(linear_pair):
    X_e, X_t, _, _ = linear_pair(200, 40, 8, noise=0.01)
    _, X_t_noisy, _, _ = linear_pair(200, 40, 8, noise=3.0)
    assert Ridge().fit(X_e, X_t_noisy).penalty_ > 10 * Ridge().fit(X_e, X_t).penalty_


def test_ridge_default_penalties_and_their_check(linear_pair):
    assert Ridge().penalties == DEFAULT_PENALTIES
    assert DEFAULT_PENALTIES[0] == pytest.approx(1e-2) and DEFAULT_PENALTIES[-1] == 1e7
    X_e, X_t, _, _ = linear_pair(50, 6, 4, noise=0.1)
    for bad in ([], [1.0, 0.0]):
        with pytest.raises(ValueError, match="penalties must be non-empty and all positive"):
            Ridge(penalties=bad).fit(X_e, X_t)
    assert Ridge(penalties=[7.0]).fit(X_e, X_t).penalty_ == 7.0


def test_ridge_seed_chooses_the_held_out_rows(linear_pair):
    X_e, X_t, _, _ = linear_pair(60, 30, 4, noise=1.0)
    r2 = {seed: Ridge(seed=seed).fit(X_e, X_t).quality_["r2_val"] for seed in (0, 0, 1)}
    assert r2[0] == Ridge(seed=0).fit(X_e, X_t).quality_["r2_val"]
    assert r2[0] != r2[1]


# ----------------------------------------------------------------------------- procrustes


def _orthonormal(gen, rows: int, cols: int, seed: int) -> torch.Tensor:
    """A rows×cols matrix with orthonormal columns (rows ≥ cols)."""
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen(seed), dtype=torch.float64))
    return q


@pytest.mark.parametrize(("d_e", "d_t"), [(16, 16), (12, 20), (20, 12)])
def test_procrustes_recovers_a_scaled_isometry_exactly(gen, expert_states, d_e, d_t):
    n, c = 300, 2.5
    b = torch.linspace(-3, 3, d_t, dtype=torch.float64)
    if d_t >= d_e:
        # Q [d_T, d_E] with orthonormal columns: the map is exact for any expert states.
        X_e = expert_states(n, d_e)
        Q = _orthonormal(gen, d_t, d_e, seed=1)
    else:
        # Q = U [I 0] Vᵀ drops d_E - d_T directions. The trace-maximising partial isometry is Q
        # only when the dropped directions are uncorrelated with the kept ones, so build the
        # expert states from centred, mutually orthogonal columns in the V basis.
        raw = torch.randn(n, d_e, generator=gen(2), dtype=torch.float64)
        cols, _ = torch.linalg.qr(raw - raw.mean(dim=0))
        V = _orthonormal(gen, d_e, d_e, seed=3)
        X_e = (cols * torch.linspace(1, 4, d_e, dtype=torch.float64)) @ V.T + 1.0
        Q = _orthonormal(gen, d_t, d_t, seed=4) @ V[:, :d_t].T
    X_t = c * X_e @ Q.T + b
    al = Procrustes().fit(X_e, X_t)
    torch.testing.assert_close(al.weight_.double(), c * Q, rtol=0, atol=1e-5)
    torch.testing.assert_close(al.bias_.double(), b, rtol=0, atol=1e-4)
    # (quality_ comes from a training-split fit, where the construction above is not exact.)
    assert al.score(X_e, X_t) == pytest.approx(1.0, abs=1e-9)


def test_procrustes_is_a_scaled_partial_isometry_on_noisy_data(linear_pair):
    for d_e, d_t in [(20, 12), (12, 20)]:
        X_e, X_t, _, _ = linear_pair(300, d_e, d_t, noise=0.5)
        W = Procrustes().fit(X_e, X_t).weight_.double()
        gram = W @ W.T if d_t < d_e else W.T @ W
        s2 = gram[0, 0]
        torch.testing.assert_close(gram, s2 * torch.eye(min(d_e, d_t), dtype=W.dtype))
