"""The Recursive Feature Machine: selection, recovery, determinism, Nyström, xrfm agreement."""

from __future__ import annotations

import pytest
import torch

from expertsteer.estimators.linear import Logistic, MeanDiff
from expertsteer.estimators.rfm import RFM


def cos(estimator, u: torch.Tensor) -> float:
    # Signed on purpose: the sign convention must put the planted (positive) side first.
    return float(estimator.direction_ @ u)


def test_rfm_stats_report_selection_and_validation(fitted):
    est = fitted["rfm"]
    stats = est.stats_
    assert stats["bandwidth"] in est.bandwidths
    assert stats["ridge"] in est.ridges
    for key in ("select_val_auc", "val_auc", "val_acc", "val_direction_auc", "top_eig_frac"):
        assert 0.0 <= stats[key] <= 1.0, key
    assert stats["val_auc"] > 0.9 and stats["val_acc"] > 0.85 and stats["val_direction_auc"] > 0.9
    assert stats["bandwidth_abs"] > 0
    assert stats["n_centres"] == 800.0


def test_rfm_recovers_threshold_concept_without_margin(planted):
    X, y, u = planted(800, 64, margin=0.0, seed=1)
    assert cos(RFM().fit(X, y), u) > 0.9
    assert cos(Logistic().fit(X, y), u) > 0.9


def test_rfm_beats_mean_diff_under_correlated_nuisance(unit):
    # Strong variance along w = (u + v)/√2 tilts E[x|y=1] − E[x|y=0] ∝ Σu towards v (cos ≈ 0.77
    # in the population), while the gradient of the true predictor 1[u·x > 0] stays along u.
    g = torch.Generator().manual_seed(0)
    n, d = 1000, 64
    u = unit(g, d)
    v = unit(g, d)
    v = (v - (v @ u) * u) / (v - (v @ u) * u).norm()
    X = torch.randn(n, d, generator=g) + 3.0 * torch.randn(n, 1, generator=g) * (u + v) / 2**0.5
    y = (X @ u + 0.1 * torch.randn(n, generator=g)) > 0
    rfm_cos, mean_diff_cos = cos(RFM().fit(X, y), u), cos(MeanDiff().fit(X, y), u)
    assert rfm_cos > 0.9
    assert mean_diff_cos < 0.82
    assert rfm_cos > mean_diff_cos + 0.1


def test_rfm_deterministic_under_seed(planted):
    X, y, _ = planted(300, 32, margin=0.5, seed=2)
    a, b = RFM(seed=3).fit(X, y), RFM(seed=3).fit(X, y)
    assert torch.equal(a.direction_, b.direction_)
    assert a.stats_ == b.stats_


def test_rfm_clone_refits_to_the_same_direction(planted):
    X, y, _ = planted(300, 32, margin=0.5, seed=2)
    a = RFM(n_iter=2, seed=3).fit(X, y)
    b = a.clone()
    assert not hasattr(b, "direction_") and b.get_params() == a.get_params()
    assert torch.equal(b.fit(X, y).direction_, a.direction_)


def test_rfm_invariant_to_scale_and_offset(planted):
    # The bandwidth is relative to the median distance and states are centred, so hidden states
    # of any magnitude (and a shared offset, as residual streams have) give the same direction.
    X, y, _ = planted(300, 32, margin=0.5, seed=4)
    offset = 50.0 * torch.randn(32, generator=torch.Generator().manual_seed(5))
    a = RFM(n_iter=3).fit(X, y)
    b = RFM(n_iter=3).fit(1000.0 * X + offset, y)
    assert float(a.direction_ @ b.direction_) > 0.9999


def test_rfm_max_centres_subsample(planted):
    X, y, u = planted(1500, 64, margin=0.5, seed=6)
    est = RFM(max_centres=300).fit(X, y)
    assert est.stats_["n_centres"] == 300.0
    assert cos(est, u) > 0.9


def test_nystroem_system_reduces_to_kernel_ridge_regression():
    # With every row a centre, (KᵀK + λK) coef = Kt has the kernel-ridge solution
    # (K + λI) coef = t, so the ridge grid means the same thing on both sides of max_centres.
    g = torch.Generator().manual_seed(9)
    X = torch.randn(50, 5, generator=g, dtype=torch.float64)
    t = torch.randn(50, generator=g, dtype=torch.float64)
    rfm = RFM()
    D = rfm._distances(X, X, X, X)
    K = torch.exp(-D / D.median())
    exact = rfm._coefficients(K, None, t, 0.1, 50)
    nystroem = rfm._coefficients(K, (K.T @ K, K.T @ t), t, 0.1, 50)
    assert torch.allclose(exact, nystroem, rtol=1e-6, atol=1e-8)


def test_kernel_model_predicts_with_its_coefficients():
    g = torch.Generator().manual_seed(10)
    X = torch.randn(30, 4, generator=g, dtype=torch.float64)
    t = torch.where(X[:, 0] > 0, 1.0, -1.0).double()
    model, _ = RFM()._fit_kernel(X, t, torch.ones(30, dtype=torch.bool), torch.eye(4).double(),
                                 1.0, 1e-3)  # fmt: skip
    assert model.coef_.shape == (30,)
    D = torch.cdist(X, X)
    assert torch.allclose(model.predict(X), torch.exp(-D / model.L) @ model.coef_, atol=1e-8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_iter": 0},
        {"bandwidths": ()},
        {"ridges": (0.0,)},
        {"val_fraction": 1.0},
        {"max_centres": 3},
    ],
)
def test_rfm_rejects_bad_hyper_parameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RFM(**kwargs)


def test_matches_xrfm_on_planted_data(planted):
    pytest.importorskip("xrfm")
    from xrfm.rfm_src import RFM as XRFM
    from xrfm.rfm_src.class_conversion import ClassificationConverter

    X, y, u = planted(800, 64, margin=0.0, seed=8)
    ours = RFM(n_iter=5).fit(X, y)
    assert cos(ours, u) > 0.9

    Xc = X - X.mean(0)
    reference = XRFM(
        kernel="laplace",
        bandwidth=float(torch.pdist(Xc).median()),
        iters=5,
        device="cpu",
        verbose=False,
        tuning_metric="auc",
        class_converter=ClassificationConverter("zero_one", 2),
    )
    reference.fit(
        (Xc[:640], y[:640].float()),
        (Xc[640:], y[640:].float()),
        reg=1e-3,
        method="lstsq",
        early_stop_rfm=False,
        return_best_params=False,
    )
    top = torch.linalg.eigh(reference.M.double())[1][:, -1].float()  # xrfm's learned M
    assert abs(float(top @ u)) > 0.9
    assert abs(float(top @ ours.direction_)) > 0.85


def test_rfm_accepts_groups(paired_data):
    X, y, groups, u = paired_data(k=150, d=32, seed=1)
    assert cos(RFM(n_iter=3).fit(X, y, groups), u) > 0.8
