"""Layer-pair selection strategies on small matrices with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from expertsteer.pairing import (
    PAIRINGS,
    depth_match,
    depth_pairs,
    given_pairs,
    highest_mi_pairs,
    lowest_mi_pairs,
    monotone_pairs,
    select_pairs,
)
from expertsteer.registry import UnknownNameError

# Outer rows/columns hold the extremes, so exclude_outer visibly changes the answers. The inner
# 2 x 2 block [[1, 9], [8, 1]] makes greedy-highest cross ((1, 2) and (2, 1)) while the
# order-preserving choice must take the diagonal.
CROSSING = torch.tensor(
    [
        [100.0, 0.0, 0.0, -50.0],
        [0.0, 1.0, 9.0, 0.0],
        [0.0, 8.0, 1.0, 0.0],
        [-60.0, 0.0, 0.0, 100.0],
    ]
)


def test_strategy_names() -> None:
    assert PAIRINGS.names == ("lowest", "highest", "monotone", "depth", "given")


def test_highest_and_lowest_on_known_matrix() -> None:
    assert select_pairs(CROSSING, strategy="highest", n_pairs=2) == [(2, 1), (1, 2)]
    assert select_pairs(CROSSING, strategy="lowest", n_pairs=2) == [(1, 1), (2, 2)]
    # With every layer eligible the outer extremes win.
    assert highest_mi_pairs(CROSSING, 2, exclude_outer=0) == [(0, 0), (3, 3)]
    assert lowest_mi_pairs(CROSSING, 2, exclude_outer=0) == [(3, 0), (0, 3)]


def test_greedy_is_one_to_one() -> None:
    # Row 0 holds the three best cells; one-to-one forces the other rows into play.
    mi = torch.tensor([[9.0, 8.0, 7.0], [1.0, 2.0, 0.0], [0.0, 3.0, 0.5]])
    assert highest_mi_pairs(mi, 3, exclude_outer=0) == [(0, 0), (2, 1), (1, 2)]
    assert lowest_mi_pairs(-mi, 3, exclude_outer=0) == [(0, 0), (2, 1), (1, 2)]
    big = torch.rand(9, 12, generator=torch.Generator().manual_seed(0))
    for choose in (highest_mi_pairs, lowest_mi_pairs, monotone_pairs):
        pairs = choose(big, 7)
        experts, targets = zip(*pairs, strict=True)
        assert len(set(experts)) == len(set(targets)) == 7
        assert min(experts) >= 1 and max(experts) <= 7
        assert min(targets) >= 1 and max(targets) <= 10
        assert list(targets) == sorted(targets)


def test_monotone_on_known_matrix() -> None:
    assert monotone_pairs(CROSSING, 2) == [(1, 1), (2, 2)]
    assert monotone_pairs(CROSSING, 1) == [(1, 2)]
    assert select_pairs(CROSSING, strategy="monotone", n_pairs=2, exclude_outer=0) == [
        (0, 0),
        (3, 3),
    ]


def _brute_force_monotone(mi: np.ndarray, n: int, lo: int) -> tuple[float, list[tuple[int, int]]]:
    best, best_pairs = -np.inf, []
    rows = range(lo, mi.shape[0] - lo)
    cols = range(lo, mi.shape[1] - lo)
    for r in itertools.combinations(rows, n):
        for c in itertools.combinations(cols, n):
            total = float(sum(mi[i, j] for i, j in zip(r, c, strict=True)))
            if total > best:
                best, best_pairs = total, list(zip(r, c, strict=True))
    return best, best_pairs


@pytest.mark.parametrize(("n_pairs", "exclude_outer"), [(1, 0), (3, 0), (4, 0), (3, 1), (5, 1)])
def test_monotone_matches_brute_force(n_pairs: int, exclude_outer: int) -> None:
    mi = np.random.default_rng(n_pairs + 10 * exclude_outer).standard_normal((8, 9))
    best, expected = _brute_force_monotone(mi, n_pairs, exclude_outer)
    pairs = monotone_pairs(torch.tensor(mi), n_pairs, exclude_outer=exclude_outer)
    assert pairs == expected
    assert sum(mi[i, j] for i, j in pairs) == pytest.approx(best, abs=1e-12)


def test_depth_pairs_follow_relative_depth() -> None:
    # Eligible targets 1..22 -> 1, 8, 15, 22; experts round(j / 23 * 11) = 0, 4, 7, 11,
    # clipped into the eligible 1..10.
    expected = [(1, 1), (4, 8), (7, 15), (10, 22)]
    assert depth_pairs(12, 24, 4) == expected
    assert select_pairs(None, strategy="depth", n_expert_layers=12, n_target_layers=24) == expected
    # mi only supplies the shape.
    assert select_pairs(torch.full((12, 24), float("nan")), strategy="depth") == expected
    assert depth_pairs(10, 10, 10, exclude_outer=0) == [(i, i) for i in range(10)]
    # One pair sits mid-way: eligible targets 1..34 -> 18 (17.5 rounded up);
    # expert round(18 / 35 * 27) = round(13.89) = 14.
    assert depth_pairs(28, 36, 1) == [(14, 18)]
    # A shallower expert serves several target layers.
    assert depth_pairs(3, 9, 5, exclude_outer=0) == [(0, 0), (1, 2), (1, 4), (2, 6), (2, 8)]


def test_given_pairs_are_validated_and_sorted() -> None:
    pairs = [(5, 7), (0, 0), (5, 3)]  # layer 0 is allowed: exclude_outer does not apply
    expected = [(0, 0), (5, 3), (5, 7)]
    assert select_pairs(CROSSING.new_zeros(6, 8), strategy="given", given=pairs) == expected
    assert given_pairs(np.array(pairs), 6, 8) == expected
    assert all(type(v) is int for pair in given_pairs(np.array(pairs), 6, 8) for v in pair)
    with pytest.raises(ValueError, match="expert layer 6 is out of range 0..5"):
        given_pairs([(6, 0)], 6, 8)
    with pytest.raises(ValueError, match="target layer -1 is out of range 0..7"):
        given_pairs([(0, -1)], 6, 8)
    with pytest.raises(ValueError, match="target layer 3 appears in more than one"):
        given_pairs([(1, 3), (2, 3)], 6, 8)
    with pytest.raises(ValueError, match="two integers"):
        given_pairs([(1, 2, 3)], 6, 8)
    with pytest.raises(ValueError, match="given is empty"):
        given_pairs([], 6, 8)
    with pytest.raises(ValueError, match="needs the pairs"):
        select_pairs(None, strategy="given", n_expert_layers=6, n_target_layers=8)


def test_exclude_outer_limits_and_n_pairs_errors() -> None:
    mi = torch.rand(6, 10, generator=torch.Generator().manual_seed(1))
    # 6 expert layers minus 2 at each end leave 2 eligible.
    assert len(highest_mi_pairs(mi, 2, exclude_outer=2)) == 2
    for strategy in ("lowest", "highest", "monotone"):
        with pytest.raises(ValueError, match="n_pairs=3 is more than the 2 one-to-one pairs"):
            select_pairs(mi, strategy=strategy, n_pairs=3, exclude_outer=2)
        with pytest.raises(ValueError, match="n_pairs must be >= 1, got 0"):
            select_pairs(mi, strategy=strategy, n_pairs=0)
    with pytest.raises(ValueError, match="n_pairs=9 is more than the 8 distinct target layers"):
        depth_pairs(6, 10, 9)
    with pytest.raises(ValueError, match="no expert layer is eligible"):
        depth_pairs(2, 10, 1)
    with pytest.raises(ValueError, match="exclude_outer must be >= 0"):
        highest_mi_pairs(mi, 1, exclude_outer=-1)


def test_select_pairs_input_errors() -> None:
    mi = torch.zeros(5, 7)
    with pytest.raises(ValueError, match="unknown strategy 'best'; choose one of lowest, highest"):
        select_pairs(mi, strategy="best")
    with pytest.raises(ValueError, match=r"mi has shape \(5, 7\) but n_target_layers=8"):
        select_pairs(mi, n_target_layers=8)
    with pytest.raises(ValueError, match="needs an MI matrix"):
        select_pairs(None, strategy="monotone", n_expert_layers=5, n_target_layers=7)
    with pytest.raises(ValueError, match="needs the layer counts"):
        select_pairs(None, strategy="depth", n_expert_layers=5)
    with pytest.raises(ValueError, match="only used with strategy='given'"):
        select_pairs(mi, strategy="highest", given=[(1, 1)])
    with pytest.raises(ValueError, match="2-D"):
        select_pairs(torch.zeros(5), strategy="highest")
    with pytest.raises(ValueError, match="NaN or inf"):
        select_pairs(torch.full((5, 7), float("inf")), strategy="lowest")


def test_pairings_registry_entries_are_the_strategies() -> None:
    assert PAIRINGS["lowest"] is lowest_mi_pairs and PAIRINGS["highest"] is highest_mi_pairs
    assert PAIRINGS["monotone"] is monotone_pairs and PAIRINGS["depth"] is depth_pairs
    assert PAIRINGS["given"] is given_pairs
    assert all(PAIRINGS.entry(name).help for name in PAIRINGS)
    with pytest.raises(UnknownNameError, match="unknown pairing strategy 'hihgest'.*'highest'"):
        PAIRINGS.check("hihgest")
    with pytest.raises(UnknownNameError, match="unknown strategy 'best'"):
        select_pairs(CROSSING, strategy="best")


def test_depth_match_rounds_halves_up() -> None:
    # 5 → 3 layers: layer i sits at depth i/4, i.e. target i/2: halves (1, 3) round UP, where
    # Python's round() would give 0 and 2.
    assert [depth_match(i, 5, 3) for i in range(5)] == [0, 1, 1, 2, 2]
    assert [round(i * 2 / 4) for i in range(5)] == [0, 0, 1, 2, 2]  # half to even, for contrast
    assert [depth_match(i, 3, 5) for i in range(3)] == [0, 2, 4]
    assert [depth_match(i, 4, 4) for i in range(4)] == [0, 1, 2, 3]
    assert depth_match(0, 1, 7) == 0 and depth_match(6, 7, 1) == 0
    # The first and last layers always match each other.
    for n_from, n_to in itertools.product(range(2, 9), repeat=2):
        assert depth_match(0, n_from, n_to) == 0
        assert depth_match(n_from - 1, n_from, n_to) == n_to - 1


def test_depth_match_validation() -> None:
    with pytest.raises(ValueError, match="layer 5 is out of range 0..4"):
        depth_match(5, 5, 3)
    with pytest.raises(ValueError, match="layer counts must be >= 1"):
        depth_match(0, 0, 3)
    with pytest.raises(TypeError):
        depth_match(1.5, 5, 3)


def test_depth_pairs_follow_depth_match() -> None:
    for n_e, n_t, n_pairs in [(12, 28, 4), (28, 12, 4), (5, 3, 1), (7, 7, 3)]:
        for i, j in depth_pairs(n_e, n_t, n_pairs, exclude_outer=1):
            assert i == min(max(depth_match(j, n_t, n_e), 1), n_e - 2)
