import numpy as np
import pytest

from expertsteer.eval.stats import (
    balanced_accuracy,
    bootstrap_ci,
    holm,
    mcnemar_p,
    pooled_nulls,
    rank_p,
    ratio_ci,
    worst_rank_p,
)


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


def _pair(only_a: int, only_b: int, both: int = 20, neither: int = 11):
    """Correctness vectors with the given 2 × 2 table."""
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    return np.array(a), np.array(b)


def test_mcnemar_matches_hand_computed_binomial_tails():
    # 5 discordant items all one way: 2 × 0.5^5 = 0.0625 (a bootstrap gave ≈ 0.009)
    assert mcnemar_p(*_pair(5, 0)) == pytest.approx(0.0625)
    assert mcnemar_p(*_pair(0, 5)) == pytest.approx(0.0625)
    # 2 discordant, both one way: 2 × 0.25 = 0.5
    assert mcnemar_p(*_pair(2, 0)) == pytest.approx(0.5)
    # 7 vs 1: 2 × (C(8,0) + C(8,1)) / 2^8 = 18 / 256
    assert mcnemar_p(*_pair(7, 1)) == pytest.approx(18 / 256)
    # concordant items never matter; no discordant items: p = 1
    assert mcnemar_p(*_pair(7, 1, both=0, neither=0)) == mcnemar_p(*_pair(7, 1))
    assert mcnemar_p(*_pair(0, 0)) == 1.0
    assert mcnemar_p(*_pair(3, 3)) == 1.0


def test_mcnemar_rejects_bad_input():
    with pytest.raises(ValueError, match="same items"):
        mcnemar_p(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_p(np.array([0.5, 1.0]), np.ones(2))


def test_mcnemar_is_calibrated_under_no_effect():
    """Two methods with the same accuracy, correlated as real methods are: at the 5 % level the
    rejection rate stays at or below 5 % (exact tests are conservative), for small and large n."""
    rng = np.random.default_rng(0)
    for n in (30, 200):
        rejections = 0
        trials = 2000
        for _ in range(trials):
            shared = rng.random(n) < 0.6
            a = np.where(rng.random(n) < 0.7, shared, rng.random(n) < 0.6)
            b = np.where(rng.random(n) < 0.7, shared, rng.random(n) < 0.6)
            rejections += mcnemar_p(a.astype(int), b.astype(int)) < 0.05
        # binomial noise on 2000 trials: sd ≈ 0.5 %
        assert rejections / trials <= 0.05 + 0.01, (n, rejections / trials)


def test_mcnemar_has_power_against_a_real_effect():
    rng = np.random.default_rng(1)
    b = (rng.random(300) < 0.5).astype(int)
    better = np.maximum(b, (rng.random(300) < 0.3).astype(int))
    assert mcnemar_p(better, b) < 1e-6


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.04 → ×3, ×2, ×1 = 0.03, 0.04, 0.04 (monotone), order kept
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_rank_p():
    assert rank_p(0.8, [0.5] * 20) == pytest.approx(1 / 21)
    assert rank_p(0.8, [0.8] + [0.5] * 19) == pytest.approx(2 / 21)  # ties count against
    assert rank_p(0.4, [0.5] * 20) == 1.0
    assert rank_p(0.4, []) is None


def test_balanced_accuracy_removes_the_label_prior():
    labels = ["neg"] * 36 + ["pos"] * 12
    always_neg = np.array([1] * 36 + [0] * 12)
    assert always_neg.mean() == 0.75
    assert balanced_accuracy(always_neg, labels) == 0.5
    assert balanced_accuracy(np.ones(48), labels) == 1.0
    with pytest.raises(ValueError, match="labels"):
        balanced_accuracy(np.ones(3), ["a"])


def test_ratio_ci():
    den = np.linspace(1, 3, 60)
    ratio, lo, hi = ratio_ci(0.5 * den, den)
    assert ratio == pytest.approx(0.5) and lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    rng = np.random.default_rng(2)
    num = 0.6 * den + rng.normal(0, 0.3, 60)
    ratio, lo, hi = ratio_ci(num, den)
    assert lo < ratio < hi and lo < 0.6 < hi


def test_nulls_pool_by_index_and_the_worst_family_ranks():
    per_seed = [
        {"shuffled_labels": [0.2, 0.8], "random_direction": [0.5]},
        {"shuffled_labels": [0.4, 0.6, 0.9], "random_direction": [0.7]},
    ]
    pooled = pooled_nulls(per_seed)
    assert pooled == {"shuffled_labels": [pytest.approx(0.3), pytest.approx(0.7)],
                      "random_direction": [pytest.approx(0.6)]}  # fmt: skip
    assert pooled_nulls([{"a": [1.0]}, {}]) == {} and pooled_nulls([]) == {}
    # 0.65 beats 1 of 2 shuffled (rank 2/3) and 1 of 1 random (rank 1/2): the worse is 2/3
    assert worst_rank_p(0.65, pooled) == pytest.approx(2 / 3)
    assert worst_rank_p(0.65, {"a": []}) is None
