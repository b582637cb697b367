"""Tests for expertsteer.align: the four expert→target aligners."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from expertsteer.align import (
    ALIGNERS,
    AutoEncoder,
    PairedAutoEncoder,
    Procrustes,
    Ridge,
    make_aligner,
)

# Small problems keep the auto-encoders to well under a second per fit.
FAST_AE = {"epochs": 300, "lr": 3e-2, "batch_size": 256, "patience": 10}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _expert_states(n: int, d_e: int, seed: int = 0) -> torch.Tensor:
    """Gaussian states with non-zero means and unequal feature scales (exercises standardising)."""
    g = _gen(seed)
    scales = torch.logspace(-1, 1, d_e, dtype=torch.float64)
    return torch.randn(n, d_e, generator=g, dtype=torch.float64) * scales + 5.0


def _linear_pair(n: int, d_e: int, d_t: int, noise: float, seed: int = 0):
    """X_t = X_e Aᵀ + b + noise; returns (X_e, X_t, A, b)."""
    g = _gen(seed + 1)
    X_e = _expert_states(n, d_e, seed)
    A = torch.randn(d_t, d_e, generator=g, dtype=torch.float64) / d_e**0.5
    b = torch.randn(d_t, generator=g, dtype=torch.float64) * 3
    X_t = X_e @ A.T + b + noise * torch.randn(n, d_t, generator=g, dtype=torch.float64)
    return X_e, X_t, A, b


def _fitted(name: str, X_e: torch.Tensor, X_t: torch.Tensor):
    kwargs = FAST_AE if name in ("ae", "paired-ae") else {}
    return make_aligner(name, **kwargs).fit(X_e, X_t)


@pytest.fixture(scope="module")
def fitted_all():
    """Each aligner fitted once on the same paired problem (d_E=20 → d_T=12)."""
    X_e, X_t, _, _ = _linear_pair(400, 20, 12, noise=0.1)
    return X_e, X_t, {name: _fitted(name, X_e, X_t) for name in ALIGNERS}


# ----------------------------------------------------------------------------- shared contract


@pytest.mark.parametrize("name", sorted(ALIGNERS))
def test_transform_is_exactly_the_affine_part(fitted_all, name):
    X_e, _, aligners = fitted_all
    al = aligners[name]
    assert al.weight_.shape == (12, 20) and al.bias_.shape == (12,)
    x = X_e[:50].float()
    out = al.transform(X_e[:50])
    assert out.dtype == torch.float32 and out.shape == (50, 12)
    torch.testing.assert_close(out, x @ al.weight_.T + al.bias_, rtol=1e-6, atol=1e-5)
    # Leading batch dimensions pass through, e.g. [B, T, d_E] token states.
    torch.testing.assert_close(al.transform(x.reshape(5, 10, 20)), out.reshape(5, 10, 12))


@pytest.mark.parametrize("name", sorted(ALIGNERS))
def test_map_direction_is_the_normalised_difference_of_transforms(fitted_all, name):
    X_e, _, aligners = fitted_all
    al = aligners[name]
    x = X_e[:3].float()
    v = torch.randn(3, 20, generator=_gen(7))
    diff = al.transform(x + v) - al.transform(x)
    expected = diff / diff.norm(dim=-1, keepdim=True)
    batched = al.map_direction(v)
    torch.testing.assert_close(batched, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batched.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(al.map_direction(v[1]), batched[1])


@pytest.mark.parametrize("name", sorted(ALIGNERS))
def test_quality_and_score_are_variance_weighted_r2(fitted_all, name):
    X_e, X_t, aligners = fitted_all
    al = aligners[name]
    q = al.quality_
    assert (q["n_train"], q["n_val"]) == (360.0, 40.0)
    assert "r2_val" in q
    assert ("recon_r2_val" in q) == (name in ("ae", "paired-ae"))
    expected = r2_score(
        X_t.numpy(), al.transform(X_e).double().numpy(), multioutput="variance_weighted"
    )
    assert al.score(X_e, X_t) == pytest.approx(expected, abs=1e-9)


def test_registry_names_and_target_awareness():
    assert set(ALIGNERS) == {"ae", "paired-ae", "ridge", "procrustes"}
    assert {n for n, cls in ALIGNERS.items() if not cls.target_aware} == {"ae"}
    assert isinstance(make_aligner("ridge", alphas=[1.0]), Ridge)
    assert isinstance(make_aligner("paired-ae", lam=2.0), PairedAutoEncoder)


# ----------------------------------------------------------------------------- ridge


@pytest.mark.parametrize(("d_e", "d_t"), [(32, 12), (12, 32)])
def test_ridge_recovers_the_linear_map(d_e, d_t):
    X_e, X_t, A, b = _linear_pair(800, d_e, d_t, noise=0.01)
    al = Ridge().fit(X_e, X_t)
    W = al.weight_.double()
    assert torch.linalg.matrix_norm(W - A) / torch.linalg.matrix_norm(A) < 0.02
    # The intercept is extrapolated from far-off-centre states (means of 5), hence looser.
    assert torch.linalg.vector_norm(al.bias_.double() - b) / torch.linalg.vector_norm(b) < 0.03
    assert al.quality_["r2_val"] > 0.999
    assert al.alpha_ in Ridge().alphas


def test_ridge_with_more_features_than_samples_generalises():
    # d_E=120 > N=60; states live on a 5-dim latent, so a well-regularised map still transfers.
    g = _gen(3)
    latent = torch.randn(120, 5, generator=g, dtype=torch.float64)
    P_e = torch.randn(5, 120, generator=g, dtype=torch.float64)
    P_t = torch.randn(5, 16, generator=g, dtype=torch.float64)
    X_e = latent @ P_e + 0.05 * torch.randn(120, 120, generator=g, dtype=torch.float64)
    X_t = latent @ P_t
    al = Ridge().fit(X_e[:60], X_t[:60])
    assert al.weight_.shape == (16, 120) and torch.isfinite(al.weight_).all()
    assert al.score(X_e[60:], X_t[60:]) > 0.95


@pytest.mark.parametrize(("n", "d_e"), [(200, 40), (30, 40)])
def test_ridge_refit_solve_equals_the_spectral_form(n, d_e):
    # The refit at the chosen α (Cholesky) must equal the grid's eigendecomposition form.
    g = _gen(5)
    Z = torch.randn(n, d_e, generator=g, dtype=torch.float64)
    Y = torch.randn(n, 7, generator=g, dtype=torch.float64)
    P, lam, Q = Ridge._spectrum(Z, Y)
    for alpha in (1e-2, 1.0, 30.0):
        ref = (P / (lam + alpha)) @ Q
        assert torch.allclose(Ridge._solve(Z, Y, alpha), ref, rtol=1e-9, atol=1e-10)
        sk = np.linalg.solve(Z.T @ Z + alpha * torch.eye(d_e, dtype=torch.float64), Z.T @ Y)
        assert np.allclose(Ridge._solve(Z, Y, alpha).numpy(), sk, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("n", "d_e"), [(300, 40), (40, 60)])
def test_ridge_grid_r2_equals_explicit_fits_on_the_train_rows(n, d_e):
    # The grid's closed form (primal: Gram of all rows minus the val rows'; dual: eigh of the
    # train rows) must give the R² of an explicit centred ridge fit on the train rows per α.
    g = _gen(6)
    Z = torch.randn(n, d_e, generator=g, dtype=torch.float64) * 2 + 1
    Y = Z[:, :5] @ torch.randn(5, 9, generator=g, dtype=torch.float64)
    Y = Y + torch.randn(n, 9, generator=g, dtype=torch.float64)
    Z, Y = Z - Z.mean(0), Y - Y.mean(0)  # as _fit passes them: centred on all rows
    train, val = torch.arange(n // 4, n), torch.arange(n // 4)
    alphas = [1e-2, 1.0, 30.0, 1e4]
    G, C = (Z.T @ Z, Z.T @ Y) if n >= d_e else (None, None)
    got = Ridge._grid_r2(Z, Y, train, val, alphas, G, C)
    mz, my = Z[train].mean(0), Y[train].mean(0)
    for a, r2 in zip(alphas, got):
        Wt = Ridge._solve(Z[train] - mz, Y[train] - my, a)
        pred = my + (Z[val] - mz) @ Wt
        want = r2_score(Y[val], pred, multioutput="variance_weighted")
        assert r2 == pytest.approx(want, abs=1e-9)


def test_ridge_picks_a_stronger_penalty_for_noisier_targets():
    X_e, X_t, _, _ = _linear_pair(200, 40, 8, noise=0.01)
    _, X_t_noisy, _, _ = _linear_pair(200, 40, 8, noise=3.0)
    assert Ridge().fit(X_e, X_t_noisy).alpha_ > 10 * Ridge().fit(X_e, X_t).alpha_


# ----------------------------------------------------------------------------- procrustes


def _orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A rows×cols matrix with orthonormal columns (rows ≥ cols)."""
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=_gen(seed), dtype=torch.float64))
    return q


