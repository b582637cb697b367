"""The auto-encoder aligners: the paper's ``ae`` and the target-aligned ``paired-ae``."""

from __future__ import annotations

import pytest
import torch

from expertsteer.align.autoencoder import AutoEncoder, PairedAutoEncoder


def test_ae_reconstruction_is_high_on_low_rank_data(gen, fast_ae):
    # rank-6 expert states in d_E=24 squeezed through a d_T=8 code: reconstruction is possible.
    g = gen(5)
    latent = torch.randn(600, 6, generator=g, dtype=torch.float64)
    X_e = latent @ torch.randn(6, 24, generator=g, dtype=torch.float64) + 2.0
    al = AutoEncoder(out_dim=8, **fast_ae).fit(X_e)
    assert al.quality_["recon_r2_val"] > 0.99
    assert "r2_val" not in al.quality_  # no target states, nothing to compare against
    assert al.inverse_transform(al.transform(X_e)).shape == X_e.shape


def test_paired_ae_aligns_with_targets_where_ae_does_not(linear_pair, fast_ae):
    # A well-posed linear problem: the plain ae reconstructs well, but its code is in an arbitrary
    # basis (the paper's weakness); the alignment term puts it in the target's basis.
    X_e, X_t, _, _ = linear_pair(1000, 24, 12, noise=0.05)
    ae = AutoEncoder(**fast_ae).fit(X_e, X_t)
    paired = PairedAutoEncoder(**fast_ae).fit(X_e, X_t)
    assert ae.quality_["r2_val"] < 0.3
    assert paired.quality_["r2_val"] > 0.8
    assert paired.quality_["recon_r2_val"] > 0.4  # still an auto-encoder


def test_ae_is_deterministic_under_seed_and_ignores_targets(linear_pair, fast_ae):
    X_e, X_t, _, _ = linear_pair(300, 16, 8, noise=0.1)
    kwargs = {**fast_ae, "epochs": 20}
    a = AutoEncoder(**kwargs, seed=1).fit(X_e, X_t)
    b = AutoEncoder(**kwargs, seed=1, out_dim=8).fit(X_e)  # no targets: identical fit
    c = AutoEncoder(**kwargs, seed=2).fit(X_e, X_t)
    assert torch.equal(a.weight_, b.weight_) and torch.equal(a.bias_, b.bias_)
    assert torch.equal(a.decoder_weight_, b.decoder_weight_)
    assert not torch.equal(a.weight_, c.weight_)
    p1 = PairedAutoEncoder(**kwargs).fit(X_e, X_t)
    p2 = PairedAutoEncoder(**kwargs).fit(X_e, X_t)
    assert torch.equal(p1.weight_, p2.weight_)


def test_a_clone_refits_bit_identically(linear_pair, fast_ae):
    X_e, X_t, _, _ = linear_pair(200, 12, 6, noise=0.1)
    first = PairedAutoEncoder(lam=0.5, **{**fast_ae, "epochs": 10}, seed=4).fit(X_e, X_t)
    again = first.clone()
    assert again.lam == 0.5 and again.seed == 4 and not hasattr(again, "n_epochs_")
    assert torch.equal(again.fit(X_e, X_t).weight_, first.weight_)


def test_ae_early_stopping_stops_before_the_epoch_budget(linear_pair, fast_ae):
    X_e, _, _, _ = linear_pair(300, 16, 8, noise=0.1)
    al = AutoEncoder(out_dim=8, **{**fast_ae, "epochs": 1000, "patience": 3, "tol": 1e-2})
    assert al.fit(X_e).n_epochs_ < 1000


def test_ae_needs_a_code_width():
    with pytest.raises(ValueError, match="out_dim"):
        AutoEncoder().fit(torch.randn(50, 6))
    with pytest.raises(ValueError, match="out_dim=3 but X_t has width 4"):
        AutoEncoder(out_dim=3).fit(torch.randn(50, 6), torch.randn(50, 4))


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (AutoEncoder, {"epochs": 0}, "epochs must be >= 1"),
        (AutoEncoder, {"lr": 0.0}, "lr must be > 0"),
        (PairedAutoEncoder, {"lam": -1.0}, "lam must be >= 0"),
    ],
)
def test_bad_hyper_parameters_are_refused_at_fit(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs).fit(torch.randn(50, 6), torch.randn(50, 4))
