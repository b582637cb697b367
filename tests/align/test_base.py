"""The aligner interface shared by all four aligners, its helpers, hyper-parameters, and the
registry (``expertsteer.align.ALIGNERS`` / ``make_aligner``)."""

from __future__ import annotations

import math

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
from expertsteer.align.base import Aligner, Scaler, _split, fold, r2
from expertsteer.registry import UnknownNameError

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
def test_map_direction_is_the_normalised_difference_of_transforms(fitted_all, gen, name):
    X_e, _, aligners = fitted_all
    al = aligners[name]
    x = X_e[:3].float()
    v = torch.randn(3, 20, generator=gen(7))
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


def test_map_direction_refuses_the_null_space():
    al = Ridge()
    al.weight_, al.bias_ = torch.tensor([[1.0, 0.0]]), torch.zeros(1)
    with pytest.raises(ValueError, match="maps to the zero vector"):
        al.map_direction(torch.tensor([0.0, 1.0]))


# ----------------------------------------------------------------------------- helpers


def test_r2_is_variance_weighted_and_handles_constant_targets(gen):
    Y = torch.randn(30, 3, generator=gen(1), dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.2])
    pred = Y + 0.3 * torch.randn(30, 3, generator=gen(2), dtype=torch.float64)
    want = r2_score(Y.numpy(), pred.numpy(), multioutput="variance_weighted")
    assert r2(pred, Y) == pytest.approx(want, abs=1e-12)
    const = torch.ones(5, 2)
    assert r2(const, const) == 1.0 and r2(const + 1, const) == -math.inf


def test_scalers_and_fold_express_a_standardised_map_in_original_units(gen):
    X = torch.randn(40, 4, generator=gen(3), dtype=torch.float64) * 3 + 7
    X[:, 2] = 1.5  # a constant feature maps to 0, not to a division by zero
    s_in = Scaler.per_feature(X)
    Z = s_in(X)
    assert torch.allclose(Z.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.equal(Z[:, 2], torch.zeros(40, dtype=torch.float64))
    assert float(torch.linalg.matrix_norm(Scaler.frobenius(X)(X))) == pytest.approx(1.0)
    Y = torch.randn(40, 2, generator=gen(4), dtype=torch.float64) + 3
    s_out = Scaler.centre(Y)
    W = torch.randn(2, 4, generator=gen(5), dtype=torch.float64)
    b = torch.randn(2, generator=gen(6), dtype=torch.float64)
    weight, bias = fold(W, b, s_in, s_out)
    direct = (Z @ W.T + b) * s_out.scale + s_out.mean  # s_out⁻¹(W s_in(x) + b)
    assert torch.allclose(X @ weight.T + bias, direct, atol=1e-10)
    assert torch.equal(Scaler.identity(3)(X[:, :3]), X[:, :3])


# ----------------------------------------------------------------------------- hyper-parameters


def test_get_params_are_the_init_arguments():
    assert Ridge(penalties=[1.0, 2.0], seed=3).get_params() == {
        "penalties": [1.0, 2.0],
        "val_fraction": 0.1,
        "seed": 3,
    }
    assert Procrustes().get_params() == {"val_fraction": 0.1, "seed": 0}
    assert "lam" not in AutoEncoder.param_names()
    assert PairedAutoEncoder(lam=2.0).get_params()["lam"] == 2.0
    assert PairedAutoEncoder.param_names()[0] == "lam"
    assert Aligner.param_names() == []
    assert repr(Procrustes(seed=2)) == "Procrustes(val_fraction=0.1, seed=2)"


@pytest.mark.parametrize("name", sorted(ALIGNERS))
def test_clone_of_a_fitted_aligner_is_unfitted_with_the_same_params(fitted_all, name):
    al = fitted_all[2][name]
    copy = al.clone()
    assert type(copy) is type(al) and copy is not al
    assert copy.get_params() == al.get_params()
    for learned in ("weight_", "bias_", "quality_", "penalty_", "n_epochs_"):
        assert not hasattr(copy, learned)
    assert hasattr(al, "weight_")  # the original keeps its fit


def test_clone_copies_mutable_hyper_parameters():
    grid = [1.0, 10.0]
    copy = Ridge(penalties=grid).clone()
    assert copy.penalties == grid and copy.penalties is not grid


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_target_awareness():
    assert set(ALIGNERS) == {"ae", "paired-ae", "ridge", "procrustes"}
    assert {n for n in ALIGNERS if not ALIGNERS[n].target_aware} == {"ae"}
    assert isinstance(make_aligner("ridge", penalties=[1.0]), Ridge)
    assert isinstance(make_aligner("paired-ae", lam=2.0), PairedAutoEncoder)


def test_registry_builds_every_aligner_and_has_help_lines():
    for name in ALIGNERS:
        al = make_aligner(name, seed=5)
        assert isinstance(al, Aligner) and al.name == name and al.seed == 5
        assert ALIGNERS.entry(name).help
    assert isinstance(make_aligner("ae"), AutoEncoder)
    assert isinstance(make_aligner("procrustes"), Procrustes)


def test_unknown_aligner_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="ae, paired-ae, procrustes, ridge"):
        make_aligner("cca")


def test_unknown_name_gives_the_registry_message():
    with pytest.raises(UnknownNameError) as info:
        make_aligner("rige")
    assert str(info.value) == (
        "unknown aligner 'rige': use ae, paired-ae, procrustes, ridge. Did you mean 'ridge'?"
    )