@pytest.mark.parametrize(("d_e", "d_t"), [(16, 16), (12, 20), (20, 12)])
def test_procrustes_recovers_a_scaled_isometry_exactly(d_e, d_t):
    n, c = 300, 2.5
    b = torch.linspace(-3, 3, d_t, dtype=torch.float64)
    if d_t >= d_e:
        # Q [d_T, d_E] with orthonormal columns: the map is exact for any expert states.
        X_e = _expert_states(n, d_e)
        Q = _orthonormal(d_t, d_e, seed=1)
    else:
        # Q = U [I 0] Vᵀ drops d_E - d_T directions. The trace-maximising partial isometry is Q
        # only when the dropped directions are uncorrelated with the kept ones, so build the
        # expert states from centred, mutually orthogonal columns in the V basis.
        raw = torch.randn(n, d_e, generator=_gen(2), dtype=torch.float64)
        cols, _ = torch.linalg.qr(raw - raw.mean(dim=0))
        V = _orthonormal(d_e, d_e, seed=3)
        X_e = (cols * torch.linspace(1, 4, d_e, dtype=torch.float64)) @ V.T + 1.0
        Q = _orthonormal(d_t, d_t, seed=4) @ V[:, :d_t].T
    X_t = c * X_e @ Q.T + b
    al = Procrustes().fit(X_e, X_t)
    torch.testing.assert_close(al.weight_.double(), c * Q, rtol=0, atol=1e-5)
    torch.testing.assert_close(al.bias_.double(), b, rtol=0, atol=1e-4)
    # (quality_ comes from a training-split fit, where the construction above is not exact.)
    assert al.score(X_e, X_t) == pytest.approx(1.0, abs=1e-9)


