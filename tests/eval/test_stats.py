import numpy as np
import pytest

from expertsteer.eval.stats import bootstrap_ci, paired_bootstrap_p, ratio_ci


def test_constant_values_have_a_point_ci():
    assert bootstrap_ci(np.full(50, 0.7)) == pytest.approx((0.7, 0.7))


def test_ci_covers_the_mean_and_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    x = (rng.random(400) < 0.6).astype(float)
    lo, hi = bootstrap_ci(x, n_boot=4000)
    se = x.std() / np.sqrt(x.size)
    assert lo < x.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)  # seeded


def test_paired_p_values():
    a = np.array([1.0, 0.0] * 50)
    assert paired_bootstrap_p(a, a) == 1.0
    assert paired_bootstrap_p(np.ones(100), np.zeros(100)) == 0.0
    rng = np.random.default_rng(1)
    b = (rng.random(100) < 0.5).astype(float)
    better = np.maximum(b, (rng.random(100) < 0.5))
    assert paired_bootstrap_p(better, b) < 0.01
    # A tiny, noisy difference is far from significant.
    c = b.copy()
    c[:2] = 1 - c[:2]
    assert paired_bootstrap_p(c, b) > 0.1


def test_ratio_ci():
    den = np.linspace(1, 3, 60)
    ratio, lo, hi = ratio_ci(0.5 * den, den)
    assert ratio == pytest.approx(0.5) and lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    rng = np.random.default_rng(2)
    num = 0.6 * den + rng.normal(0, 0.3, 60)
    ratio, lo, hi = ratio_ci(num, den)
    assert lo < ratio < hi and lo < 0.6 < hi
