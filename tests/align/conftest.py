"""Shared data of the aligner tests: paired linear problems, and every aligner fitted once."""

from __future__ import annotations

import pytest
import torch

from expertsteer.align import ALIGNERS, make_aligner

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


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Small problems: extra threads only spin against other processes on a shared runner.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def gen():
    """``gen(seed)``: a seeded CPU generator."""
    return _gen


@pytest.fixture(scope="session")
def expert_states():
    """``expert_states(n, d_e, seed=0)``: off-centre states with unequal feature scales."""
    return _expert_states


@pytest.fixture(scope="session")
def linear_pair():
    """``linear_pair(n, d_e, d_t, noise, seed=0) -> (X_e, X_t, A, b)``."""
    return _linear_pair


@pytest.fixture
def fast_ae() -> dict:
    """Auto-encoder settings that train the small problems here in well under a second."""
    return dict(FAST_AE)


@pytest.fixture(scope="session")
def fitted_all():
    """Each aligner fitted once on the same paired problem (d_E=20 → d_T=12)."""
    X_e, X_t, _, _ = _linear_pair(400, 20, 12, noise=0.1)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fitted = {
            name: make_aligner(name, **(FAST_AE if name in ("ae", "paired-ae") else {})).fit(
                X_e, X_t
            )
            for name in ALIGNERS
        }
    finally:
        torch.set_num_threads(previous)
    return X_e, X_t, fitted