def test_unknown_hyper_parameters_name_the_accepted_ones():
    with pytest.raises(ValueError, match="'ridge' does not take alphas; its parameters are: pen"):
        make_aligner("ridge", alphas=[1.0])


def test_an_instance_is_accepted_and_cloned(linear_pair):
    X_e, X_t, _, _ = linear_pair(100, 6, 4, noise=0.1)
    given = Ridge(penalties=[3.0], seed=2).fit(X_e, X_t)
    made = make_aligner(given)
    assert made is not given and isinstance(made, Ridge)
    assert made.get_params() == given.get_params() and not hasattr(made, "weight_")
    made.fit(X_e, X_t)
    assert made.penalty_ == 3.0 and torch.equal(made.weight_, given.weight_)
    with pytest.raises(TypeError, match=r"keyword arguments \['seed'\] only go with"):
        make_aligner(given, seed=1)
    with pytest.raises(TypeError, match="a name .* or an Aligner, not dict"):
        make_aligner({})


# ----------------------------------------------------------------------------- validation


def test_fit_rejects_mismatched_rows(linear_pair):
    X_e, X_t, _, _ = linear_pair(50, 6, 4, noise=0.1)
    with pytest.raises(ValueError, match="same texts"):
        Ridge().fit(X_e, X_t[:-1])


def test_fit_rejects_non_finite_values(linear_pair):
    X_e, X_t, _, _ = linear_pair(50, 6, 4, noise=0.1)
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


def test_numpy_inputs_are_accepted(linear_pair):
    X_e, X_t, _, _ = linear_pair(100, 6, 4, noise=0.1)
    al = Ridge().fit(X_e.numpy(), X_t.numpy())
    assert al.score(X_e.numpy(), X_t.numpy()) == pytest.approx(al.score(X_e, X_t))
    assert np.isfinite(al.quality_["r2_val"])


# ----------------------------------------------------------------------------- split by group


def test_without_groups_the_split_is_the_seeded_row_permutation():
    train, val = _split(50, 0.1, 3)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(val, perm[:5]) and torch.equal(train, perm[5:])


def test_the_group_split_holds_out_whole_groups(gen):
    sizes = torch.randint(1, 12, (40,), generator=gen(4))
    groups = torch.repeat_interleave(torch.arange(40) * 7, sizes)  # labels need not be 0..G-1
    n = len(groups)
    train, val = _split(n, 0.2, 5, groups)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(n))
    assert not set(groups[train].tolist()) & set(groups[val].tolist())
    # val_fraction is a fraction of rows: reached, and overshot by less than one group
    assert math.ceil(0.2 * n) <= len(val) < math.ceil(0.2 * n) + int(sizes.max())
    again, other = _split(n, 0.2, 5, groups), _split(n, 0.2, 6, groups)
    assert torch.equal(again[1], val) and not torch.equal(other[1], val)


def test_near_duplicate_rows_of_a_text_inflate_the_row_split_but_not_the_group_split(gen):
    # Each text's rows are one random expert vector (+ tiny noise) and an unrelated random target
    # vector: nothing transfers to a new text. A random row split has each held-out row's
    # siblings in training and reports a near-perfect map; the group split reports none.
    g = gen(8)
    n_texts, rows, d_e, d_t = 60, 8, 80, 6
    U = torch.randn(n_texts, d_e, generator=g, dtype=torch.float64)
    W = torch.randn(n_texts, d_t, generator=g, dtype=torch.float64)
    groups = torch.arange(n_texts).repeat_interleave(rows)
    X_e = U[groups] + 0.01 * torch.randn(len(groups), d_e, generator=g, dtype=torch.float64)
    X_t = W[groups] + 0.01 * torch.randn(len(groups), d_t, generator=g, dtype=torch.float64)
    by_rows = Ridge().fit(X_e, X_t)
    by_groups = Ridge().fit(X_e, X_t, groups=groups)
    assert by_rows.quality_["split"] == "rows" and by_rows.quality_["r2_val"] > 0.9
    assert by_groups.quality_["split"] == "groups" and by_groups.quality_["r2_val"] < 0.1
    assert by_groups.quality_["n_val_groups"] == 6.0 and by_groups.quality_["n_val"] == 48.0


@pytest.mark.parametrize("name", sorted(ALIGNERS))
def test_every_aligner_takes_groups(linear_pair, fast_ae, name):
    X_e, X_t, _, _ = linear_pair(200, 10, 6, noise=0.1)
    groups = torch.arange(200) // 5
    kw = fast_ae if name in ("ae", "paired-ae") else {}
    al = make_aligner(name, **kw).fit(X_e, X_t, groups=groups.tolist())
    q = al.quality_
    assert q["split"] == "groups" and (q["n_train"], q["n_val"], q["n_val_groups"]) == (
        180.0,
        20.0,
        4.0,
    )
    assert math.isfinite(q["r2_val"])


def test_bad_groups_are_refused(linear_pair):
    X_e, X_t, _, _ = linear_pair(50, 6, 4, noise=0.1)
    with pytest.raises(ValueError, match="one label per row"):
        Ridge().fit(X_e, X_t, groups=torch.zeros(49, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        Ridge().fit(X_e, X_t, groups=torch.zeros(50))
    with pytest.raises(ValueError, match="too few groups"):
        Ridge(val_fraction=0.6).fit(X_e, X_t, groups=torch.arange(50) // 25)
