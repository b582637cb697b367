"""Bootstrap statistics over test items (seeded, so reports are reproducible)."""

from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_ci", "paired_bootstrap_p", "ratio_ci"]

N_BOOT = 2000


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values``."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("bootstrap of no values")
    means = values[_indices(values.size, n_boot, seed)].mean(1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def paired_bootstrap_p(
    a: np.ndarray, b: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0
) -> float:
    """Two-sided paired bootstrap p-value for mean(a) = mean(b) (same items, resampled
    together): twice the share of resampled differences on the far side of zero."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size == 0:
        raise ValueError("bootstrap of no values")
    if not d.any():
        return 1.0
    diffs = d[_indices(d.size, n_boot, seed)].mean(1)
    tail = min((diffs <= 0).mean(), (diffs >= 0).mean())
    return float(min(1.0, 2 * tail))


def ratio_ci(
    num: np.ndarray, den: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """mean(num) / mean(den) and its paired percentile-bootstrap CI: (ratio, lo, hi)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    idx = _indices(num.size, n_boot, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = num[idx].mean(1) / den[idx].mean(1)
    ratios = ratios[np.isfinite(ratios)]
    tail = (1 - level) / 2
    point = float(num.mean() / den.mean()) if den.mean() != 0 else float("nan")
    if ratios.size == 0:
        return point, float("nan"), float("nan")
    return point, float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))
