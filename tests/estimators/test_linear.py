"""The linear estimators: CAA mean difference, RepE paired-difference PCA, ITI logistic probe."""

from __future__ import annotations

import pytest
import torch

from expertsteer.estimators.linear import Logistic, MeanDiff, PCADiff


def cos(estimator, u: torch.Tensor) -> float:
    # Signed on purpose: the sign convention must put the planted (positive) side first.
    return float(estimator.direction_ @ u)


def test_logistic_stats(fitted, planted):
    stats = fitted["logistic"].stats_
    assert stats["C"] in Logistic.C_GRID
    assert stats["val_auc"] > 0.9
    fixed = Logistic(C=0.5).fit(*planted(200, 16, margin=1.0)[:2])
    assert fixed.stats_["C"] == 0.5 and "val_auc" not in fixed.stats_


def test_pca_deterministic_under_seed(planted):
    X, y, _ = planted(300, 32, margin=0.5, seed=2)
    assert torch.equal(PCADiff(seed=1).fit(X, y).direction_, PCADiff(seed=1).fit(X, y).direction_)


def test_pca_uses_within_group_differences(paired_data):
    X, y, groups, u = paired_data()
    # Random pairing mixes the content vectors into the differences and drowns u; the true
    # pairs cancel them.
    assert abs(cos(PCADiff().fit(X, y), u)) < 0.5
    paired = PCADiff().fit(X, y, groups)
    assert cos(paired, u) > 0.9
    assert paired.stats_["n_pairs"] == 300.0


def test_mean_diff_with_groups_is_mean_of_pair_differences(paired_data):
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


def test_logistic_accepts_groups(paired_data):
    X, y, groups, u = paired_data(k=150, d=32, seed=1)
    assert cos(Logistic().fit(X, y, groups), u) > 0.8


def test_groups_without_complete_pairs_rejected(planted):
    X, y, _ = planted(40, 8, margin=1.0)
    with pytest.raises(ValueError, match="no group holds both"):
        MeanDiff().fit(X, y, groups=y.long())


@pytest.mark.parametrize("kwargs", [{"C": 0.0}, {"C": -1.0}, {"val_fraction": 0.0}])
def test_logistic_rejects_bad_hyper_parameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Logistic(**kwargs)
