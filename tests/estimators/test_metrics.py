"""Metrics and the seeded hold-out split shared by the estimators and the domain gate."""

from __future__ import annotations

import math

import pytest
import torch

from expertsteer.estimators.metrics import accuracy, auc, holdout_split, separation


def test_auc_and_accuracy():
    y = torch.tensor([False, False, True, True])
    assert auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), y) == 1.0
    assert auc(torch.tensor([0.4, 0.3, 0.2, 0.1]), y) == 0.0
    assert auc(torch.tensor([0.1, 0.3, 0.2, 0.4]), y) == 0.75
    assert accuracy(torch.tensor([-1.0, 1.0, 1.0, 2.0]), y) == 0.75
    assert accuracy(torch.tensor([-1.0, 1.0, 1.0, 2.0]), y, threshold=1.5) == 0.75
    assert accuracy(torch.tensor([-1.0, 0.5, 1.0, 2.0]), y, threshold=0.75) == 1.0


def test_separation_is_the_gap_in_pooled_standard_deviations():
    y = torch.tensor([True, True, True, False, False, False])
    proj = torch.tensor([3.0, 4.0, 5.0, 0.0, 1.0, 2.0])
    assert separation(proj, y) == pytest.approx(3.0)  # gap 3, pooled std 1
    assert separation(-proj, y) == pytest.approx(-3.0)
    constant = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    assert separation(constant, y) == math.inf
    assert separation(torch.zeros(6), y) == 0.0


def _split(y, groups=None, seed=0, fraction=0.25):
    return holdout_split(y, groups, fraction, torch.Generator().manual_seed(seed))


def test_holdout_split_is_stratified_seeded_and_a_partition():
    y = torch.arange(40) % 4 == 0  # 10 positives, 30 negatives
    train, val = _split(y)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(40))
    assert (int(y[val].sum()), int((~y[val]).sum())) == (2, 8)  # round(0.25 × class size)
    assert torch.equal(train, torch.sort(train).values) and torch.equal(val, val.sort().values)
    again = _split(y)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    assert not torch.equal(val, _split(y, seed=1)[1])


def test_holdout_split_keeps_both_classes_on_both_sides_even_when_tiny():
    y = torch.tensor([True, True, False, False])
    for fraction in (0.01, 0.5, 0.99):
        train, val = _split(y, fraction=fraction)
        for side in (train, val):
            assert y[side].any() and (~y[side]).any()


def test_holdout_split_keeps_groups_whole():
    y = torch.tensor([True, False] * 20)
    groups = torch.arange(40) // 2  # 20 contrast pairs
    train, val = _split(y, groups)
    assert not set(groups[train].tolist()) & set(groups[val].tolist())
    assert len(set(groups[val].tolist())) == 5
    assert sorted(torch.cat([train, val]).tolist()) == list(range(40))


def test_holdout_split_falls_back_to_strata_when_groups_hold_one_class():
    # Every group holds one class only: a group split could leave a side without a class.
    y = torch.tensor([True] * 4 + [False] * 4)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    train, val = _split(y, groups)
    for side in (train, val):
        assert y[side].any() and (~y[side]).any()


def test_holdout_split_returns_cpu_index_tensors():
    y = torch.arange(20) % 2 == 0
    train, val = _split(y, torch.arange(20) // 2)
    for side in (train, val):
        assert side.device.type == "cpu" and side.dtype == torch.int64 and side.ndim == 1
