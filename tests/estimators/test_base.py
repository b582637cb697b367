"""The estimator interface: sign, stats, projection, input validation, hyper-parameters and
the registry (``expertsteer.estimators.ESTIMATORS`` / ``make_estimator``)."""

from __future__ import annotations

import pytest
import torch

from expertsteer.estimators import (
    ESTIMATORS,
    RFM,
    Logistic,
    MeanDiff,
    PCADiff,
    make_estimator,
)
from expertsteer.estimators.base import DirectionEstimator
from expertsteer.registry import UnknownNameError

NAMES = ("rfm", "mean-diff", "pca", "logistic")


def cos(estimator: DirectionEstimator, u: torch.Tensor) -> float:
    # Signed on purpose: the sign convention must put the planted (positive) side first.
    return float(estimator.direction_ @ u)


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


@pytest.mark.parametrize("name", NAMES)
def test_indistinguishable_classes_rejected(name):
    X = torch.ones(20, 4)
    with pytest.raises(ValueError, match="identical|indistinguishable"):
        make_estimator(name).fit(X, torch.arange(20) % 2)


def test_accepts_half_precision_and_int_labels(planted):
    X, y, u = planted(200, 16, margin=1.0)
    est = MeanDiff().fit(X.to(torch.bfloat16), y.long())
    assert cos(est, u) > 0.9
    assert est.project(X.to(torch.bfloat16)).dtype == torch.float32


def test_project_matches_matmul_and_checks_width(planted):
    X, y, _ = planted(100, 16, margin=1.0)
    est = MeanDiff().fit(X, y)
    assert torch.allclose(est.project(X), X @ est.direction_)
    assert est.project(X[0]).shape == ()
    with pytest.raises(ValueError, match="12 features"):
        est.project(X[:, :12])
    with pytest.raises(RuntimeError, match="not fitted"):
        MeanDiff().project(X)


BAD_INPUTS = [
    "1-D X",
    "short y",
    "2-D y",
    "one class",
    "too few",
    "non-binary",
    "nan",
    "inf",
    "short groups",
    "float groups",
]


def _bad_input(case: str, planted):
    X, y, _ = planted(40, 8, margin=1.0)
    nan_X = X.clone()
    nan_X[3, 2] = float("nan")
    inf_X = X.clone()
    inf_X[5, 0] = float("inf")
    few = torch.zeros(40, dtype=torch.bool)
    few[:3] = True
    cases = {
        "1-D X": (X[:, 0], y, None, "2-D"),
        "short y": (X, y[:-1], None, "one label per row"),
        "2-D y": (X, y[:, None], None, "one label per row"),
        "one class": (X, torch.ones(40), None, "only one class"),
        "too few": (X, few, None, "at least 4 examples per class"),
        "non-binary": (X, torch.arange(40) % 3, None, "0/1 or bool"),
        "nan": (nan_X, y, None, "NaN or inf in 1 row"),
        "inf": (inf_X, y, None, "NaN or inf"),
        "short groups": (X, y, torch.arange(39), "one id per row"),
        "float groups": (X, y, torch.arange(40.0), "integer ids"),
    }
    return cases[case]


@pytest.mark.parametrize("case", BAD_INPUTS)
@pytest.mark.parametrize("name", NAMES)
def test_invalid_inputs_rejected(case, name, planted):
    X, y, groups, message = _bad_input(case, planted)
    with pytest.raises(ValueError, match=message):
        make_estimator(name).fit(X, y, groups)


# ----------------------------------------------------------------------------- hyper-parameters


def test_get_params_are_the_init_arguments():
    assert MeanDiff().get_params() == {}
    assert PCADiff(seed=3).get_params() == {"seed": 3}
    assert Logistic(C=0.5).get_params() == {"C": 0.5, "seed": 0, "val_fraction": 0.2}
    params = RFM(n_iter=2, ridges=[0.1]).get_params()
    assert list(params) == [
        "n_iter", "bandwidths", "ridges", "val_fraction", "center", "max_centres", "seed",
    ]  # fmt: skip
    assert params["n_iter"] == 2 and params["ridges"] == (0.1,)
    assert RFM.param_names() == list(params)


@pytest.mark.parametrize("name", NAMES)
def test_clone_of_a_fitted_estimator_is_unfitted_with_the_same_params(fitted, name):
    est = fitted[name]
    copy = est.clone()
    assert type(copy) is type(est) and copy is not est
    assert copy.get_params() == est.get_params()
    assert not hasattr(copy, "direction_") and not hasattr(copy, "stats_")
    assert hasattr(est, "direction_")  # the original keeps its fit


def test_clone_carries_only_hyper_parameters():
    est = Logistic(C=2.0, seed=5)
    est.note = "not a hyper-parameter"
    copy = est.clone()
    assert copy.get_params() == {"C": 2.0, "seed": 5, "val_fraction": 0.2}
    assert not hasattr(copy, "note")


def test_repr_shows_the_hyper_parameters():
    assert repr(PCADiff(seed=2)) == "PCADiff(seed=2)"
    assert repr(MeanDiff()) == "MeanDiff()"


# ----------------------------------------------------------------------------- registry


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


def test_registry_lists_every_estimator_with_a_help_line():
    assert ESTIMATORS.names == ("rfm", "self-rfm", "mean-diff", "pca", "logistic")
    for name in ESTIMATORS:
        assert ESTIMATORS.entry(name).help
        assert isinstance(make_estimator(name), DirectionEstimator)
    assert isinstance(make_estimator("mean-diff"), MeanDiff)
    assert isinstance(make_estimator("pca"), PCADiff)
    assert isinstance(make_estimator("logistic"), Logistic)


def test_unknown_name_gives_the_registry_message():
    with pytest.raises(UnknownNameError) as info:
        make_estimator("mean_diff")
    assert str(info.value) == (
        "unknown estimator 'mean_diff': use rfm, self-rfm, mean-diff, pca, logistic. "
        "Did you mean 'mean-diff'?"
    )
    assert isinstance(info.value, ValueError)


def test_an_instance_is_accepted_and_cloned(planted):
    X, y, _ = planted(100, 16, margin=1.0)
    given = PCADiff(seed=4).fit(X, y)
    made = make_estimator(given)
    assert made is not given and isinstance(made, PCADiff)
    assert made.get_params() == {"seed": 4} and not hasattr(made, "direction_")
    assert torch.equal(made.fit(X, y).direction_, given.direction_)
    with pytest.raises(TypeError, match=r"keyword arguments \['seed'\] only go with"):
        make_estimator(given, seed=1)
    with pytest.raises(TypeError, match="a name .* or a DirectionEstimator, not int"):
        make_estimator(3)