def test_procrustes_is_a_scaled_partial_isometry_on_noisy_data():
    for d_e, d_t in [(20, 12), (12, 20)]:
        X_e, X_t, _, _ = _linear_pair(300, d_e, d_t, noise=0.5)
        W = Procrustes().fit(X_e, X_t).weight_.double()
        gram = W @ W.T if d_t < d_e else W.T @ W
        s2 = gram[0, 0]
        torch.testing.assert_close(gram, s2 * torch.eye(min(d_e, d_t), dtype=W.dtype))


# ----------------------------------------------------------------------------- auto-encoders


def test_ae_reconstruction_is_high_on_low_rank_data():
    # rank-6 expert states in d_E=24 squeezed through a d_T=8 code: reconstruction is possible.
    g = _gen(5)
    latent = torch.randn(600, 6, generator=g, dtype=torch.float64)
    X_e = latent @ torch.randn(6, 24, generator=g, dtype=torch.float64) + 2.0
    al = AutoEncoder(out_dim=8, **FAST_AE).fit(X_e)
    assert al.quality_["recon_r2_val"] > 0.99
    assert "r2_val" not in al.quality_  # no target states, nothing to compare against
    assert al.inverse_transform(al.transform(X_e)).shape == X_e.shape


def test_paired_ae_aligns_with_targets_where_ae_does_not():
    # A well-posed linear problem: the plain ae reconstructs well, but its code is in an arbitrary
    # basis (the paper's weakness); the alignment term puts it in the target's basis.
    X_e, X_t, _, _ = _linear_pair(1000, 24, 12, noise=0.05)
    ae = AutoEncoder(**FAST_AE).fit(X_e, X_t)
    paired = PairedAutoEncoder(**FAST_AE).fit(X_e, X_t)
    assert ae.quality_["r2_val"] < 0.3
    assert paired.quality_["r2_val"] > 0.8
    assert paired.quality_["recon_r2_val"] > 0.4  # still an auto-encoder


