"""Mutual-information estimators against closed forms, the MI matrix, and its plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from expertsteer.mi import (
    MI_ESTIMATORS,
    _gaussian_mi_logdet,
    gaussian_mi,
    ksg_mi,
    mi_matrix,
    plot_mi_matrix,
)
from expertsteer.registry import UnknownNameError


def _bivariate(rho: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal(n)
    return torch.tensor(x[:, None]), torch.tensor(y[:, None])


def _linear_channel(
    dx: int, dy: int, sigma: float, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """y = A x + sigma * noise with correlated x; MI = 1/2 log det(I + A Sx A^T / sigma^2)."""
    rng = np.random.default_rng(seed)
    root = rng.standard_normal((dx, dx))
    cov_x = root @ root.T / dx + 0.5 * np.eye(dx)
    a = rng.standard_normal((dy, dx)) / math.sqrt(dx)
    x = rng.multivariate_normal(np.zeros(dx), cov_x, size=n)
    y = x @ a.T + sigma * rng.standard_normal((n, dy))
    true = 0.5 * np.linalg.slogdet(np.eye(dy) + a @ cov_x @ a.T / sigma**2)[1]
    return torch.tensor(x), torch.tensor(y), float(true)


@pytest.mark.parametrize("rho", [0.4, 0.7, 0.9, 0.99])
def test_gaussian_bivariate_matches_closed_form(rho: float) -> None:
    # N = 100k: sampling sd is < 1.5 % of the MI at rho = 0.4; the 1e-3 ridge costs 2.5 % at 0.99.
    x, y = _bivariate(rho, 100_000, seed=1)
    assert gaussian_mi(x, y) == pytest.approx(-0.5 * math.log(1 - rho**2), rel=0.05)


@pytest.mark.parametrize("rho", [0.5, 0.8, 0.95])
def test_ksg_bivariate_matches_closed_form(rho: float) -> None:
    # KSG's error is roughly constant in nats (sd ~0.012 at N = 10k): 10 % or 0.03 nats.
    x, y = _bivariate(rho, 10_000, seed=2)
    assert ksg_mi(x, y) == pytest.approx(-0.5 * math.log(1 - rho**2), rel=0.10, abs=0.03)


def test_gaussian_multivariate_matches_closed_form() -> None:
    x, y, true = _linear_channel(6, 5, sigma=0.7, n=20_000, seed=3)
    assert true > 1.0
    assert gaussian_mi(x, y) == pytest.approx(true, rel=0.05)


def test_ksg_multivariate_matches_closed_form() -> None:
    # KSG is biased low as the joint dimension grows; 2 + 2 dimensions stay within 15 %.
    x, y, true = _linear_channel(2, 2, sigma=0.6, n=8_000, seed=4)
    assert true > 0.5
    assert ksg_mi(x, y) == pytest.approx(true, rel=0.15)


def test_independent_data_gives_near_zero() -> None:
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.standard_normal((20_000, 5)))
    y = torch.tensor(rng.standard_normal((20_000, 5)))
    # Expected Gaussian estimate ~ dx * dy / (2N) = 6e-4 nats.
    assert 0.0 <= gaussian_mi(x, y) < 3e-3
    assert abs(ksg_mi(x[:3000, :2], y[:3000, :2])) < 0.03


def test_invariance_to_invertible_linear_maps() -> None:
    x, y, _ = _linear_channel(4, 3, sigma=1.0, n=5_000, seed=6)
    rng = np.random.default_rng(7)
    bx = torch.tensor(rng.standard_normal((4, 4)) + 2 * np.eye(4))
    by = torch.tensor(rng.standard_normal((3, 3)) + 2 * np.eye(3))
    x2, y2 = x @ bx + 3.0, y @ by - 1.0
    # Without the ridge the Gaussian MI is exactly invariant; the ridge (relative to the mean
    # eigenvalue) moves it only slightly.
    exact = gaussian_mi(x, y, n_components=None, shrinkage=0.0)
    assert gaussian_mi(x2, y2, n_components=None, shrinkage=0.0) == pytest.approx(exact, rel=1e-9)
    ridged = gaussian_mi(x, y, n_components=None)
    assert gaussian_mi(x2, y2, n_components=None) == pytest.approx(ridged, rel=0.02)
    # KSG standardises and uses the max-norm, which is not rotation invariant: approximate only.
    assert ksg_mi(x2, y2, n_components=None) == pytest.approx(
        ksg_mi(x, y, n_components=None), rel=0.10
    )


@pytest.mark.parametrize(("n_components", "shrinkage"), [(None, 0.0), (None, 1e-3), (3, 0.1)])
def test_cca_and_logdet_formulas_agree(n_components: int | None, shrinkage: float) -> None:
    x, y, _ = _linear_channel(8, 6, sigma=0.8, n=2_000, seed=8)
    fast = gaussian_mi(x, y, n_components=n_components, shrinkage=shrinkage)
    slow = _gaussian_mi_logdet(x, y, n_components=n_components, shrinkage=shrinkage)
    assert fast > 0.1
    assert fast == pytest.approx(slow, rel=1e-9)


def test_pca_reduction_keeps_the_informative_directions() -> None:
    # The shared signal lives in the 2 high-variance directions of 40; 2 components suffice.
    rng = np.random.default_rng(9)
    z = rng.standard_normal((4_000, 2))
    x = np.hstack([5 * z, 0.1 * rng.standard_normal((4_000, 38))])
    y = np.hstack([5 * z + rng.standard_normal((4_000, 2)), 0.1 * rng.standard_normal((4_000, 30))])
    x, y = torch.tensor(x), torch.tensor(y)
    true = 2 * -0.5 * math.log(1 - 25 / 26)  # two independent channels with rho^2 = 25/26
    assert gaussian_mi(x, y, n_components=2) == pytest.approx(true, rel=0.05)


def test_randomised_pca_of_wide_layers_matches_exact_pca() -> None:
    # Over 256 samples and dimensions the top components come from a randomised range finder;
    # with a decaying spectrum they match an exact SVD, and so does the MI.
    gen = torch.Generator().manual_seed(20)
    latent = torch.randn(400, 8, generator=gen, dtype=torch.float64)
    spectrum = torch.arange(1, 301, dtype=torch.float64) ** -1.0
    x = torch.randn(400, 300, generator=gen, dtype=torch.float64) * spectrum
    x[:, :8] += 0.3 * latent
    y = latent @ torch.randn(8, 280, generator=gen, dtype=torch.float64)
    y += torch.randn(400, 280, generator=gen, dtype=torch.float64)

    def exact_scores(a: torch.Tensor) -> torch.Tensor:
        u, s, _ = torch.linalg.svd(a - a.mean(dim=0), full_matrices=False)
        return u[:, :8] * s[:8]

    exact = gaussian_mi(exact_scores(x), exact_scores(y), n_components=None)
    assert exact > 1.0
    assert gaussian_mi(x, y, n_components=8) == pytest.approx(exact, rel=1e-4)


def test_more_dimensions_than_samples_is_capped_at_n_minus_1() -> None:
    rng = np.random.default_rng(10)
    x = torch.tensor(rng.standard_normal((30, 100)))
    y = torch.tensor(rng.standard_normal((30, 80)))
    mi = gaussian_mi(x, y, n_components=None)
    # 29 + 29 components from 30 samples fit perfectly; only the ridge keeps the value finite.
    assert math.isfinite(mi) and mi > 0
    assert mi == pytest.approx(_gaussian_mi_logdet(x, y, n_components=None), rel=1e-6)


def test_input_validation() -> None:
    x = torch.zeros(10, 3)
    with pytest.raises(ValueError, match="same samples"):
        gaussian_mi(x, torch.zeros(9, 3))
    with pytest.raises(ValueError, match="2-D"):
        ksg_mi(torch.zeros(10), x)
    bad = torch.ones(10, 3)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        gaussian_mi(bad, x)
    with pytest.raises(ValueError, match="shrinkage"):
        gaussian_mi(x, x, shrinkage=-1.0)


def _layers(
    n: int, widths: list[int], seed: int, *, shared: list[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """Random layers; layer i mixes in `shared[i]` (a per-depth latent) when given."""
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for i, width in enumerate(widths):
        layer = torch.randn(n, width, generator=gen)
        if shared is not None:
            layer += shared[i] @ torch.randn(shared[i].shape[1], width, generator=gen)
        layers.append(layer)
    return layers


@pytest.mark.parametrize("estimator", ["gaussian", "ksg"])
def test_mi_matrix_equals_cell_by_cell(estimator: str) -> None:
    gen = torch.Generator().manual_seed(11)
    latents = [torch.randn(300, 3, generator=gen) for _ in range(3)]
    expert = _layers(300, [12, 12, 12], seed=12, shared=latents)
    target = _layers(300, [20, 20], seed=13, shared=latents[:2])
    m = mi_matrix(expert, target, estimator=estimator, n_components=4, progress=False)
    assert m.shape == (3, 2) and m.dtype == torch.float64
    one = gaussian_mi if estimator == "gaussian" else ksg_mi
    cells = [[one(e, t, n_components=4) for t in target] for e in expert]
    torch.testing.assert_close(m, torch.tensor(cells, dtype=torch.float64), rtol=1e-9, atol=0.0)


def test_mi_matrix_finds_the_matching_depths() -> None:
    # Expert layer i and target layer i share a latent; every other pair is independent.
    gen = torch.Generator().manual_seed(14)
    latents = [torch.randn(1_000, 4, generator=gen) for _ in range(5)]
    expert = _layers(1_000, [24] * 5, seed=15, shared=latents)
    target = _layers(1_000, [32] * 5, seed=16, shared=latents)
    m = mi_matrix(expert, target, n_components=8, progress=False)
    diagonal = m.diagonal()
    off = m[~torch.eye(5, dtype=torch.bool)]
    assert diagonal.min() > 1.0
    assert off.max() < 0.1


def test_mi_matrix_validation() -> None:
    good = _layers(40, [6, 6], seed=17)
    with pytest.raises(ValueError, match=r"target layer 1 has N=39 .* expert layer 0 has N=40"):
        mi_matrix(good, [good[0], good[1][:39]], progress=False)
    with pytest.raises(ValueError, match=r"n_components \+ 2 = 18 samples.*N=10"):
        mi_matrix([g[:10] for g in good], [g[:10] for g in good], progress=False)
    broken = good[1].clone()
    broken[0, 0] = float("inf")
    with pytest.raises(ValueError, match="expert layer 1 contains NaN or inf"):
        mi_matrix([good[0], broken], good, n_components=4, progress=False)
    with pytest.raises(ValueError, match="must be a 2-D"):
        mi_matrix(good, [torch.zeros(40)], n_components=4, progress=False)
    with pytest.raises(ValueError, match="at least one expert layer"):
        mi_matrix([], good, progress=False)
    with pytest.raises(ValueError, match="KSG with k=3 needs at least 5 samples, got N=4"):
        tiny = [g[:4] for g in good]
        mi_matrix(tiny, tiny, estimator="ksg", n_components=1, progress=False)
    with pytest.raises(ValueError, match="unknown estimator 'knn'; choose one of gaussian, ksg"):
        mi_matrix(good, good, estimator="knn", progress=False)


def test_mi_matrix_progress_bar_runs(capsys: pytest.CaptureFixture[str]) -> None:
    layers = _layers(40, [6, 6], seed=18)
    m = mi_matrix(layers, layers, n_components=4, progress=True)
    assert m.shape == (2, 2)
    assert "MI matrix" in capsys.readouterr().err


def test_plot_writes_png_without_leftovers(tmp_path) -> None:
    mi = torch.rand(6, 8, generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    path = plot_mi_matrix(mi, tmp_path / "plots" / "mi.png", pairs=[(1, 2), (4, 6)], title="t")
    assert path == tmp_path / "plots" / "mi.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1_000
    assert sorted(p.name for p in path.parent.iterdir()) == ["mi.png"]
    with pytest.raises(ValueError, match="outside the 6 x 8"):
        plot_mi_matrix(mi, tmp_path / "bad.png", pairs=[(6, 0)])
    assert not (tmp_path / "bad.png").exists()


def test_mi_estimators_registry() -> None:
    assert MI_ESTIMATORS.names == ("gaussian", "ksg")
    assert MI_ESTIMATORS["gaussian"] is gaussian_mi and MI_ESTIMATORS["ksg"] is ksg_mi
    assert all(MI_ESTIMATORS.entry(name).help for name in MI_ESTIMATORS)
    x = _layers(60, [5], seed=19)[0]
    for name in MI_ESTIMATORS:  # each entry is the pairwise estimator: (x, y) -> nats
        assert MI_ESTIMATORS[name](x, x + 0.1 * x.flip(0), n_components=3) > 0.5
    with pytest.raises(UnknownNameError, match="unknown MI estimator 'ksq': use gaussian, ksg"):
        MI_ESTIMATORS.check("ksq")
    with pytest.raises(UnknownNameError, match="unknown estimator 'knn'"):
        mi_matrix(_layers(40, [6], seed=20), _layers(40, [6], seed=21), estimator="knn")
