"""Statistics over test items: bootstrap CIs, exact paired tests, Holm, ranks among nulls.

Comparisons of two methods on the same items use the exact McNemar test (a two-sided binomial
test on the discordant items), which holds its level at any sample size; a paired bootstrap
does not (5 discordant items all one way give bootstrap p ≈ 0.01, exact 0.0625).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import binomtest

__all__ = [
    "balanced_accuracy",
    "bootstrap_ci",
    "holm",
    "mcnemar_p",
    "pooled_nulls",
    "rank_p",
    "ratio_ci",
    "worst_rank_p",
]

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


def _binary(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1 or not np.isin(x, (0, 1)).all():
        raise ValueError(f"{name} must be a 1-D array of 0/1 correctness values")
    return x.astype(bool)


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for "methods a and b are equally accurate" from their
    per-item correctness on the same items (binomial test of the discordant items at ½)."""
    a, b = _binary(a, "a"), _binary(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired tests need the same items: {a.shape} vs {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (family-wise error) in the given order; ``None``
    entries (no test) are skipped and stay ``None``."""
    present = [(p, k) for k, p in enumerate(pvalues) if p is not None]
    m = len(present)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, k) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))  # step-down, kept monotone
        out[k] = running
    return out


def rank_p(score: float, nulls: Sequence[float]) -> float | None:
    """One-sided rank p of ``score`` among null scores: (1 + #nulls ≥ score) / (1 + n).
    Ties count against the method; the smallest possible value is 1 / (n + 1)."""
    if not nulls:
        return None
    return (1 + sum(n >= score for n in nulls)) / (1 + len(nulls))


def worst_rank_p(score: float, nulls: Mapping[str, Sequence[float]]) -> float | None:
    """The larger :func:`rank_p` over the null families: a method must beat every family."""
    ranks = [rank_p(score, v) for v in nulls.values() if v]
    return max(ranks) if ranks else None


def pooled_nulls(per_seed: Sequence[Mapping[str, Sequence[float]]]) -> dict[str, list[float]]:
    """Null k of each family pooled over seeds: its mean (every seed's test set has the same
    size); families and nulls missing from a seed are dropped."""
    families = [f for f in per_seed[0] if all(f in s for s in per_seed)] if per_seed else []
    out = {}
    for f in families:
        n = min(len(s[f]) for s in per_seed)
        out[f] = [float(np.mean([s[f][k] for s in per_seed])) for k in range(n)]
    return out


def balanced_accuracy(correct: np.ndarray, labels: Sequence[object]) -> float:
    """Mean over labels of the accuracy on that label's items (the label prior cancels)."""
    correct = np.asarray(correct, dtype=float)
    labels = list(labels)
    if len(labels) != correct.size or not labels:
        raise ValueError(f"{correct.size} correctness values but {len(labels)} labels")
    per = [correct[[x == lab for x in labels]].mean() for lab in dict.fromkeys(labels)]
    return float(np.mean(per))


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