def test_ae_is_deterministic_under_seed_and_ignores_targets():
    X_e, X_t, _, _ = _linear_pair(300, 16, 8, noise=0.1)
    kwargs = {**FAST_AE, "epochs": 20}
    a = AutoEncoder(**kwargs, seed=1).fit(X_e, X_t)
    b = AutoEncoder(**kwargs, seed=1, out_dim=8).fit(X_e)  # no targets: identical fit
    c = AutoEncoder(**kwargs, seed=2).fit(X_e, X_t)
    assert torch.equal(a.weight_, b.weight_) and torch.equal(a.bias_, b.bias_)
    assert torch.equal(a.decoder_weight_, b.decoder_weight_)
    assert not torch.equal(a.weight_, c.weight_)
    p1 = PairedAutoEncoder(**kwargs).fit(X_e, X_t)
    p2 = PairedAutoEncoder(**kwargs).fit(X_e, X_t)
    assert torch.equal(p1.weight_, p2.weight_)


def test_ae_early_stopping_stops_before_the_epoch_budget():
    X_e, _, _, _ = _linear_pair(300, 16, 8, noise=0.1)
    al = AutoEncoder(out_dim=8, **{**FAST_AE, "epochs": 1000, "patience": 3, "tol": 1e-2})
    assert al.fit(X_e).n_epochs_ < 1000


# ----------------------------------------------------------------------------- validation


def test_fit_rejects_mismatched_rows():
    X_e, X_t, _, _ = _linear_pair(50, 6, 4, noise=0.1)
    with pytest.raises(ValueError, match="same texts"):
        Ridge().fit(X_e, X_t[:-1])


def test_fit_rejects_non_finite_values():
    X_e, X_t, _, _ = _linear_pair(50, 6, 4, noise=0.1)
    X_e[3, 2] = float("nan")
    with pytest.raises(ValueError, match="X_e contains 1 NaN/inf"):
        Procrustes().fit(X_e, X_t)
    X_t[0, 0] = float("inf")
    with pytest.raises(ValueError, match="X_t contains 1 NaN/inf"):
        Ridge().fit(X_e[:, :0].new_ones(50, 6), X_t)


@pytest.mark.parametrize("name", ["ridge", "procrustes", "paired-ae"])
def test_target_aware_aligners_need_target_states(name):
    with pytest.raises(ValueError, match="needs paired target states"):
        make_aligner(name).fit(torch.randn(50, 6))


def test_ae_needs_a_code_width():
    with pytest.raises(ValueError, match="out_dim"):
        AutoEncoder().fit(torch.randn(50, 6))
    with pytest.raises(ValueError, match="out_dim=3 but X_t has width 4"):
        AutoEncoder(out_dim=3).fit(torch.randn(50, 6), torch.randn(50, 4))


def test_shape_and_sample_count_errors():
    with pytest.raises(ValueError, match="must be 2-D"):
        Ridge().fit(torch.randn(50), torch.randn(50, 4))
    with pytest.raises(ValueError, match="too few samples"):
        Ridge().fit(torch.randn(3, 6), torch.randn(3, 4))
    with pytest.raises(ValueError, match="val_fraction"):
        Ridge(val_fraction=1.5).fit(torch.randn(50, 6), torch.randn(50, 4))
    al = Ridge().fit(torch.randn(50, 6), torch.randn(50, 4))
    with pytest.raises(ValueError, match="width d_E=6"):
        al.transform(torch.randn(5, 7))
    with pytest.raises(RuntimeError, match="not fitted"):
        Procrustes().transform(torch.randn(5, 6))


def test_unknown_aligner_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="ae, paired-ae, procrustes, ridge"):
        make_aligner("cca")


def test_numpy_inputs_are_accepted():
    X_e, X_t, _, _ = _linear_pair(100, 6, 4, noise=0.1)
    al = Ridge().fit(X_e.numpy(), X_t.numpy())
    assert al.score(X_e.numpy(), X_t.numpy()) == pytest.approx(al.score(X_e, X_t))
    assert np.isfinite(al.quality_["r2_val"])
