"""Shared data of the estimator tests: planted directions and contrast pairs, fitted once."""

from __future__ import annotations

import pytest
import torch

from expertsteer.estimators import make_estimator

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


def _planted(
    n: int, d: int, margin: float = 0.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian states, y = 1[u·x + 0.1ε > 0], then the classes pushed ±margin apart along u."""
    g = torch.Generator().manual_seed(seed)
    u = _unit(g, d)
    X = torch.randn(n, d, generator=g)
    y = (X @ u + 0.1 * torch.randn(n, generator=g)) > 0
    return X + margin * (2 * y.float() - 1)[:, None] * u, y, u


def _paired_data(k: int = 300, d: int = 64, seed: int = 0):
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


@pytest.fixture(scope="session")
def unit():
    """``unit(generator, d)``: a random unit vector."""
    return _unit


@pytest.fixture(scope="session")
def planted():
    """``planted(n, d, margin=0.0, seed=0) -> (X, y, u)``: labels from a planted direction u."""
    return _planted


@pytest.fixture(scope="session")
def paired_data():
    """``paired_data(k=300, d=64, seed=0) -> (X, y, groups, u)``: shuffled contrast pairs."""
    return _paired_data


@pytest.fixture(scope="session")
def margin_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _planted(800, 64, margin=1.0)


@pytest.fixture(scope="session")
def fitted(margin_data):
    """Each estimator of NAMES fitted once on ``margin_data`` (one thread: RFM dominates)."""
    X, y, _ = margin_data
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: make_estimator(name).fit(X, y) for name in NAMES}
    finally:
        torch.set_num_threads(previous)
