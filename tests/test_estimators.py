"""Direction estimators: recovery of planted directions, sign, determinism, groups, validation."""

from __future__ import annotations

import pytest
import torch

from expertsteer.estimators import (
    ESTIMATORS,
    RFM,
    DirectionEstimator,
    Logistic,
    MeanDiff,
    PCADiff,
    make_estimator,
)

NAMES = ("rfm", "mean-diff", "pca", "logistic")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The problems here are tiny, so threads only add OpenMP barriers; on a shared 2-core runner
    # those spin against other processes and small LAPACK calls get 10-30x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _unit(g: torch.Generator, d: int) -> torch.Tensor:
    v = torch.randn(d, generator=g)
    return v / v.norm()


def planted(
    n: int, d: int, margin: float = 0.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian states, y = 1[u·x + 0.1ε > 0], then the classes pushed ±margin apart along u."""
    g = torch.Generator().manual_seed(seed)
    u = _unit(g, d)
    X = torch.randn(n, d, generator=g)
    y = (X @ u + 0.1 * torch.randn(n, generator=g)) > 0
    return X + margin * (2 * y.float() - 1)[:, None] * u, y, u


def cos(estimator: DirectionEstimator, u: torch.Tensor) -> float:
    # Signed on purpose: the sign convention must put the planted (positive) side first.
    return float(estimator.direction_ @ u)


@pytest.fixture(scope="module")
def margin_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return planted(800, 64, margin=1.0)


@pytest.fixture(scope="module")
def fitted(margin_data) -> dict[str, DirectionEstimator]:
    X, y, _ = margin_data
    return {name: make_estimator(name).fit(X, y) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_planted_direction_recovered_with_sign(fitted, margin_data, name):
    X, y, u = margin_data
    est = fitted[name]
    assert est.direction_.dtype == torch.float32
    assert est.direction_.shape == (64,)
    assert abs(float(est.direction_.norm()) - 1.0) < 1e-5
    assert cos(est, u) > 0.9
    proj = est.project(X)
    assert proj[y].mean() > proj[~y].mean()


@pytest.mark.parametrize("name", NAMES)
def test_stats_present_and_sane(fitted, margin_data, name):
    X, y, _ = margin_data
    stats = fitted[name].stats_
    assert 0.9 < stats["auc"] <= 1.0
    assert stats["separation"] > 2.0
    assert all(isinstance(v, float) for v in stats.values())
    # auc is the AUC of the projection on the fitted data: flipping labels mirrors it.
    flipped = make_estimator("mean-diff").fit(X, ~y)
    assert flipped.stats_["auc"] == pytest.approx(fitted["mean-diff"].stats_["auc"])


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


def test_logistic_stats(fitted):
    stats = fitted["logistic"].stats_
    assert stats["C"] in Logistic.C_GRID
    assert stats["val_auc"] > 0.9
    fixed = Logistic(C=0.5).fit(*planted(200, 16, margin=1.0)[:2])
    assert fixed.stats_["C"] == 0.5 and "val_auc" not in fixed.stats_


def test_rfm_recovers_threshold_concept_without_margin():
    X, y, u = planted(800, 64, margin=0.0, seed=1)
    assert cos(RFM().fit(X, y), u) > 0.9
    assert cos(Logistic().fit(X, y), u) > 0.9


def test_rfm_beats_mean_diff_under_correlated_nuisance():
    # Strong variance along w = (u + v)/√2 tilts E[x|y=1] − E[x|y=0] ∝ Σu towards v (cos ≈ 0.77
    # in the population), while the gradient of the true predictor 1[u·x > 0] stays along u.
    g = torch.Generator().manual_seed(0)
    n, d = 1000, 64
    u = _unit(g, d)
    v = _unit(g, d)
    v = (v - (v @ u) * u) / (v - (v @ u) * u).norm()
    X = torch.randn(n, d, generator=g) + 3.0 * torch.randn(n, 1, generator=g) * (u + v) / 2**0.5
    y = (X @ u + 0.1 * torch.randn(n, generator=g)) > 0
    rfm_cos, mean_diff_cos = cos(RFM().fit(X, y), u), cos(MeanDiff().fit(X, y), u)
    assert rfm_cos > 0.9
    assert mean_diff_cos < 0.82
    assert rfm_cos > mean_diff_cos + 0.1


def test_rfm_deterministic_under_seed():
    X, y, _ = planted(300, 32, margin=0.5, seed=2)
    a, b = RFM(seed=3).fit(X, y), RFM(seed=3).fit(X, y)
    assert torch.equal(a.direction_, b.direction_)
    assert a.stats_ == b.stats_


def test_pca_deterministic_under_seed():
    X, y, _ = planted(300, 32, margin=0.5, seed=2)
    assert torch.equal(PCADiff(seed=1).fit(X, y).direction_, PCADiff(seed=1).fit(X, y).direction_)


def test_rfm_invariant_to_scale_and_offset():
    # The bandwidth is relative to the median distance and states are centred, so hidden states
    # of any magnitude (and a shared offset, as residual streams have) give the same direction.
    X, y, _ = planted(300, 32, margin=0.5, seed=4)
    offset = 50.0 * torch.randn(32, generator=torch.Generator().manual_seed(5))
    a = RFM(n_iter=3).fit(X, y)
    b = RFM(n_iter=3).fit(1000.0 * X + offset, y)
    assert float(a.direction_ @ b.direction_) > 0.9999


def test_rfm_max_centres_subsample():
    X, y, u = planted(1500, 64, margin=0.5, seed=6)
    est = RFM(max_centres=300).fit(X, y)
    assert est.stats_["n_centres"] == 300.0
    assert cos(est, u) > 0.9


def test_nystroem_system_reduces_to_kernel_ridge_regression():
    # With every row a centre, (KᵀK + λK)α = Kt has the kernel-ridge solution (K + λI)α = t, so
    # the ridge grid means the same thing on both sides of max_centres.
    g = torch.Generator().manual_seed(9)
    X = torch.randn(50, 5, generator=g, dtype=torch.float64)
    t = torch.randn(50, generator=g, dtype=torch.float64)
    rfm = RFM()
    D = rfm._distances(X, X, X, X)
    K = torch.exp(-D / D.median())
    exact = rfm._coefficients(K, None, t, 0.1, 50)
    nystroem = rfm._coefficients(K, (K.T @ K, K.T @ t), t, 0.1, 50)
    assert torch.allclose(exact, nystroem, rtol=1e-6, atol=1e-8)


def paired_data(k: int = 300, d: int = 64, seed: int = 0):
    """Contrast pairs sharing a large per-pair content vector; shuffled, with arbitrary ids."""
    g = torch.Generator().manual_seed(seed)
    u = _unit(g, d)
    content = 3.0 * torch.randn(k, d, generator=g)
    pos = content + 0.5 * u + 0.3 * torch.randn(k, d, generator=g)
    neg = content - 0.5 * u + 0.3 * torch.randn(k, d, generator=g)
    X = torch.cat([pos, neg])
    y = torch.cat([torch.ones(k), torch.zeros(k)]).bool()
    groups = torch.cat([torch.arange(k), torch.arange(k)]) * 7 + 3
    perm = torch.randperm(2 * k, generator=g)
    return X[perm], y[perm], groups[perm], u


def test_pca_uses_within_group_differences():
    X, y, groups, u = paired_data()
    # Random pairing mixes the content vectors into the differences and drowns u; the true
    # pairs cancel them.
    assert abs(cos(PCADiff().fit(X, y), u)) < 0.5
    paired = PCADiff().fit(X, y, groups)
    assert cos(paired, u) > 0.9
    assert paired.stats_["n_pairs"] == 300.0


def test_mean_diff_with_groups_is_mean_of_pair_differences():
    X, y, groups, _ = paired_data(k=20, d=8)
    # Give one group an extra positive (its pair term uses the group's mean positive) and one
    # group only a negative (ignored).
    X = torch.cat([X, torch.randn(2, 8)])
    y = torch.cat([y, torch.tensor([True, False])])
    groups = torch.cat([groups, torch.tensor([3, 999])])
    expected = []
    for gid in torch.unique(groups):
        rows = groups == gid
        if y[rows].any() and (~y[rows]).any():
            expected.append(X[rows & y].double().mean(0) - X[rows & ~y].double().mean(0))
    expected = torch.stack(expected).mean(0)
    est = MeanDiff().fit(X, y, groups)
    assert torch.allclose(est.direction_.double(), expected / expected.norm(), atol=1e-6)
    assert est.stats_["n_pairs"] == 20.0
    ungrouped = MeanDiff().fit(X, y)
    assert not torch.allclose(est.direction_, ungrouped.direction_, atol=1e-4)


def test_rfm_and_logistic_accept_groups():
    X, y, groups, u = paired_data(k=150, d=32, seed=1)
    assert cos(RFM(n_iter=3).fit(X, y, groups), u) > 0.8
    assert cos(Logistic().fit(X, y, groups), u) > 0.8


@pytest.mark.parametrize("name", NAMES)
def test_indistinguishable_classes_rejected(name):
    X = torch.ones(20, 4)
    with pytest.raises(ValueError, match="identical|indistinguishable"):
        make_estimator(name).fit(X, torch.arange(20) % 2)


def test_groups_without_complete_pairs_rejected():
    X, y, _ = planted(40, 8, margin=1.0)
    with pytest.raises(ValueError, match="no group holds both"):
        MeanDiff().fit(X, y, groups=y.long())


def test_accepts_half_precision_and_int_labels():
    X, y, u = planted(200, 16, margin=1.0)
    est = MeanDiff().fit(X.to(torch.bfloat16), y.long())
    assert cos(est, u) > 0.9
    assert est.project(X.to(torch.bfloat16)).dtype == torch.float32


def test_project_matches_matmul_and_checks_width():
    X, y, _ = planted(100, 16, margin=1.0)
    est = MeanDiff().fit(X, y)
    assert torch.allclose(est.project(X), X @ est.direction_)
    assert est.project(X[0]).shape == ()
    with pytest.raises(ValueError, match="12 features"):
        est.project(X[:, :12])
    with pytest.raises(RuntimeError, match="not fitted"):
        MeanDiff().project(X)


def _bad_inputs():
    X, y, _ = planted(40, 8, margin=1.0)
    nan_X = X.clone()
    nan_X[3, 2] = float("nan")
    inf_X = X.clone()
    inf_X[5, 0] = float("inf")
    few = torch.zeros(40, dtype=torch.bool)
    few[:3] = True
    return [
        ("1-D X", X[:, 0], y, None, "2-D"),
        ("short y", X, y[:-1], None, "one label per row"),
        ("2-D y", X, y[:, None], None, "one label per row"),
        ("one class", X, torch.ones(40), None, "only one class"),
        ("too few", X, few, None, "at least 4 examples per class"),
        ("non-binary", X, torch.arange(40) % 3, None, "0/1 or bool"),
        ("nan", nan_X, y, None, "NaN or inf in 1 row"),
        ("inf", inf_X, y, None, "NaN or inf"),
        ("short groups", X, y, torch.arange(39), "one id per row"),
        ("float groups", X, y, torch.arange(40.0), "integer ids"),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
@pytest.mark.parametrize("name", NAMES)
def test_invalid_inputs_rejected(case, name):
    _, X, y, groups, message = case
    with pytest.raises(ValueError, match=message):
        make_estimator(name).fit(X, y, groups)


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


def test_registry_and_factory():
    assert set(ESTIMATORS) == {"rfm", "self-rfm", "mean-diff", "pca", "logistic"}
    assert ESTIMATORS["self-rfm"] is RFM
    est = make_estimator("rfm", n_iter=2, seed=7)
    assert isinstance(est, RFM) and est.n_iter == 2 and est.seed == 7
    assert "n_iter=2" in repr(est)
    with pytest.raises(ValueError, match="rfm, self-rfm, mean-diff, pca, logistic"):
        make_estimator("caa")
    with pytest.raises(ValueError, match="its parameters are: C, seed"):
        make_estimator("logistic", n_iter=3)
    with pytest.raises(ValueError, match=r"\(none\)"):
        make_estimator("mean-diff", seed=1)


def test_matches_xrfm_on_planted_data():
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
